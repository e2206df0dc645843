"""The load worker's connections: WebSockets on plain non-blocking sockets (``ws://``), read by one
``Poller`` per worker and written directly, each arrival stamped by the kernel.

Why not asyncio's transports: every readable socket is a turn of asyncio's loop, and on a
machine shared with the cluster under test each turn costs more CPU than the frame it reads.
The ``Poller`` keeps every socket in an epoll set of its own and reads all that are ready when
the worker asks (``poll``): during a step, on the worker's pulses (``pacing``); between steps,
as soon as something arrives (``arm``). Reading on pulses changes no latency: each socket has
``SO_TIMESTAMPNS`` on, so a read returns the kernel's clock (``time.time_ns``'s) of when the
data reached the socket, and that is the arrival time a latency is taken at; before, it was
when the generator got round to the frame, its own queueing included. A read that takes
several frames the server wrote apart gets the stamp of the last; reads are at most a pulse
apart (10 ms), far less than the time between two messages to one connection in the
benchmark's rows. A read with no stamp (in the moment after the machine's first socket asks
the kernel for them, it turns them on) takes the clock at the read.

``wss://`` keeps asyncio's transports (``client.ClientConnection``, through ``StreamLink``),
with arrivals stamped on the clock as they are handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from .client import ClientConnection, ConnectionClosed, InvalidHandshake, read_upgrade, upgrade
from .wire import BINARY, CLOSE, PING, PONG, TEXT, ProtocolError, frame, split

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_STAMP = struct.Struct("@qq")  # struct timespec
_READ = memoryview(bytearray(1 << 18))  # every read of the worker lands here first
_INTO = [_READ]
_ADDRESSES: dict[tuple[str, int], Any] = {}  # (host, port) -> getaddrinfo's first answer

#: A frame handler: (link, payload (bytes; str from a text frame over wss), arrival ns, binary).
OnFrame = Callable[[Any, Any, int, bool], None]


class Link:
    """One WebSocket connection on a plain socket, after its handshake."""

    __slots__ = (
        "close_code",
        "closed",
        "fd",
        "fragments",
        "max_size",
        "on_closed",
        "on_frame",
        "out",
        "owner",
        "poller",
        "rest",
        "sock",
        "subprotocol",
    )

    def __init__(self, sock: socket.socket, subprotocol: str | None, rest: bytes, max_size: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.subprotocol = subprotocol
        self.max_size = max_size
        self.rest = bytearray(rest)  # bytes of a frame not complete yet
        self.out = bytearray()  # bytes the socket would not take yet
        self.fragments: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None
        self.on_frame: OnFrame | None = None
        self.on_closed: Callable[[Any], None] | None = None
        self.poller: Poller | None = None
        self.owner: Any = None  # the worker's user

    def send(self, data: bytes) -> None:
        """Write ``data`` (whole frames) now, or queue what the socket does not take."""
        if self.closed:
            raise ConnectionClosed(self.close_code)
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.lost(1006)
            raise ConnectionClosed(self.close_code) from None
        if sent < len(data):
            self.out += data[sent:]
            if self.poller is not None:
                self.poller.writing(self, True)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.lost(1006)
            return
        del self.out[:sent]
        if not self.out and self.poller is not None:
            self.poller.writing(self, False)

    def read(self) -> None:
        """One read of what arrived, handled frame by frame."""
        try:
            size, ancillary, _, _ = self.sock.recvmsg_into(_INTO, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.lost(1006)
            return
        if not size:
            self.lost(1006)  # the server closed the connection without a close frame
            return
        if ancillary:
            seconds, nanoseconds = _STAMP.unpack_from(ancillary[0][2])
            now = seconds * 1_000_000_000 + nanoseconds
        else:
            now = time.time_ns()
        if self.rest:
            self.rest += _READ[:size]
            data: bytes | memoryview = bytes(self.rest)
            self.rest.clear()
        else:
            # Most reads hold one whole message (a frame under 64 KiB): straight to the handler.
            b0, length, start = _READ[0], _READ[1], 2
            if length == 126 and size >= 4:
                length, start = (_READ[2] << 8) | _READ[3], 4
            elif length >= 126:
                length = size  # masked, 64-bit length, or incomplete: the general path
            if start + length == size and b0 in (0x81, 0x82) and self.on_frame is not None:
                self.on_frame(self, _READ[start:size].tobytes(), now, b0 == 0x82)
                return
            data = _READ[:size]
        try:
            self.handle(data, now)
        except ProtocolError as exc:
            self.lost(1002, str(exc))

    def handle(self, data: bytes | memoryview, now: int) -> None:
        frames, used = split(data, self.max_size)
        on_frame = self.on_frame
        for b0, start, end in frames:
            opcode = b0 & 0x0F
            if opcode in (TEXT, BINARY) and b0 & 0x80 and not self.fragments:
                if on_frame is not None:
                    on_frame(self, bytes(data[start:end]), now, opcode == BINARY)
            elif opcode <= BINARY:  # a fragmented message (servers here do not send them): copied
                if opcode:
                    self.fragments = [b"b" if opcode == BINARY else b"t"]
                self.fragments.append(bytes(data[start:end]))
                if b0 & 0x80:
                    kind, *parts = self.fragments
                    self.fragments = []
                    if on_frame is not None:
                        on_frame(self, b"".join(parts), now, kind == b"b")
            elif opcode == PING:
                with contextlib.suppress(ConnectionClosed):
                    self.send(frame(PONG, bytes(data[start:end])))
            elif opcode == CLOSE:
                payload = bytes(data[start:end])
                with contextlib.suppress(ConnectionClosed):
                    self.send(frame(CLOSE, payload[:2]))
                self.lost(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
                return
        if used < len(data):
            self.rest += data[used:]

    def lost(self, code: int, why: str = "") -> None:
        """The connection is over: closed by the server, broken, or a protocol error."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self.poller is not None:
            self.poller.discard(self)
        self.sock.close()
        if self.on_closed is not None:
            self.on_closed(self)

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(ConnectionClosed):
                self.send(frame(CLOSE, (1000).to_bytes(2, "big")))
            self.lost(1000)


class StreamLink:
    """A ``ClientConnection`` (asyncio's transports, for ``wss://``) with a ``Link``'s interface."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.subprotocol = ws.subprotocol
        self.owner: Any = None

    @property
    def closed(self) -> bool:
        return self.ws.close_code is not None

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def start(self, on_frame: OnFrame, on_closed: Callable[[Any], None]) -> None:
        def message(raw: str | bytes) -> None:
            on_frame(self, raw, time.time_ns(), isinstance(raw, bytes))

        self.ws.handle_with(message, lambda: on_closed(self))

    def send(self, data: bytes) -> None:
        self.ws.send_frame(data)

    async def close(self) -> None:
        await self.ws.close()


class Poller:
    """Every ``Link`` of a worker in one epoll set, read on demand (``poll``) or, while armed,
    whenever something arrives."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.links: dict[int, Link] = {}
        self.loop = asyncio.get_running_loop()
        self.armed = False

    def add(self, link: Link, on_frame: OnFrame, on_closed: Callable[[Any], None]) -> None:
        link.on_frame, link.on_closed, link.poller = on_frame, on_closed, self
        self.links[link.fd] = link
        self.epoll.register(link.fd, select.EPOLLIN)
        if link.rest:  # frames that came with the welcome
            rest, link.rest = bytes(link.rest), bytearray()
            link.handle(rest, time.time_ns())

    def discard(self, link: Link) -> None:
        if self.links.pop(link.fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(link.fd)

    def writing(self, link: Link, waiting: bool) -> None:
        """Also wake for ``link`` being writable while it has bytes waiting."""
        with contextlib.suppress(OSError, ValueError):
            self.epoll.modify(link.fd, select.EPOLLIN | (select.EPOLLOUT if waiting else 0))

    def poll(self) -> None:
        """Read every link that has something, now; write what waited for room."""
        events = self.epoll.poll(0, len(self.links) + 1)
        if not events:
            return
        links = self.links
        for fd, mask in events:
            link = links.get(fd)
            if link is None:
                continue
            if mask & select.EPOLLOUT:
                link.flush()
            if mask & ~select.EPOLLOUT:
                link.read()

    def arm(self) -> None:
        """Poll whenever something arrives (between steps: pings, presence, stray frames)."""
        if not self.armed:
            self.loop.add_reader(self.epoll.fileno(), self.poll)
            self.armed = True

    def disarm(self) -> None:
        """Poll only when asked (during a step, on the worker's pulses)."""
        if self.armed:
            self.loop.remove_reader(self.epoll.fileno())
            self.armed = False

    def close(self) -> None:
        self.disarm()
        self.epoll.close()


async def open_link(url: str, subprotocols: list[str] | None, max_size: int) -> tuple[Link, bytes, bool]:
    """Connect to ``url`` (``ws://``), upgrade, and read the first message (the server's
    welcome): the link, that message and whether it is binary. Raises what ``client.connect``
    raises; the caller bounds the time."""
    up = upgrade(url, subprotocols)
    loop = asyncio.get_running_loop()
    found = _ADDRESSES.get((up.host, up.port))
    if found is None:  # once per server, not once per connection (a thread per lookup)
        found = _ADDRESSES[up.host, up.port] = (await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM))[0]
    family, kind, proto, _, address = found
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, up.request)
        buffer = bytearray()
        while (done := read_upgrade(buffer, up.accept)) is None:
            buffer += await _more(loop, sock)
        used, subprotocol = done
        del buffer[:used]
        while True:
            frames, _ = split(buffer, max_size)
            for b0, start, end in frames:
                if b0 & 0x0F in (TEXT, BINARY) and b0 & 0x80:
                    rest = bytes(buffer[end:])
                    return Link(sock, subprotocol, rest, max_size), bytes(buffer[start:end]), b0 & 0x0F == BINARY
                if b0 & 0x0F == CLOSE:
                    raise ConnectionClosed(int.from_bytes(buffer[start : start + 2], "big"))
            buffer += await _more(loop, sock)
    except BaseException:
        sock.close()
        raise


async def _more(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = await loop.sock_recv(sock, 65536)
    if not data:
        raise InvalidHandshake("connection closed during the handshake")
    return data
