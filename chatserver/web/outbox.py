"""Writes to clients batched per IOLoop turn, and one keepalive timer for every socket."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Connection(Protocol):
    """What the outbox and the keepalive need of a socket (``web.socket.Connection``)."""

    @property
    def user(self) -> str: ...

    def write_now(self, chunks: list[bytes]) -> None:
        """Write the frames at once."""

    def keepalive(self) -> None:
        """Ping, or close when the previous ping is unanswered."""

    def abort(self) -> None:
        """Drop the connection without a close frame."""


class Outbox:
    """Frames for clients, written at the end of the current IOLoop turn: one write per socket
    however many frames it got in the turn (a consumed batch of messages or presence events),
    instead of one system call per frame. Order per socket is kept."""

    def __init__(self) -> None:
        self._pending: dict[Connection, list[bytes]] = {}

    def put(self, socket: Connection, data: bytes) -> None:
        chunks = self._pending.get(socket)
        if chunks is not None:
            chunks.append(data)
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending[socket] = [data]

    def flush(self, socket: Connection | None = None) -> None:
        """Write what is pending (for ``socket`` only, when given)."""
        if socket is not None:
            chunks = self._pending.pop(socket, None)
            if chunks:
                socket.write_now(chunks)
            return
        pending, self._pending = self._pending, {}
        for sock, chunks in pending.items():
            sock.write_now(chunks)


class Keepalive:
    """Pings every open socket each ``interval_s`` from one timer, and closes a socket that did
    not answer the previous ping: dead peers go, and proxies see traffic. (Tornado's own
    keepalive is a Task per connection, about 1.5 KiB of memory each.)"""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sockets: set[Connection] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, socket: Connection) -> None:
        self._sockets.add(socket)
        if self._timer is None and self.interval_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def discard(self, socket: Connection) -> None:
        self._sockets.discard(socket)

    def _sweep(self) -> None:
        self._timer = None
        failed: set[str] = set()
        for socket in list(self._sockets):
            try:
                socket.keepalive()
            except Exception as exc:  # one bad socket must not stop the pings of all the others
                kind = type(exc).__name__
                if kind not in failed:  # once per kind and sweep: thousands of sockets may fail alike
                    failed.add(kind)
                    log.exception("keepalive of %s failed; dropping it", socket.user)
                self._sockets.discard(socket)
                socket.abort()
        if self._sockets:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)
