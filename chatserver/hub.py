"""This process's sessions, by user, and delivery to their sockets.

The hub knows nothing of WebSockets: a session is anything with an ``id``, a ``user``, and
non-blocking ``send``/``close``. A frame written to many sessions is encoded once per codec
(``OutFrame``), not once per socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, KeysView
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


class _Gate:
    """Live frames of a session held back while its channels are replayed (``resume``)."""

    __slots__ = ("all", "held", "queue", "upto")

    def __init__(self) -> None:
        self.all = False  # hold every frame (until the session is greeted)
        self.held: set[str] = set()
        self.queue: list[OutFrame] = []
        self.upto: dict[str, int] = {}  # replayed up to this offset: older live copies are dropped

    def admit(self, frame: OutFrame) -> bool:
        if self.all:
            self.queue.append(frame)
            return False
        channel = frame.body.get("channel")
        if channel is None:
            return True
        if channel in self.held:
            self.queue.append(frame)
            return False
        return bool(frame.body.get("offset", 0) > self.upto.get(channel, 0))


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Session]] = {}
        self._count = 0
        self._gates: dict[str, _Gate] = {}

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
        self._gates.pop(session.id, None)
        if sessions:
            return False
        del self._by_user[session.user]
        return True

    def users(self) -> KeysView[str]:
        return self._by_user.keys()

    def sessions(self) -> Iterator[Session]:
        for sessions in list(self._by_user.values()):
            yield from list(sessions.values())

    def count(self, user: str) -> int:
        """How many sessions ``user`` has on this server."""
        return len(self._by_user.get(user, ()))

    def has_user(self, user: str) -> bool:
        return user in self._by_user

    def deliver(self, user: str, frame: OutFrame, skip: str = "") -> int:
        """Send ``frame`` to every local session of ``user`` except ``skip``; how many got it."""
        sessions = self._by_user.get(user)
        if not sessions:
            return 0
        sent = 0
        for session in list(sessions.values()):
            if session.id != skip and self._admit(session, frame):
                session.send(frame)
                sent += 1
        return sent

    def broadcast(self, frame: OutFrame, skip: str = "") -> int:
        """Send ``frame`` to every local session but ``skip``; how many got it."""
        sent = 0
        for session in self.sessions():
            if session.id != skip and self._admit(session, frame):
                session.send(frame)
                sent += 1
        return sent

    def _admit(self, session: Session, frame: OutFrame) -> bool:
        if not self._gates:
            return True
        gate = self._gates.get(session.id)
        return gate is None or gate.admit(frame)

    def hold(self, session: Session, channels: Iterable[str], everything: bool = False) -> None:
        """Queue live frames of ``channels`` (or all frames) for ``session`` until ``release``."""
        gate = self._gates.setdefault(session.id, _Gate())
        gate.held.update(channels)
        gate.all = gate.all or everything

    def release(self, session: Session, upto: dict[str, int]) -> None:
        """End a replay that sent ``session`` every message up to ``upto[channel]``: flush the
        held frames it did not already send, in arrival order, and drop older copies later."""
        gate = self._gates.get(session.id)
        if gate is None:
            return
        gate.upto.update(upto)
        gate.held.difference_update(upto)
        gate.all = False
        queued, gate.queue = gate.queue, []
        for frame in queued:
            if gate.admit(frame) and self.has_session(session):
                session.send(frame)

    def has_session(self, session: Session) -> bool:
        return session.id in self._by_user.get(session.user, {})

    def __len__(self) -> int:
        return self._count
