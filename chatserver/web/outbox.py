"""Writes to clients batched per IOLoop turn: one write per socket however many frames it got."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Connection(Protocol):
    """What the outbox needs of a socket (``web.socket.ChatSocket``)."""

    @property
    def user(self) -> str: ...

    def write_now(self, chunks: list[bytes]) -> None:
        """Write the frames at once."""


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
