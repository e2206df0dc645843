"""The message path, top to bottom: validate, admit, store, route, publish, ack.

1. *Admit*: while the oldest message this server accepted has waited too long for its ack, new
   ones are refused at once (``limits.Backlog``); a user sending too fast across all sessions is
   refused (``limits.UserLimiter``); a room message needs a member.
2. *Store*: the message gets its offset in each of its channels (``History.store``); a retry
   (same ``cid``, text and target) gets its first attempt's id and offsets back.
3. *Route*: then the servers that must deliver it are looked up: every live server (public),
   those holding a member (room), those holding the recipient or the sender (private). Storing
   first is what makes recovery exact: a session registers before it reads its positions, so
   every message stored after that read is also routed to it.
4. *Publish* one envelope to each of those servers' topics.
5. *Ack* the sender once the store and every topic have it; an ``error`` with the same ``cid``
   if any refused, so the client can retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from chatserver import frames
from chatserver import protocol as p
from chatserver.delivery import Delivery
from chatserver.envelope import Envelope, MessageKind
from chatserver.history import FIND_DEPTH, Stored
from chatserver.limits import Backlog, UserLimiter
from chatserver.parts import ClientSession, Parts

log = logging.getLogger(__name__)

Published = asyncio.Future[Any]
Change = p.EditFrame | p.DeleteFrame | p.ReactFrame


class Messages:
    def __init__(
        self,
        parts: Parts,
        delivery: Delivery,
        backlog: Backlog,
        user_limiter: UserLimiter | None = None,
        new_id: Callable[[], str] = lambda: "",
        store_and_route_together: bool = False,
    ) -> None:
        """``store_and_route_together``: history and registry queue into one ``RedisBatch``, so
        a message's store and route look-up go in one pipeline, store first: one round trip."""
        self._parts = parts
        self._delivery = delivery
        self._backlog = backlog
        self._user_limiter = user_limiter
        self._new_id = new_id
        self._together = store_and_route_together

    async def public(self, session: ClientSession, frame: p.PublicFrame) -> None:
        await self._admit(session, frame, self._public)

    async def private(self, session: ClientSession, frame: p.PrivateFrame) -> None:
        await self._admit(session, frame, self._private)

    async def room(self, session: ClientSession, frame: p.RoomFrame) -> None:
        await self._admit(session, frame, self._room)

    async def change(self, session: ClientSession, frame: Change) -> None:
        """``edit`` or ``delete`` (version 2): by its author only; ``react`` (this server's
        addition): by anyone who may read the channel. Stored where the message is."""
        await self._admit(session, frame, self._change)

    # ------------------------------------------------------------------ 1. admit

    async def _admit(
        self,
        session: ClientSession,
        frame: Any,
        send: Callable[[ClientSession, Any], Awaitable[Published | None]],
    ) -> None:
        """A message frame, unless this server is overloaded: then it is refused at once.
        Otherwise it is in the backlog until acked or refused."""
        if self._backlog.overloaded():
            self._parts.metrics.messages_shed.inc()
            why = "the server is overloaded: message not sent; retry shortly"
            self._parts.refuse(session, p.RATE_LIMITED, why, frame.cid)
            return
        ticket = self._backlog.open()
        published = None
        try:
            published = await send(session, frame)
        finally:
            if published is None:
                ticket.answer()  # refused, or failed before publishing
            else:
                published.add_done_callback(ticket.answer)

    async def _user_may_send(self, session: ClientSession, cid: str | None) -> bool:
        limiter = self._user_limiter
        if limiter is None or await limiter.allow(session.user):
            return True
        why = "you are sending too fast across your sessions; retry shortly"
        self._parts.refuse(session, p.RATE_LIMITED, why, cid)
        return False

    def _envelope(self, session: ClientSession, kind: MessageKind, text: str, **fields: Any) -> Envelope:
        return Envelope(
            kind=kind,
            id=self._new_id(),
            sender=session.user,
            text=text,
            ts=self._parts.now_ms(),
            origin=session.id,
            **fields,
        )

    # ------------------------------------------------------------------ by kind

    async def _public(self, session: ClientSession, frame: p.PublicFrame) -> Published | None:
        if not await self._user_may_send(session, frame.cid):
            return None
        envelope = await self._store(self._envelope(session, "public", frame.text), frame.cid)
        servers = await self._parts.registry.live_servers()
        servers.add(self._parts.server_id)
        return self._publish(session, frame.cid, envelope, servers)

    async def _private(self, session: ClientSession, frame: p.PrivateFrame) -> Published | None:
        if not await self._user_may_send(session, frame.cid):
            return None
        sender, recipient = session.user, frame.to
        envelope = self._envelope(
            session,
            "private",
            frame.text,
            to=recipient,
            recipients=(recipient,) if recipient == sender else (recipient, sender),
            receipt=session.wants_receipts,
        )
        envelope, where = await self._store_and_route(envelope, frame.cid, [recipient, sender])
        # This server's own topic only when a session here needs the copy: the recipient's, or
        # another one of the sender's; or when no server does (an ack means written to Kafka).
        # Checked after the store, so a session that opens later reads positions that already
        # include this message (see ``chatserver.sessions``).
        hub, here = self._parts.hub, self._parts.server_id
        servers = (where[recipient] | where[sender]) - {here}
        if hub.has_user(recipient) or hub.count(sender) > 1 or not servers:
            servers.add(here)
        else:  # the sender's channel moves on here without a copy coming back
            self._delivery.sequence(envelope)
        return self._publish(session, frame.cid, envelope, servers)

    async def _room(self, session: ClientSession, frame: p.RoomFrame) -> Published | None:
        members = await self._parts.rooms.members(frame.room)
        if session.user not in members:
            self._parts.refuse(session, p.NOT_MEMBER, f"join {frame.room!r} before writing to it", frame.cid)
            return None
        if not await self._user_may_send(session, frame.cid):
            return None
        envelope = self._envelope(session, "room", frame.text, room=frame.room, recipients=tuple(members))
        envelope, where = await self._store_and_route(envelope, frame.cid, members)
        # Only the servers that hold a member: a room costs what its members need.
        servers = set().union(*where.values(), {self._parts.server_id})
        return self._publish(session, frame.cid, envelope, servers)

    async def _change(self, session: ClientSession, frame: Change) -> Published | None:
        """An edit, a delete or a reaction goes where its message went: stored in each of its
        channels with their next offsets, to the servers of its audience (today's members, for a
        room)."""
        react = isinstance(frame, p.ReactFrame)
        if react and not await self._parts.may_read(session.user, frame.channel):
            self._parts.refuse(session, p.FORBIDDEN, f"you may not read {frame.channel!r}", frame.cid)
            return None
        original = await self._parts.history.find(frame.channel, frame.id)
        if original is None or original.get("kind") not in ("public", "private", "room"):
            why = f"no message {frame.id!r} in {frame.channel} (only the newest {FIND_DEPTH} can be changed)"
            self._parts.refuse(session, p.BAD_FRAME, why, frame.cid)
            return None
        if not react and original.get("from") != session.user:
            self._parts.refuse(session, p.FORBIDDEN, "only its author may edit or delete a message", frame.cid)
            return None
        if not await self._user_may_send(session, frame.cid):
            return None
        to, room = original.get("to"), original.get("room")
        if room is not None:
            users = await self._parts.rooms.members(room)
        elif to is not None:
            users = list(dict.fromkeys((to, str(original.get("from")))))  # both sides of the conversation
        else:
            users = []
        kind: MessageKind
        if isinstance(frame, p.ReactFrame):
            kind, text = ("unreact" if frame.remove else "react"), frame.emoji
        elif isinstance(frame, p.EditFrame):
            kind, text = "edit", frame.text
        else:
            kind, text = "delete", ""
        envelope = self._envelope(session, kind, text, ref=frame.id, to=to, room=room, recipients=tuple(users))
        if users:
            envelope, where = await self._store_and_route(envelope, frame.cid, users)
            servers = set().union(*where.values())
        else:
            envelope = await self._store(envelope, frame.cid)
            servers = await self._parts.registry.live_servers()
        servers.add(self._parts.server_id)
        return self._publish(session, frame.cid, envelope, servers)

    # ------------------------------------------------------------------ 2. store, 3. route

    async def _store_and_route(
        self, envelope: Envelope, cid: str | None, users: list[str]
    ) -> tuple[Envelope, dict[str, set[str]]]:
        """Store ``envelope``, then look up the servers of ``users``: the look-up must see the
        registry as it is after the store. Together (one Redis), both are queued as they are
        called, store first, so they travel in one pipeline that Redis runs in order;
        otherwise the look-up is made once the store is done."""
        history, registry = self._parts.history, self._parts.registry
        stored = history.store(envelope, self._fingerprint(envelope, cid))
        if not self._together:
            envelope = self._placed(envelope, await stored)
            return envelope, await registry.servers_of(users)
        route = registry.servers_of(users)
        try:
            placed = self._placed(envelope, await stored)
        except BaseException:
            with contextlib.suppress(Exception):
                await route  # its error is the store's, or moot once the store failed
            raise
        return placed, await route

    async def _store(self, envelope: Envelope, cid: str | None) -> Envelope:
        """Store ``envelope``; a retry (same cid and content, to the same user or room) gets its
        first attempt's id and offsets."""
        return self._placed(envelope, await self._parts.history.store(envelope, self._fingerprint(envelope, cid)))

    @staticmethod
    def _fingerprint(envelope: Envelope, cid: str | None) -> str | None:
        """What recognises a retry: the same cid and content, to the same user or room."""
        if cid is None:
            return None
        what = f"{envelope.kind}\0{envelope.to}\0{envelope.room}\0{envelope.ref}\0{cid}\0{envelope.text}"
        return hashlib.sha256(what.encode()).hexdigest()[:24]

    def _placed(self, envelope: Envelope, stored: Stored) -> Envelope:
        """``envelope`` with the id, time and offsets the store gave it (a retry's: the first's)."""
        if stored.duplicate:
            self._parts.metrics.retries_recognised.inc()
        return envelope.placed(stored.id, stored.ts, stored.offsets, stored.epochs)

    # ------------------------------------------------------------------ 4. publish, 5. ack

    def _publish(
        self, session: ClientSession, cid: str | None, envelope: Envelope, servers: Collection[str]
    ) -> Published:
        """Publish to every server's topic; ack (or refuse) once all have answered. Returns the
        publish, done once the sender is answered."""
        parts = self._parts
        payload = envelope.to_bytes()
        started = time.perf_counter()
        publishes = [parts.bus.publish(server, payload) for server in servers]
        done = publishes[0] if len(publishes) == 1 else asyncio.gather(*publishes)
        parts.metrics.messages_routed.labels(envelope.kind).inc()

        def answer(future: Published) -> None:
            exc = future.exception()
            if exc is not None:
                parts.metrics.bus_failures.inc()
                log.warning(
                    "message %s from %s not published: %s",
                    envelope.id,
                    envelope.sender,
                    exc,
                    extra={"user": envelope.sender, "message_id": envelope.id},
                )
                parts.refuse(session, p.INTERNAL, f"message not sent ({exc}); retry", cid)
                return
            parts.metrics.publish_seconds.observe(time.perf_counter() - started)
            parts.metrics.messages_acked.inc()
            own = envelope.channels()[0] if envelope.to is None else p.user_channel(envelope.sender)
            session.send(frames.ack(cid, envelope.id, envelope.ts, own, dict(envelope.offsets).get(own, 0)))

        done.add_done_callback(answer)
        return done
