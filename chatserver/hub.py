"""This process's sessions, by user, and delivery to their sockets.

The hub knows nothing of WebSockets: a session is anything with an ``id``, a ``user``, and
non-blocking ``send``/``close``. A frame written to many sessions is encoded once per codec
(``OutFrame``), not once per socket.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView
from typing import Protocol

from chatserver.protocol import OutFrame


class Session(Protocol):
    @property
    def id(self) -> str:
        """Unique across the cluster (server id + a counter)."""
        ...

    @property
    def user(self) -> str: ...

    def send(self, frame: OutFrame) -> None:
        """Queue ``frame`` for the client; never blocks, never raises for a closed socket."""

    def close(self, code: int, reason: str) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Session]] = {}
        self._count = 0

    def add(self, session: Session) -> bool:
        """Add ``session``; True when it is its user's first session on this server."""
        sessions = self._by_user.setdefault(session.user, {})
        first = not sessions
        if session.id not in sessions:
            sessions[session.id] = session
            self._count += 1
        return first

    def remove(self, session: Session) -> bool:
        """Remove ``session``; True when its user has no session left on this server."""
        sessions = self._by_user.get(session.user)
        if sessions is None or sessions.pop(session.id, None) is None:
            return False
        self._count -= 1
        if sessions:
            return False
        del self._by_user[session.user]
        return True

    def users(self) -> KeysView[str]:
        return self._by_user.keys()

    def sessions(self) -> Iterator[Session]:
        for sessions in list(self._by_user.values()):
            yield from list(sessions.values())

    def has_user(self, user: str) -> bool:
        return user in self._by_user

    def deliver(self, user: str, frame: OutFrame, skip: str = "") -> int:
        """Send ``frame`` to every local session of ``user`` except ``skip``; how many got it."""
        sessions = self._by_user.get(user)
        if not sessions:
            return 0
        sent = 0
        for session in list(sessions.values()):
            if session.id != skip:
                session.send(frame)
                sent += 1
        return sent

    def broadcast(self, frame: OutFrame) -> int:
        """Send ``frame`` to every local session; how many got it."""
        sent = 0
        for session in self.sessions():
            session.send(frame)
            sent += 1
        return sent

    def __len__(self) -> int:
        return self._count
