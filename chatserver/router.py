"""What happens to a frame: validate, authorize, store, route, publish, ack; and to a bus
message: deliver.

No sockets and no I/O libraries here: the router talks to a ``Hub`` of sessions, a
``Registry``, a ``History`` and a ``Bus``, all injected, so the same code runs over Redis
and Kafka in production and over in-memory fakes in tests.

Sending: the message is first stored (offsets assigned in its channels), then routed:
- public: one envelope to every live server's topic (this one included); each server
  writes it to all its sessions, the sender's too.
- private: one envelope to the topics of the servers holding the recipient or the sender
  (always this one); each delivers it to the recipient's sessions and the sender's other ones.
Storing before looking up the route is what makes recovery exact: a session registers before
it reads its positions, so every message stored after that read is also routed to it.
Delivering: bus messages pass a ``Sequencer`` (each channel in offset order, holes filled from
history, copies dropped), then the hub (each session only above what it has). After ``welcome``
a session's channels are held until it sends ``resume`` (or a message, or ``resume_wait_s``
passes), so a replay and the live messages form one increasing sequence.
The sender's ``ack`` goes out only when the store and every topic have the message; while
the oldest message still waiting for that has waited too long, new ones are refused at once
(``limits.Backlog``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from chatserver import protocol as p
from chatserver.bus import Bus
from chatserver.history import History, HistoryError
from chatserver.hub import Hub, Session
from chatserver.limits import Backlog, LimitError, TokenBucket, UserLimiter
from chatserver.metrics import Metrics
from chatserver.registry import SWEEP_PAGE, Registry, RegistryError
from chatserver.rooms import MemoryRooms, Rooms, RoomsError
from chatserver.sequencer import Deliver, Sequencer

log = logging.getLogger(__name__)

#: WebSocket close code: the server is going away (clients reconnect elsewhere).
CLOSE_GOING_AWAY = 1001
#: WebSocket close code: a dependency is down right now (clients reconnect after a pause).
CLOSE_TRY_AGAIN = 1013


class ClientSession(Session, Protocol):
    """A hub session that also knows how its client encodes frames, and what it asked for."""

    @property
    def codec(self) -> p.Codec: ...

    @property
    def wants_receipts(self) -> bool:
        """The client asked for "delivered" receipts of its private messages (``receipts=1``)."""
        ...


def _new_id() -> str:
    return uuid.uuid4().hex


def _ignore_failure(future: asyncio.Future[None]) -> None:
    """Transient events are best effort: a lost typing hint or presence is not an error."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("a transient event was not published: %s", future.exception())


def _cid_of(raw: str | bytes, codec: p.Codec) -> str | None:
    """The frame's cid if it has a valid one, for refusals made before full decoding."""
    try:
        obj = codec.loads(raw)
    except p.ProtocolError:
        return None
    cid = obj.get("cid") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= p.MAX_CID_CHARS else None


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one connection and one user may send (see ``chatserver.limits``)."""

    conn_rate_per_s: float = 0.0
    conn_burst: int = 100
    flood_strikes: int = 200
    user: UserLimiter | None = None
    backlog: Backlog | None = None  # refuses new messages while old ones wait (None: never)


class _Flow:
    """One connection's rate: its bucket, and its refusals (less one per accepted frame)."""

    __slots__ = ("bucket", "strikes")

    def __init__(self, limits: Limits) -> None:
        self.bucket = TokenBucket(limits.conn_rate_per_s, limits.conn_burst)
        self.strikes = 0


#: WebSocket close code: the client broke a policy (it kept flooding after rate_limited errors).
CLOSE_POLICY = 1008
#: WebSocket close code: a channel the session reads started its offsets over (its storage lost
#: data); the client reconnects and resumes, and is told which channels have a gap.
CLOSE_RESET = 4002

#: Frames that end the hold after ``welcome``: the client resumes, or it is plainly not going to.
_ENDS_HOLD = (p.ResumeFrame, p.PublicFrame, p.PrivateFrame, p.RoomFrame)


class Router:
    REPLAY_PAGE = 500  # messages per history read while resuming
    HEARTBEAT_CHUNK = 500  # users per registry heartbeat call

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
        new_id: Callable[[], str] = _new_id,
        presence_max_online: int = 0,
        store_and_route_together: bool = False,
        resume_wait_s: float = 0.0,
        gap_wait_s: float = 0.25,
    ) -> None:
        self.server_id = server_id
        self.hub = hub
        self._registry = registry
        self._history = history
        self._bus = bus
        self._limits = limits or Limits()
        self._backlog = self._limits.backlog if self._limits.backlog is not None else Backlog(0)
        self._rooms: Rooms = rooms or MemoryRooms()
        self._typing_sent: dict[str, dict[str, float]] = {}  # session id -> target -> when
        self._buckets: dict[str, _Flow] = {}
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._background: set[asyncio.Task[None]] = set()
        self._unregistering: dict[str, asyncio.Task[None]] = {}
        self._withdrawn = False  # after a graceful stop began, sessions leave no registry work
        self._presence_max_online = presence_max_online
        self._together = store_and_route_together
        self._online = 0  # users online cluster-wide, as of the last heartbeat
        self._in_flight = 0  # frames being handled right now
        self._idle = asyncio.Event()
        self._idle.set()
        self._resume_wait_s = resume_wait_s
        self._awaiting: dict[str, asyncio.TimerHandle] = {}  # greeted sessions that may resume
        self._sequencer = Sequencer(self._fill, self._channel_reset, self._renew_epoch, gap_wait_s)

    # ------------------------------------------------------------------ sessions

    async def connect(self, session: ClientSession) -> None:
        """Register a new authenticated session, then greet it with its channels' positions.

        Registering first means that every message stored after the positions were read is
        also routed here (see the module docstring). Until ``welcome`` is out, live frames are
        held; then those of its channels stay held until it resumes (see ``_end_hold``), and
        only those newer than the positions it was given are sent."""
        user = session.user
        try:
            rooms = await self._rooms.rooms_of(user)
        except RoomsError as exc:
            log.warning("rooms of %s unknown: %s", user, exc)
            rooms = []
        channels = [p.PUBLIC, p.user_channel(user), *(p.room_channel(r) for r in rooms)]
        self._buckets[session.id] = _Flow(self._limits)
        first = self.hub.add(session)
        self.hub.hold(session, channels, everything=True)  # welcome goes first
        for channel in channels:
            self._sequencer.expect(channel)
        self._metrics.sessions_per_user.observe(self.hub.count(user))
        if first:
            pending = self._unregistering.get(user)
            if pending is not None:  # the user's last session here just closed: let it finish
                await asyncio.shield(pending)
            try:
                was_online = bool((await self._registry.servers_of([user]))[user])
                await self._registry.add(user, self.server_id)
                if not was_online:
                    await self.announce(user, "online", skip=session.id)
            except RegistryError as exc:  # the next heartbeat records it
                self._metrics.registry_failures.inc()
                log.warning("could not register %s: %s", user, exc)
        self._count_sessions()
        try:
            heads = await self._history.heads(channels)
        except HistoryError as exc:  # positions it could not be told: come back later
            log.warning("positions of %s unknown: %s", user, exc)
            for channel in channels:
                self._sequencer.abandon(channel)
            session.close(CLOSE_TRY_AGAIN, "the message store is unavailable; reconnect shortly")
            return
        if not self.hub.has_session(session):
            return  # closed while it was being greeted
        positions = {c: h.offset for c, h in heads.items()}
        for channel, head in heads.items():
            if self._sequencer.start(channel, head.epoch, head.offset):
                self._channel_reset(channel)
        self.hub.place(session, positions)
        session.send(p.welcome(user, self.server_id, positions, rooms, {c: h.epoch for c, h in heads.items()}))
        self.hub.release(session, [])  # events go out; the channels wait for resume
        if self._resume_wait_s > 0:
            loop = asyncio.get_running_loop()
            self._awaiting[session.id] = loop.call_later(self._resume_wait_s, self._end_hold, session)
        else:
            self.hub.release(session)

    def _end_hold(self, session: ClientSession) -> None:
        """The session did not resume in time (or sent a message first): its channels go live
        from the positions ``welcome`` gave it."""
        timer = self._awaiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()
            self.hub.release(session)

    def disconnect(self, session: ClientSession) -> None:
        """Forget a closed session; the registry entry goes with the user's last one."""
        self._buckets.pop(session.id, None)
        self._typing_sent.pop(session.id, None)
        timer = self._awaiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        if self.hub.remove(session):
            self._sequencer.forget(p.user_channel(session.user))
            if not self._withdrawn:
                task = asyncio.create_task(self._unregister(session.user))
                self._unregistering[session.user] = task
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self._count_sessions()

    async def _unregister(self, user: str) -> None:
        try:
            if not self.hub.has_user(user):  # else: came back meanwhile
                await self._registry.remove(user, self.server_id)
                if await self._registry.went_offline(user):
                    await self.announce(user, "offline")
        except RegistryError as exc:  # the entry expires by itself
            self._metrics.registry_failures.inc()
            log.warning("could not unregister %s: %s", user, exc)
        finally:
            if self._unregistering.get(user) is asyncio.current_task():
                del self._unregistering[user]

    def _count_sessions(self) -> None:
        self._metrics.connections.set(len(self.hub))
        self._metrics.users.set(len(self.hub.users()))

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
        flow = self._buckets.get(session.id)
        if flow is not None and not flow.bucket.take():
            self._refuse(session, p.RATE_LIMITED, "too many frames: slow down", _cid_of(raw, session.codec))
            flow.strikes += 1
            if flow.strikes >= self._limits.flood_strikes:
                session.close(CLOSE_POLICY, "policy violation: kept flooding after rate_limited errors")
            return
        if flow is not None and flow.strikes:
            flow.strikes -= 1  # an accepted frame forgives one refusal: a steady flood still adds up
        try:
            frame = p.decode_frame(raw, session.codec)
        except p.ProtocolError as exc:
            self._refuse(session, exc.code, exc.message, exc.cid)
            return
        greeted = False  # this resume ends the hold after welcome
        if self._awaiting and isinstance(frame, _ENDS_HOLD) and session.id in self._awaiting:
            self._awaiting.pop(session.id).cancel()
            greeted = isinstance(frame, p.ResumeFrame)
            if not greeted:
                self.hub.release(session)
        try:
            if isinstance(frame, p.PublicFrame):
                self._metrics.frames_in.labels("public").inc()
                await self._send(session, frame, self._send_public)
            elif isinstance(frame, p.PrivateFrame):
                self._metrics.frames_in.labels("private").inc()
                await self._send(session, frame, self._send_private)
            elif isinstance(frame, p.HistoryFrame):
                self._metrics.frames_in.labels("history").inc()
                await self._history_page(session, frame)
            elif isinstance(frame, p.ResumeFrame):
                self._metrics.frames_in.labels("resume").inc()
                await self._resume(session, frame, greeted)
            elif isinstance(frame, p.RoomFrame):
                self._metrics.frames_in.labels("room").inc()
                await self._send(session, frame, self._send_room)
            elif isinstance(frame, p.JoinFrame | p.LeaveFrame):
                self._metrics.frames_in.labels("join" if isinstance(frame, p.JoinFrame) else "leave").inc()
                await self._membership(session, frame)
            elif isinstance(frame, p.TypingFrame):
                self._metrics.frames_in.labels("typing").inc()
                await self._typing(session, frame)
            elif isinstance(frame, p.ReceiptFrame):
                self._metrics.frames_in.labels("receipt").inc()
                if frame.to != session.user:
                    await self._emit(p.receipt(frame.id, session.user, frame.status), [frame.to])
            elif isinstance(frame, p.WhoFrame):
                self._metrics.frames_in.labels("who").inc()
                await self._who(session, frame)
            else:
                self._metrics.frames_in.labels("ping").inc()
                session.send(p.pong(frame.cid))
        except RegistryError as exc:
            self._metrics.registry_failures.inc()
            log.warning(
                "registry unavailable while routing for %s: %s", session.user, exc, extra={"user": session.user}
            )
            self._refuse(session, p.INTERNAL, "message not sent: the user registry is unavailable; retry", frame.cid)
        except HistoryError as exc:
            log.warning("history store unavailable for %s: %s", session.user, exc, extra={"user": session.user})
            self._refuse(session, p.INTERNAL, "the message store is unavailable; retry", frame.cid)
        except RoomsError as exc:
            log.warning("room store unavailable for %s: %s", session.user, exc)
            self._refuse(session, p.INTERNAL, "the room store is unavailable; retry", frame.cid)
        except LimitError as exc:
            log.warning("rate limit store unavailable for %s: %s", session.user, exc)
            self._refuse(session, p.INTERNAL, "message not sent: the rate limiter is unavailable; retry", frame.cid)

    async def _send(
        self,
        session: ClientSession,
        frame: p.PublicFrame | p.PrivateFrame | p.RoomFrame,
        send: Callable[[Any, Any], Awaitable[asyncio.Future[Any] | None]],
    ) -> None:
        """A message frame, unless this server is overloaded: then it is refused at once (see
        ``limits.Backlog``). Otherwise it is in the backlog until acked or refused."""
        if self._backlog.overloaded():
            self._metrics.messages_shed.inc()
            why = "the server is overloaded: message not sent; retry shortly"
            self._refuse(session, p.RATE_LIMITED, why, frame.cid)
            return
        ticket = self._backlog.open()
        publishing = None
        try:
            publishing = await send(session, frame)
        finally:
            if publishing is None:
                ticket.answer()  # refused, or failed before publishing
            else:
                publishing.add_done_callback(ticket.answer)

    async def _user_may_send(self, session: ClientSession, cid: str | None) -> bool:
        limiter = self._limits.user
        if limiter is None or await limiter.allow(session.user):
            return True
        self._refuse(session, p.RATE_LIMITED, "you are sending too fast across your sessions; retry shortly", cid)
        return False

    async def _send_public(self, session: ClientSession, frame: p.PublicFrame) -> asyncio.Future[Any] | None:
        if not await self._user_may_send(session, frame.cid):
            return None
        envelope = p.Envelope(
            kind="public",
            id=self._new_id(),
            sender=session.user,
            text=frame.text,
            ts=self._now_ms(),
            origin=session.id,
        )
        envelope = await self._store(envelope, frame.cid)
        servers = await self._registry.live_servers()
        servers.add(self.server_id)
        return self._publish(session, frame.cid, envelope, servers)

    async def _send_private(self, session: ClientSession, frame: p.PrivateFrame) -> asyncio.Future[Any] | None:
        if not await self._user_may_send(session, frame.cid):
            return None
        sender, recipient = session.user, frame.to
        envelope = p.Envelope(
            kind="private",
            id=self._new_id(),
            sender=sender,
            text=frame.text,
            ts=self._now_ms(),
            to=recipient,
            recipients=(recipient,) if recipient == sender else (recipient, sender),
            origin=session.id,
            receipt=session.wants_receipts,
        )
        envelope, where = await self._store_and_route(envelope, frame.cid, [recipient, sender])
        # This server's own topic only when a session here needs the copy: the recipient's, or
        # another one of the sender's. Checked after the store, so a session that opens later
        # reads positions that already include this message (see ``connect``).
        wanted_here = self.hub.has_user(recipient) or self.hub.count(sender) > 1
        servers = (where[recipient] | where[sender]) - {self.server_id}
        if wanted_here:
            servers.add(self.server_id)
        else:  # the sender's channel moves on here without a copy coming back
            self._sequence(envelope)
        return self._publish(session, frame.cid, envelope, servers)

    async def _store_and_route(
        self, envelope: p.Envelope, cid: str | None, users: list[str]
    ) -> tuple[p.Envelope, dict[str, set[str]]]:
        """Store ``envelope``, then look up the servers of ``users``: the look-up must see the
        registry as it is after the store (see the module docstring). With
        ``store_and_route_together`` (history and registry queue into one ``RedisBatch``) both
        are queued in this loop turn, store first, so they travel in one pipeline that Redis
        runs in order: one round trip instead of two."""
        if not self._together:
            stored = await self._store(envelope, cid)
            return stored, await self._registry.servers_of(users)
        stored_or_error, where_or_error = await asyncio.gather(
            self._store(envelope, cid), self._registry.servers_of(users), return_exceptions=True
        )
        if isinstance(stored_or_error, BaseException):
            raise stored_or_error
        if isinstance(where_or_error, BaseException):
            raise where_or_error
        return stored_or_error, where_or_error

    async def _store(self, envelope: p.Envelope, cid: str | None) -> p.Envelope:
        """Store ``envelope``; a retry (same cid and content, to the same user or room) gets its
        first attempt's id and offsets."""
        fingerprint = None
        if cid is not None:
            what = f"{envelope.kind}\0{envelope.to}\0{envelope.room}\0{cid}\0{envelope.text}"
            fingerprint = hashlib.sha256(what.encode()).hexdigest()[:24]
        stored = await self._history.store(envelope, fingerprint)
        if stored.duplicate:
            self._metrics.retries_recognised.inc()
        return dataclasses.replace(envelope, id=stored.id, ts=stored.ts, offsets=stored.offsets, epochs=stored.epochs)

    # ------------------------------------------------------------------ rooms

    async def _send_room(self, session: ClientSession, frame: p.RoomFrame) -> asyncio.Future[Any] | None:
        members = await self._rooms.members(frame.room)
        if session.user not in members:
            self._refuse(session, p.NOT_MEMBER, f"join {frame.room!r} before writing to it", frame.cid)
            return None
        if not await self._user_may_send(session, frame.cid):
            return None
        envelope = p.Envelope(
            kind="room",
            id=self._new_id(),
            sender=session.user,
            text=frame.text,
            ts=self._now_ms(),
            room=frame.room,
            recipients=tuple(members),
            origin=session.id,
        )
        envelope, where = await self._store_and_route(envelope, frame.cid, members)
        return self._publish(session, frame.cid, envelope, self._with_this_server(where))

    async def _servers_holding(self, users: list[str]) -> set[str]:
        """The servers with a session of any of ``users`` (always this one): a room message
        costs what its members need, not what the cluster has."""
        return self._with_this_server(await self._registry.servers_of(users))

    def _with_this_server(self, where: dict[str, set[str]]) -> set[str]:
        return set().union(*where.values(), {self.server_id})

    async def _membership(self, session: ClientSession, frame: p.JoinFrame | p.LeaveFrame) -> None:
        joining = isinstance(frame, p.JoinFrame)
        change = self._rooms.join if joining else self._rooms.leave
        changed = await change(session.user, frame.room)
        channel = p.room_channel(frame.room)
        if joining:  # the room's messages from now on reach this session (and are in order)
            self._sequencer.expect(channel)
            head = (await self._history.heads([channel]))[channel]
            if self._sequencer.start(channel, head.epoch, head.offset):
                self._channel_reset(channel)
            self.hub.place(session, {channel: head.offset})
        status = "join" if joining else "leave"
        body = p.presence(session.user, status, frame.room)
        if frame.cid is not None:
            session.send(p.membership_ack(frame.cid, frame.room))
        session.send(p.OutFrame({**body, "cid": frame.cid} if frame.cid is not None else body))
        if changed:  # tell the members (and the user's other sessions)
            members = await self._rooms.members(frame.room)
            audience = sorted({*members, session.user})
            await self._emit(body, audience, skip=session.id)

    async def _typing(self, session: ClientSession, frame: p.TypingFrame) -> None:
        target = frame.to if frame.to is not None else f"#{frame.room}"
        now = time.monotonic()
        sent = self._typing_sent.setdefault(session.id, {})
        if now - sent.get(target, 0.0) < 1.0:
            return  # at most one hint per second per sender and target; dropping is harmless
        if len(sent) > 64:  # forget old targets: the map stays small however long a session lives
            sent.clear()
        sent[target] = now
        if frame.room is not None:
            members = await self._rooms.members(frame.room)
            if session.user not in members:
                self._refuse(session, p.NOT_MEMBER, f"you are not in {frame.room!r}", frame.cid)
                return
            audience = [m for m in members if m != session.user]
        else:
            audience = [frame.to] if frame.to is not None and frame.to != session.user else []
        if audience:
            await self._emit(p.typing(session.user, frame.to, frame.room), audience, skip=session.id)

    async def _who(self, session: ClientSession, frame: p.WhoFrame) -> None:
        if frame.room is None:
            users = await self._registry.online(p.MAX_WHO)
        else:
            members = await self._rooms.members(frame.room)
            if session.user not in members:
                self._refuse(session, p.NOT_MEMBER, f"join {frame.room!r} to see who is in it", frame.cid)
                return
            where = await self._registry.servers_of(members[: p.MAX_WHO * 4])
            users = sorted(u for u, servers in where.items() if servers)[: p.MAX_WHO]
        session.send(p.who(users, frame.room, frame.cid))

    async def _emit(self, body: dict[str, Any], audience: list[str] | None, skip: str = "") -> None:
        """A transient event (presence, typing) to ``audience``'s sessions, or to everyone."""
        envelope = p.Envelope(
            kind="event",
            id="",
            sender="",
            text="",
            ts=self._now_ms(),
            recipients=tuple(audience or ()),
            origin=skip,
            event=body,
        )
        if audience is None:
            servers = await self._registry.live_servers() | {self.server_id}
        else:
            servers = await self._servers_holding(audience)
        payload = envelope.to_bytes()
        for server in servers:
            self._bus.publish(server, payload).add_done_callback(_ignore_failure)

    async def announce(self, user: str, status: str, skip: str = "") -> None:
        """Online/offline presence of ``user`` to everyone (but the session ``skip``), while at
        most ``presence_max_online`` users are online: each announcement is a frame to every
        connected user, so N users connecting cost N² frames. Beyond it, ``who`` still answers."""
        if self._presence_max_online and self._online > self._presence_max_online:
            self._metrics.presence_withheld.inc()
            return
        try:
            await self._emit(p.presence(user, status), None, skip=skip)
        except RegistryError as exc:
            log.warning("presence of %s not announced: %s", user, exc)

    async def sweep_presence(self) -> None:
        """Announce users whose servers all died without a goodbye (run by every heartbeat).

        A server that died with thousands of users would be thousands of announcements, each a
        frame to every user: beyond ``presence_max_online`` online and gone together, withheld."""
        gone = await self._registry.sweep_offline()
        crowd = len(gone) >= SWEEP_PAGE or self._online + len(gone) > self._presence_max_online
        if self._presence_max_online and crowd:
            self._metrics.presence_withheld.inc(len(gone))
            return
        for user in gone:
            await self.announce(user, "offline")

    # ------------------------------------------------------------------ reading

    async def may_read(self, user: str, channel: str) -> bool:
        """``public``, the user's own channel, and the channels of rooms they are in."""
        if channel == p.PUBLIC or channel == p.user_channel(user):
            return True
        if channel.startswith("room:"):
            return await self._rooms.is_member(user, channel[5:])
        return False

    async def _history_page(self, session: ClientSession, frame: p.HistoryFrame) -> None:
        if not await self.may_read(session.user, frame.channel):
            self._refuse(session, p.FORBIDDEN, f"you may not read {frame.channel!r}", frame.cid)
            return
        messages = await self._history.before(frame.channel, frame.before, frame.limit)
        session.send(p.history(frame.channel, messages, frame.cid))

    async def _resume(self, session: ClientSession, frame: p.ResumeFrame, greeted: bool = False) -> None:
        """Replay every stored message after the given offsets, in order, then ``resumed``.

        Live frames of those channels are held while the replay runs and go out after it,
        minus those it sent: the session sees one increasing sequence per channel. A channel
        whose epoch differs from the client's, or whose history no longer reaches back to its
        offset, is a gap: it is named in ``resumed`` with where it stands now. ``greeted``:
        this resume ends the hold after ``welcome``, so every other channel goes live after it.
        """
        readable = {c: await self.may_read(session.user, c) for c, _ in frame.positions}
        wanted = [(c, o) for c, o in frame.positions if readable[c]]
        refused = [c for c, _ in frame.positions if not readable[c]]
        if refused:
            self._refuse(session, p.FORBIDDEN, f"you may not read {', '.join(refused)}", frame.cid)
        self.hub.hold(session, [c for c, _ in wanted])
        try:
            heads = await self._history.heads([c for c, _ in wanted])
            for channel, head in heads.items():
                self._sequencer.expect(channel)
                if self._sequencer.start(channel, head.epoch, head.offset):
                    self._channel_reset(channel, spare=session)  # this one hears of it in resumed
            known = dict(frame.epochs)
            gaps, replayed = [], 0
            for channel, offset in wanted:
                head = heads[channel]
                if known.get(channel, head.epoch) != head.epoch or offset > head.offset:
                    gaps.append(channel)  # its offsets started over: the client's mean nothing
                    self.hub.place(session, {channel: head.offset})
                    continue
                floor, top = self.hub.sent(session, channel)
                done, lost = await self._replay(session, channel, offset, floor, top)
                replayed += done
                if lost:
                    gaps.append(channel)
        finally:
            self.hub.release(session, None if greeted else [c for c, _ in wanted])
        self._metrics.replayed.inc(replayed)
        positions = {c: max(heads[c].offset, self.hub.sent(session, c)[1]) for c, _ in wanted}
        epochs = {c: heads[c].epoch for c, _ in wanted}
        session.send(p.resumed(not gaps, frame.cid, gaps, positions, epochs))

    async def _replay(
        self, session: ClientSession, channel: str, offset: int, floor: int, top: int
    ) -> tuple[int, bool]:
        """Send ``session`` the stored messages of ``channel`` after ``offset`` that it was not
        sent live (those in ``(floor, top]``); how many, and whether history had lost some."""
        sent, lost, after = 0, False, offset
        while True:
            messages, first = await self._history.after(channel, after, self.REPLAY_PAGE)
            if after == offset and first > offset + 1:
                lost = True  # trimmed before the client could read it
            for message in messages:
                if not floor < message["offset"] <= top:
                    session.send(p.OutFrame(message))
                    sent += 1
            if messages:
                self.hub.replayed(session, channel, offset, messages[-1]["offset"])
                after = messages[-1]["offset"]
            if len(messages) < self.REPLAY_PAGE:
                return sent, lost

    def _publish(
        self, session: ClientSession, cid: str | None, envelope: p.Envelope, servers: Collection[str]
    ) -> asyncio.Future[list[None]]:
        """Publish to every server's topic; ack (or refuse) once all have answered. Returns the
        publish, done once the sender is answered."""
        payload = envelope.to_bytes()
        started = time.perf_counter()
        done = asyncio.gather(*(self._bus.publish(server, payload) for server in servers))
        self._metrics.messages_routed.labels(envelope.kind).inc()

        def report(future: asyncio.Future[list[None]]) -> None:
            exc = future.exception()
            if exc is not None:
                self._metrics.bus_failures.inc()
                log.warning(
                    "message %s from %s not published: %s",
                    envelope.id,
                    envelope.sender,
                    exc,
                    extra={"user": envelope.sender, "message_id": envelope.id},
                )
                self._refuse(session, p.INTERNAL, f"message not sent ({exc}); retry", cid)
                return
            self._metrics.publish_seconds.observe(time.perf_counter() - started)
            self._metrics.messages_acked.inc()
            own = envelope.channels()[0] if envelope.kind != "private" else p.user_channel(envelope.sender)
            session.send(p.ack(cid, envelope.id, envelope.ts, own, dict(envelope.offsets).get(own, 0)))

        done.add_done_callback(report)
        return done

    def count_out(self, frame: p.OutFrame) -> None:
        """Count a frame written to a client, by type (for /metrics)."""
        self._metrics.frames_out.labels(str(frame.body.get("type", "?"))).inc()

    def _refuse(self, session: ClientSession, code: str, message: str, cid: str | None) -> None:
        self._metrics.errors.labels(code).inc()
        session.send(p.error(code, message, cid))

    # ------------------------------------------------------------------ bus messages

    def on_bus_message(self, payload: bytes) -> None:
        """Deliver one envelope from this server's topic to the local sessions it is for."""
        try:
            envelope = p.Envelope.from_bytes(payload)
        except p.EnvelopeError as exc:
            log.error("dropped an undecodable message from the bus: %s", exc)
            return
        if envelope.kind == "event":
            self._deliver_event(envelope)
        elif envelope.offsets:
            self._sequence(envelope)
        else:  # from a server that stores nothing (none of this version): as it comes
            for channel in envelope.channels():
                self._deliver(envelope, channel)

    def _sequence(self, envelope: p.Envelope) -> None:
        """Hand each of the message's channels to the sequencer, which delivers in order."""
        epochs = dict(envelope.epochs)
        for channel, offset in envelope.offsets:
            deliver = functools.partial(self._deliver, envelope, channel)
            self._sequencer.offer(channel, epochs.get(channel, ""), offset, envelope.id, deliver)

    def _deliver(self, envelope: p.Envelope, channel: str) -> None:
        """``envelope``'s message as stored in ``channel``, to the local sessions reading it there."""
        frame = envelope.message_frame(channel)
        if envelope.kind == "public":
            delivered = self.hub.broadcast(frame)
        elif envelope.kind == "room":
            delivered = sum(  # every member, the sender included (as for public messages)
                self.hub.deliver(user, frame) for user in envelope.recipients if self.hub.has_user(user)
            )
        else:
            user = channel[len("user:") :]
            delivered = self.hub.deliver(user, frame, skip=envelope.origin)
            if delivered and envelope.receipt and user == envelope.to and user != envelope.sender:
                self._receipt_delivered(envelope)
        if delivered:
            self._metrics.deliveries.labels(envelope.kind).inc(delivered)
            self._metrics.delivery_seconds.observe(max(0.0, self._clock() - envelope.ts / 1000))

    async def _fill(self, channel: str, after: int, upto: int) -> list[tuple[int, str, Deliver]]:
        """Deliveries of ``channel``'s stored messages in ``(after, upto]``, for the sequencer
        to put in a hole that the bus left (a message stored and never published)."""
        messages, _ = await self._history.after(channel, after, max(1, upto - after))
        room_members: set[str] = set()
        if channel.startswith("room:"):
            room_members = set(await self._rooms.members(channel[len("room:") :]))
        deliveries: list[tuple[int, str, Deliver]] = []
        for message in messages:
            if message["offset"] > upto:
                break
            frame = p.OutFrame(message)
            deliver = functools.partial(self._deliver_stored, channel, frame, room_members)
            deliveries.append((message["offset"], str(message["id"]), deliver))
        return deliveries

    def _deliver_stored(self, channel: str, frame: p.OutFrame, room_members: set[str]) -> None:
        if channel == p.PUBLIC:
            self.hub.broadcast(frame)
        elif channel.startswith("room:"):
            for user in room_members:
                self.hub.deliver(user, frame)
        else:
            self.hub.deliver(channel[len("user:") :], frame)

    def _renew_epoch(self, channel: str, stale: str) -> None:
        """``channel``'s store handed out offsets of epoch ``stale`` a second time: give it a new
        epoch, so every server and client learns that those offsets no longer mean one thing."""

        async def renew() -> None:
            try:
                await self._history.renew_epoch(channel, stale)
            except HistoryError as exc:  # the next reused offset tries again
                log.warning("could not renew the epoch of %s: %s", channel, exc)

        task = asyncio.create_task(renew())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _channel_reset(self, channel: str, spare: ClientSession | None = None) -> None:
        """``channel``'s offsets started over, or a hole in it cannot be filled: what its local
        readers (but ``spare``) were told no longer holds. They reconnect and resume, and hear
        of the gap then."""
        self._metrics.channel_resets.inc()
        for session in self.hub.readers(channel):
            if session is not spare:
                session.close(CLOSE_RESET, f"{channel} was reset; reconnect and resume")

    def _receipt_delivered(self, envelope: p.Envelope) -> None:
        """Tell the sender a session of the recipient got the message (an addition to the protocol,
        for sessions that asked: it doubles the frames and bus traffic of a private message).

        The receipt goes to the server of the sending session (named in its id), for the sender's
        sessions there: no registry look-up, one small publish, and none when that is this server."""
        body = p.receipt(envelope.id, envelope.to or "", "delivered")
        server = p.server_of_session(envelope.origin)
        if server == self.server_id:
            self.hub.deliver(envelope.sender, p.OutFrame(body))
        elif server:
            event = p.Envelope(
                kind="event", id="", sender="", text="", ts=envelope.ts, recipients=(envelope.sender,), event=body
            )
            self._bus.publish(server, event.to_bytes()).add_done_callback(_ignore_failure)

    def _deliver_event(self, envelope: p.Envelope) -> None:
        if envelope.event is None:
            return
        frame = p.OutFrame(envelope.event)
        if not envelope.recipients:
            self.hub.broadcast(frame, skip=envelope.origin)
            return
        for user in envelope.recipients:
            if self.hub.has_user(user):
                self.hub.deliver(user, frame, skip=envelope.origin)

    # ------------------------------------------------------------------ lifecycle

    async def heartbeat(self, live: bool) -> None:
        """Refresh this server's registry entries (and its liveness when ``live``).

        In chunks, each taken from the hub just before it is sent: a user whose last session
        closed while an earlier chunk was on its way is not written back (that made thousands of
        stale entries when thousands left at once, swept and announced later)."""
        users = list(self.hub.users())
        for start in range(0, max(len(users), 1), self.HEARTBEAT_CHUNK):
            chunk = [u for u in users[start : start + self.HEARTBEAT_CHUNK] if self.hub.has_user(u)]
            await self._registry.heartbeat(self.server_id, chunk, live)
        if self._presence_max_online:
            self._online = await self._registry.online_count()

    async def withdraw(self) -> None:
        """Graceful stop: leave the registry, then tell every client to reconnect elsewhere."""
        self._withdrawn = True
        if self._background:  # unregistrations under way finish first
            await asyncio.wait(list(self._background), timeout=2.0)
        try:
            await self._registry.withdraw(self.server_id, list(self.hub.users()))
        except RegistryError as exc:
            log.warning("could not withdraw from the registry (entries will expire): %s", exc)
        for session in list(self.hub.sessions()):
            session.close(CLOSE_GOING_AWAY, "server shutting down; reconnect")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
