"""RFC 6455 framing, as the load tool's clients need it: frames as a client sends them, and the
frames a server sent, found in a buffer. No I/O.

Frames a client sends are masked, as the RFC requires, with an all-zero key: the server still
runs its unmasking over every byte (so it pays what it pays for any client), and the client
skips an XOR it does not need. That is fine for a load generator on one's own cluster; a browser
or any client behind an untrusted proxy must use random keys.
"""

from __future__ import annotations

import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_MASK = b"\x00\x00\x00\x00"
_SHORT = [struct.pack("!BB", 0x80 | op, 0x80 | size) + ZERO_MASK for op in range(16) for size in range(126)]


class ProtocolError(Exception):
    """The server broke the framing rules (a masked frame, one beyond the size limit)."""


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked (all-zero key) client frame."""
    size = len(payload)
    if size < 126:
        return _SHORT[opcode * 126 + size] + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size) + ZERO_MASK + payload
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size) + ZERO_MASK + payload


def split(buf: bytes | bytearray | memoryview, max_size: int) -> tuple[list[tuple[int, int, int]], int]:
    """The complete server frames at the start of ``buf``: (first byte: FIN and opcode, payload
    start, payload end) each, and how many bytes they take; ``ProtocolError`` for a frame no
    server may send."""
    found = []
    pos, length = 0, len(buf)
    while length - pos >= 2:
        b1 = buf[pos + 1]
        size = b1 & 0x7F
        start = pos + 2
        if size == 126:
            if length - pos < 4:
                break
            size = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 4
        elif size == 127:
            if length - pos < 10:
                break
            size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            start = pos + 10
        if b1 & 0x80:
            raise ProtocolError("masked frame from the server")
        if size > max_size:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit")
        end = start + size
        if end > length:
            break
        found.append((buf[pos], start, end))
        pos = end
    return found, pos
