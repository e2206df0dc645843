"""This process's sessions, by user, and delivery to their sockets.

The hub knows nothing of WebSockets: a session is anything with an ``id``, a ``user``, and
non-blocking ``send``/``close``. A frame written to many sessions is encoded once per codec
(``OutFrame``), not once per socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, KeysView, Mapping
from typing import Protocol

from chatserver.codec import OutFrame


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
    """What one session may still be sent of each channel it reads.

    ``top[channel]`` is the highest offset the session was sent (or told of, by ``welcome``):
    a live frame goes out only above it, so a session never gets a copy or an older message.
    ``floor[channel]``: nothing at or below it was sent, everything above it up to ``top`` was,
    so a ``resume`` from further back replays only what is below the floor and above the top.
    While a channel is held (until the session is greeted, while it is replayed), its frames
    queue, and go out by the same rule when it is released."""

    __slots__ = ("all", "floor", "held", "queue", "top")

    def __init__(self) -> None:
        self.all = False  # hold every frame (until the session is greeted)
        self.held: set[str] = set()
        self.queue: list[OutFrame] = []
        self.top: dict[str, int] = {}
        self.floor: dict[str, int] = {}

    def admit(self, frame: OutFrame) -> int:
        """``_SEND`` it now, ``_HELD`` (queued: it goes out on release) or ``_DROP`` it."""
        if self.all:
            self.queue.append(frame)
            return _HELD
        body = frame.body
        channel = body.get("channel")
        if channel is None:
            return _SEND
        if channel in self.held:
            self.queue.append(frame)
            return _HELD
        offset = body.get("offset", 0)
        if offset <= self.top.get(channel, 0):
            return _DROP
        self.top[channel] = offset
        return _SEND


_DROP, _SEND, _HELD = 0, 1, 2
_NO_GATE = _Gate()


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

    def reaches(self, user: str, skip: str = "") -> bool:
        """Whether ``user`` has a session here other than ``skip``."""
        sessions = self._by_user.get(user)
        return sessions is not None and (len(sessions) > 1 or skip not in sessions)

    def deliver(self, user: str, frame: OutFrame, skip: str = "") -> int:
        """Send ``frame`` to every local session of ``user`` except ``skip``; how many got it
        (or will, once their channel is released)."""
        sessions = self._by_user.get(user)
        if not sessions:
            return 0
        sent = 0
        for session in list(sessions.values()):
            if session.id != skip and (verdict := self._admit(session, frame)):
                if verdict == _SEND:
                    session.send(frame)
                sent += 1
        return sent

    def broadcast(self, frame: OutFrame, skip: str = "") -> int:
        """Send ``frame`` to every local session but ``skip``; how many got it (or will)."""
        sent = 0
        for session in self.sessions():
            if session.id != skip and (verdict := self._admit(session, frame)):
                if verdict == _SEND:
                    session.send(frame)
                sent += 1
        return sent

    def _admit(self, session: Session, frame: OutFrame) -> int:
        if not self._gates:
            return _SEND
        gate = self._gates.get(session.id)
        return _SEND if gate is None else gate.admit(frame)

    def hold(self, session: Session, channels: Iterable[str], everything: bool = False) -> None:
        """Queue live frames of ``channels`` (or all frames) for ``session`` until ``release``."""
        gate = self._gates.setdefault(session.id, _Gate())
        gate.held.update(channels)
        gate.all = gate.all or everything

    def place(self, session: Session, positions: Mapping[str, int]) -> None:
        """``session`` starts reading each channel at ``positions`` (``welcome``'s, a room it
        joined, a channel whose offsets started over): only later offsets go out to it."""
        gate = self._gates.setdefault(session.id, _Gate())
        for channel, offset in positions.items():
            gate.floor[channel] = gate.top[channel] = max(gate.top.get(channel, 0), offset)

    def rebase(self, session: Session, channel: str, offset: int) -> None:
        """``channel``'s offsets started over (a new epoch): ``session`` reads it from ``offset``
        of the new numbering, whatever it was sent of the old one."""
        gate = self._gates.setdefault(session.id, _Gate())
        gate.floor[channel] = gate.top[channel] = offset

    def replayed(self, session: Session, channel: str, after: int, upto: int) -> None:
        """A replay sent ``session`` what it had not been sent of ``(after, upto]``."""
        gate = self._gates.setdefault(session.id, _Gate())
        top = gate.top.get(channel, 0)
        gate.floor[channel] = min(gate.floor.get(channel, top), after)
        gate.top[channel] = max(top, upto)

    def sent(self, session: Session, channel: str) -> tuple[int, int]:
        """(floor, top) of ``channel`` for ``session``: it was sent every offset in ``(floor,
        top]`` (its own messages excepted: it has their acks) and nothing at or below ``floor``."""
        gate = self._gates.get(session.id)
        if gate is None:
            return 0, 0
        top = gate.top.get(channel, 0)
        return gate.floor.get(channel, top), top

    def release(self, session: Session, channels: Iterable[str] | None = None) -> None:
        """Stop holding ``channels`` (None: every one, and every frame): their queued frames go
        out in arrival order, minus those ``place`` says the session has."""
        gate = self._gates.get(session.id)
        if gate is None:
            return
        if channels is None:
            gate.held.clear()
        else:
            gate.held.difference_update(channels)
        gate.all = False
        queued, gate.queue = gate.queue, []
        for frame in queued:
            if gate.admit(frame) == _SEND and self.has_session(session):
                session.send(frame)

    def holding(self, session: Session) -> set[str]:
        """The channels of ``session`` held right now."""
        gate = self._gates.get(session.id)
        return set(gate.held) if gate is not None else set()

    def readers(self, channel: str) -> list[Session]:
        """The sessions here that read ``channel`` (were placed in it)."""
        return [s for s in self.sessions() if channel in self._gates.get(s.id, _NO_GATE).top]

    def has_session(self, session: Session) -> bool:
        return session.id in self._by_user.get(session.user, {})

    def __len__(self) -> int:
        return self._count
