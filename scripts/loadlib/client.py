"""A lean WebSocket client for the load generator (RFC 6455, client side, no extensions).

Why not the ``websockets`` library: the generator shares the machine with the cluster it
measures, and at thousands of frames a second that library's per-frame work in Python (stream
readers, frame objects, a task per connection's keepalive) cost more CPU than the server's own
handling of the frame. This client is an ``asyncio.BufferedProtocol``: bytes read into one
shared buffer, frames parsed in place, complete messages queued.

Frames it sends are masked with an all-zero key (``wire``). The load worker itself uses
``link``, a leaner path on plain sockets, for ``ws://``; this client serves ``wss://``, the
checks before a run, ``scripts/chaoslib`` and the tests.

The interface is the small part of ``websockets`` that ``loadtest.py`` uses: ``connect()``,
``recv()``, ``send()``, ``close()``, ``close_code``, ``subprotocol``, ``async for``, and the
exceptions ``InvalidHandshake``, ``InvalidStatus`` (with ``.response.status_code`` and
``.response.body``) and ``ConnectionClosed``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from .wire import BINARY, CLOSE, PING, PONG, TEXT, ProtocolError, frame, split

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Every connection reads into this one buffer (recv_into), then keeps only what it has not parsed:
# asyncio's plain Protocol allocates 256 KiB per read, which here cost three system calls (mmap,
# mremap, munmap) and a page fault each, more than the read itself.
_READ_VIEW = memoryview(bytearray(1 << 18))


class InvalidHandshake(Exception):
    """The server did not switch to WebSocket as it should."""


@dataclass
class Response:
    status_code: int
    body: bytes


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {response.status_code}")
        self.response = response


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code} {reason})".strip())
        self.code = code
        self.reason = reason


class Upgrade(NamedTuple):
    """The opening handshake of one connection: the request, and what the answer must hold."""

    request: bytes
    accept: bytes  # Sec-WebSocket-Accept
    host: str
    port: int
    secure: bool


def upgrade(url: str, subprotocols: list[str] | None = None, user_agent: str = "chat-loadtest") -> Upgrade:
    """The HTTP request that opens ``url`` (``ws://`` or ``wss://``) as a WebSocket."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        f"User-Agent: {user_agent}",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # RFC 6455 names SHA-1
    port = parts.port or (443 if secure else 80)
    return Upgrade(("\r\n".join(lines) + "\r\n\r\n").encode(), accept, parts.hostname or "127.0.0.1", port, secure)


def read_upgrade(buffer: bytearray, accept: bytes) -> tuple[int, str | None] | None:
    """The server's answer at the start of ``buffer``: None while incomplete, else how many bytes
    it took and the subprotocol chosen; ``InvalidStatus`` or ``InvalidHandshake`` if refused."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise InvalidHandshake(f"bad status line {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        length = int(headers.get("content-length", "0") or 0)
        if len(buffer) < end + 4 + length:
            return None  # the body is still coming
        raise InvalidStatus(Response(status, bytes(buffer[end + 4 : end + 4 + length])))
    if headers.get("sec-websocket-accept", "").encode() != accept:
        raise InvalidHandshake("wrong Sec-WebSocket-Accept")
    return end + 4, headers.get("sec-websocket-protocol") or None


class ClientConnection(asyncio.BufferedProtocol):
    def __init__(self, request: bytes, accept: bytes, max_size: int) -> None:
        self._request = request
        self._accept = accept
        self._max_size = max_size
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False
        self._closed = False
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._messages: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_message: Callable[[str | bytes], None] | None = None
        self._on_closed: Callable[[], None] | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ_VIEW[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._buffer += data
        if not self._open:
            self._read_handshake()
        if self._open:
            self._read_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self.close_code is None:
            self.close_code = 1006  # no close frame came
        self._fail_handshake(InvalidHandshake(f"connection lost during the handshake: {exc}"))
        self._wake()

    # ---------------------------------------------------------------- parsing

    def _read_handshake(self) -> None:
        try:
            done = read_upgrade(self._buffer, self._accept)
        except InvalidHandshake as exc:
            return self._fail_handshake(exc)
        if done is None:
            return
        used, self.subprotocol = done
        del self._buffer[:used]
        self._open = True
        if not self.handshake.done():  # done: the opener gave up (timed out) and closes the socket
            self.handshake.set_result(None)

    def _fail_handshake(self, exc: InvalidHandshake) -> None:
        """The handshake failed: the opener hears why, and the socket closes (if it is not)."""
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            # An opener awaiting it still gets the exception; one cancelled before it awaited
            # (its connect timed out) leaves it to nobody, and asyncio would log it as lost.
            self.handshake.exception()
        if self._transport is not None:
            self._transport.close()

    def _read_frames(self) -> None:
        buf = self._buffer
        try:
            frames, used = split(buf, self._max_size)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        for b0, start, end in frames:
            self._on_frame(b0 & 0x80 != 0, b0 & 0x0F, bytes(buf[start:end]))
        if used:
            del buf[:used]

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY) and fin and not self._fragments:
            self._push(payload.decode() if opcode == TEXT else payload)
        elif opcode in (0, TEXT, BINARY):  # fragmented message
            if opcode:
                self._fragment_opcode = opcode
            self._fragments.append(payload)
            if fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._push(data.decode() if self._fragment_opcode == TEXT else data)
        elif opcode == PING:  # pong with the same payload
            self._write(frame(PONG, payload))
        elif opcode == CLOSE:  # answer, and the server closes the TCP connection
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode(errors="replace")
            self._write(frame(CLOSE, payload[:2]))
            self._closed = True
            self._wake()

    def _protocol_error(self, why: str) -> None:
        self.close_code, self.close_reason = 1002, why
        if self._transport is not None:
            self._transport.close()

    def _push(self, message: str | bytes) -> None:
        if self._on_message is not None:
            self._on_message(message)
            return
        self._messages.append(message)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._closed and self._on_closed is not None:
            self._on_closed()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # ---------------------------------------------------------------- the interface

    def handle_with(self, on_message: Callable[[str | bytes], None], on_closed: Callable[[], None]) -> None:
        """From now on, call ``on_message`` with each message as it is parsed (those already
        queued first) instead of queueing it for ``recv``, and ``on_closed`` once closed."""
        self._on_message, self._on_closed = on_message, on_closed
        while self._messages:
            on_message(self._messages.popleft())
        if self._closed:
            on_closed()

    async def recv(self) -> str | bytes:
        while not self._messages:
            if self._closed:
                raise ConnectionClosed(self.close_code, self.close_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft()

    def __aiter__(self) -> ClientConnection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: str | bytes) -> None:
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(self.close_code, self.close_reason)
        if isinstance(message, str):
            self._transport.write(frame(TEXT, message.encode()))
        else:
            self._transport.write(frame(BINARY, message))

    def send_frame(self, data: bytes) -> None:
        """Write frames built already (``wire.frame``)."""
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._transport.write(data)

    async def close(self, code: int = 1000) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if not self._closed:
            self._write(frame(CLOSE, code.to_bytes(2, "big")))
        self._closed = True
        self._transport.close()
        self._wake()


async def connect(
    url: str,
    subprotocols: list[str] | None = None,
    open_timeout: float = 10.0,
    max_size: int = 1 << 20,
    user_agent_header: str = "chat-loadtest",
) -> ClientConnection:
    """Open ``url`` (``ws://`` or ``wss://``); raises InvalidStatus, InvalidHandshake, OSError
    or TimeoutError."""
    up = upgrade(url, subprotocols, user_agent_header)
    loop = asyncio.get_running_loop()

    async def opening() -> ClientConnection:
        transport, protocol = await loop.create_connection(
            lambda: ClientConnection(up.request, up.accept, max_size),
            up.host,
            up.port,
            ssl=ssl.create_default_context() if up.secure else None,
        )
        try:
            await protocol.handshake
        except BaseException:  # refused, or timed out: leave no socket behind
            transport.close()
            raise
        return protocol

    return await asyncio.wait_for(opening(), open_timeout)
