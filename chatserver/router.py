"""What happens to a frame, and who does it: the table from frame type to the one job that
handles it, in front of which every frame passes the connection's rate limit and decoding.

One module per job, each handed the same ``Parts`` (this server's hub, stores, bus, metrics):

=============  ==================================================  ============================
job            frames                                              module
=============  ==================================================  ============================
messages       ``public``, ``private``, ``room``                   ``chatserver.messages``
recovery       ``resume``, ``history`` (and ``welcome``)           ``chatserver.recovery``
presence       ``join``, ``leave``, ``typing``, ``who``,           ``chatserver.presence``
               ``receipt``
sessions       ``refresh``; connect, disconnect, heartbeat,        ``chatserver.sessions``
               withdraw
delivery       messages and events from this server's topic        ``chatserver.delivery``
=============  ==================================================  ============================

No sockets and no I/O libraries here or there: the jobs talk to a ``Hub`` of sessions, a
``Registry``, a ``History``, ``Rooms`` and a ``Bus``, all injected, so the same code runs over
Redis and Kafka in production and over in-memory twins in tests. Never raises from ``handle``:
every refusal becomes an ``error`` frame with the frame's ``cid``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatserver import frames
from chatserver import protocol as p
from chatserver.auth import TokenAuthority
from chatserver.bus import Bus
from chatserver.codec import Codec
from chatserver.delivery import Delivery
from chatserver.history import History, HistoryError
from chatserver.hub import Hub
from chatserver.limits import LimitError, Limits, Verdict
from chatserver.messages import Messages
from chatserver.metrics import Metrics
from chatserver.parts import CLOSE_POLICY, ClientSession, Parts, new_id
from chatserver.presence import Presence
from chatserver.recovery import Recovery
from chatserver.registry import Registry, RegistryError
from chatserver.rooms import MemoryRooms, Rooms, RoomsError
from chatserver.sessions import Sessions

log = logging.getLogger(__name__)

Handler = Callable[[ClientSession, Any], Awaitable[None]]

#: Frames that send a message (they end the wait for a resume after ``welcome``).
_SENDS = (p.PublicFrame, p.PrivateFrame, p.RoomFrame, p.EditFrame, p.DeleteFrame, p.ReactFrame)

#: What a store failure tells the client, by the store's error type.
_UNAVAILABLE: dict[type[Exception], str] = {
    RegistryError: "message not sent: the user registry is unavailable; retry",
    HistoryError: "the message store is unavailable; retry",
    RoomsError: "the room store is unavailable; retry",
    LimitError: "message not sent: the rate limiter is unavailable; retry",
}


def _cid_of(raw: str | bytes, codec: Codec) -> str | None:
    """The frame's cid if it has a valid one, for refusals made before full decoding."""
    try:
        obj = codec.loads(raw)
    except p.ProtocolError:
        return None
    cid = obj.get("cid") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= p.MAX_CID_CHARS else None


class Router:
    def __init__(
        self,
        server_id: str,
        hub: Hub,
        registry: Registry,
        history: History,
        bus: Bus,
        metrics: Metrics,
        limits: Limits | None = None,
        rooms: Rooms | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_id,
        presence_max_online: int = 0,
        store_and_route_together: bool = False,
        resume_wait_s: float = 0.0,
        gap_wait_s: float = 0.25,
        auth: TokenAuthority | None = None,
    ) -> None:
        """``auth``: checks the tokens of ``refresh`` frames (``chatserver.sessions``)."""
        self.server_id = server_id
        self.hub = hub
        self.limits = limits or Limits()
        parts = self.parts = Parts(server_id, hub, registry, history, bus, rooms or MemoryRooms(), metrics, clock)
        self.delivery = Delivery(parts, gap_wait_s)
        self.recovery = Recovery(parts, self.delivery, resume_wait_s)
        self.presence = Presence(parts, self.delivery, presence_max_online)
        self.sessions = Sessions(parts, self.delivery, self.recovery, self.presence, auth)
        self.messages = Messages(
            parts, self.delivery, self.limits.backlog, self.limits.user, new_id, store_and_route_together
        )
        self._table: dict[type, tuple[Handler, Any]] = {}
        for kind, label, handler in (
            (p.PublicFrame, "public", self.messages.public),
            (p.PrivateFrame, "private", self.messages.private),
            (p.RoomFrame, "room", self.messages.room),
            (p.EditFrame, "edit", self.messages.change),
            (p.DeleteFrame, "delete", self.messages.change),
            (p.ReactFrame, "react", self.messages.change),
            (p.ResumeFrame, "resume", self.recovery.resume),
            (p.HistoryFrame, "history", self.recovery.history),
            (p.JoinFrame, "join", self.presence.membership),
            (p.LeaveFrame, "leave", self.presence.membership),
            (p.TypingFrame, "typing", self.presence.typing),
            (p.ReceiptFrame, "receipt", self.presence.receipt),
            (p.WhoFrame, "who", self.presence.who),
            (p.RoomsFrame, "rooms", self.presence.directory),
            (p.PingFrame, "ping", self._ping),
            (p.RefreshFrame, "refresh", self.sessions.refresh),
        ):
            self._table[kind] = (handler, metrics.frames_in.labels(label))
        self._in_flight = 0  # frames being handled right now
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ sessions

    async def connect(self, session: ClientSession) -> None:
        """Register a new authenticated session and greet it (``chatserver.sessions``)."""
        self.limits.flows.open(session.id)
        await self.sessions.connect(session)

    def disconnect(self, session: ClientSession) -> None:
        self.limits.flows.close(session.id)
        self.sessions.disconnect(session)

    def on_bus_message(self, payload: bytes) -> None:
        """One envelope from this server's topic (``chatserver.delivery``)."""
        self.delivery.on_bus_message(payload)

    async def heartbeat(self, live: bool) -> None:
        await self.sessions.heartbeat(live)

    async def sweep_presence(self) -> None:
        await self.presence.sweep()

    async def withdraw(self) -> None:
        await self.sessions.withdraw()

    # ------------------------------------------------------------------ client frames

    async def handle(self, session: ClientSession, raw: str | bytes) -> None:
        """Act on one client frame. Never raises: every refusal becomes an ``error`` frame."""
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._handle(session, raw)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def quiesce(self) -> None:
        """Return once no frame is being handled: a graceful stop must not close the bus under a
        message that is stored but not yet published. Bound it with a timeout."""
        await self._idle.wait()

    async def _handle(self, session: ClientSession, raw: str | bytes) -> None:
        verdict = self.limits.flows.admit(session.id)
        if verdict is not Verdict.ACCEPT:
            self.parts.refuse(session, p.RATE_LIMITED, "too many frames: slow down", _cid_of(raw, session.codec))
            if verdict is Verdict.CLOSE:
                session.close(CLOSE_POLICY, "policy violation: kept flooding after rate_limited errors")
            return
        try:
            frame = p.decode_frame(raw, session.codec)
        except p.ProtocolError as exc:
            self.parts.refuse(session, exc.code, exc.message, exc.cid)
            return
        handler, counter = self._table[type(frame)]
        counter.inc()
        if isinstance(frame, _SENDS):
            self.recovery.stop_waiting(session)  # a client that sends first is not resuming
        try:
            await handler(session, frame)
        except (RegistryError, HistoryError, RoomsError, LimitError) as exc:
            if isinstance(exc, RegistryError):
                self.parts.metrics.registry_failures.inc()
            log.warning("%s for %s: %s", type(exc).__name__, session.user, exc, extra={"user": session.user})
            why = next(text for kind, text in _UNAVAILABLE.items() if isinstance(exc, kind))
            self.parts.refuse(session, p.INTERNAL, why, frame.cid)

    async def _ping(self, session: ClientSession, frame: p.PingFrame) -> None:
        session.send(frames.pong(frame.cid))
