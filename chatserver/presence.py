"""Rooms and presence: who is in which room, who is online, who is typing.

Membership is stored (``Rooms``) and acked; what goes around it is transient: presence lines,
typing hints and read receipts travel as events to the servers of the users they are for, never
stored, never acked (``Parts.publish_event``). Online/offline goes to everyone only while at most
``presence_max_online`` users are online: each announcement is a frame to every connected user,
so N users connecting cost N² frames. Beyond it, ``who`` still answers.
"""

from __future__ import annotations

import logging
import time

from chatserver import frames
from chatserver import protocol as p
from chatserver.codec import OutFrame
from chatserver.delivery import Delivery
from chatserver.parts import ClientSession, Parts
from chatserver.registry import SWEEP_PAGE, RegistryError

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, parts: Parts, delivery: Delivery, presence_max_online: int = 0) -> None:
        self._parts = parts
        self._delivery = delivery
        self._max_online = presence_max_online
        self._online = 0  # users online cluster-wide, as of the last heartbeat
        self._typing_sent: dict[str, dict[str, float]] = {}  # session id -> target -> when

    async def membership(self, session: ClientSession, frame: p.JoinFrame | p.LeaveFrame) -> None:
        """Join or leave a room: stored, acked (with a ``cid``), then told to the members."""
        parts = self._parts
        joining = isinstance(frame, p.JoinFrame)
        change = parts.rooms.join if joining else parts.rooms.leave
        changed = await change(session.user, frame.room)
        if joining:  # the room's messages from now on reach this session (and are in order)
            channel = p.room_channel(frame.room)
            self._delivery.open(channel)
            head = (await parts.history.heads([channel]))[channel]
            self._delivery.place(channel, head)
            parts.hub.place(session, {channel: head.offset})
        body = frames.presence(session.user, "join" if joining else "leave", frame.room)
        if frame.cid is not None:
            session.send(frames.membership_ack(frame.cid, frame.room))
        session.send(OutFrame({**body, "cid": frame.cid} if frame.cid is not None else body))
        if changed:  # tell the members (and the user's other sessions)
            members = await parts.rooms.members(frame.room)
            await parts.publish_event(body, sorted({*members, session.user}), skip=session.id)

    async def typing(self, session: ClientSession, frame: p.TypingFrame) -> None:
        target = frame.to if frame.to is not None else f"#{frame.room}"
        now = time.monotonic()
        sent = self._typing_sent.setdefault(session.id, {})
        if now - sent.get(target, 0.0) < 1.0:
            return  # at most one hint per second per sender and target; dropping is harmless
        if len(sent) > 64:  # forget old targets: the map stays small however long a session lives
            sent.clear()
        sent[target] = now
        if frame.room is not None:
            members = await self._parts.rooms.members(frame.room)
            if session.user not in members:
                self._parts.refuse(session, p.NOT_MEMBER, f"you are not in {frame.room!r}", frame.cid)
                return
            audience = [m for m in members if m != session.user]
        else:
            audience = [frame.to] if frame.to is not None and frame.to != session.user else []
        if audience:
            await self._parts.publish_event(
                frames.typing(session.user, frame.to, frame.room), audience, skip=session.id
            )

    async def receipt(self, session: ClientSession, frame: p.ReceiptFrame) -> None:
        """A "read" (or "delivered") receipt from a reader to the sender of a private message."""
        if frame.to != session.user:
            await self._parts.publish_event(frames.receipt(frame.id, session.user, frame.status), [frame.to])

    async def who(self, session: ClientSession, frame: p.WhoFrame) -> None:
        registry = self._parts.registry
        if frame.room is None:
            users = await registry.online(p.MAX_WHO)
        else:
            members = await self._parts.rooms.members(frame.room)
            if session.user not in members:
                self._parts.refuse(session, p.NOT_MEMBER, f"join {frame.room!r} to see who is in it", frame.cid)
                return
            where = await registry.servers_of(members[: p.MAX_WHO * 4])
            users = sorted(u for u, servers in where.items() if servers)[: p.MAX_WHO]
            session.send(frames.who(users, frame.room, frame.cid, members[: p.MAX_WHO]))
            return
        session.send(frames.who(users, frame.room, frame.cid))

    async def directory(self, session: ClientSession, frame: p.RoomsFrame) -> None:
        """``rooms``: the rooms anyone can find and join, with their member counts."""
        session.send(frames.rooms(await self._parts.rooms.directory(p.MAX_ROOMS), frame.cid))

    def forget(self, session: ClientSession) -> None:
        self._typing_sent.pop(session.id, None)

    async def announce(self, user: str, status: str, skip: str = "") -> None:
        """Online/offline presence of ``user`` to everyone (but the session ``skip``)."""
        if self._max_online and self._online > self._max_online:
            self._parts.metrics.presence_withheld.inc()
            return
        try:
            await self._parts.publish_event(frames.presence(user, status), None, skip=skip)
        except RegistryError as exc:
            log.warning("presence of %s not announced: %s", user, exc)

    async def refresh_online(self) -> None:
        """How many users are online cluster-wide (for the announcement limit)."""
        if self._max_online:
            self._online = await self._parts.registry.online_count()

    async def sweep(self) -> None:
        """Announce users whose servers all died without a goodbye (run by every heartbeat).

        A server that died with thousands of users would be thousands of announcements, each a
        frame to every user: beyond ``presence_max_online`` online and gone together, withheld."""
        gone = await self._parts.registry.sweep_offline()
        crowd = len(gone) >= SWEEP_PAGE or self._online + len(gone) > self._max_online
        if self._max_online and crowd:
            self._parts.metrics.presence_withheld.inc(len(gone))
            return
        for user in gone:
            await self.announce(user, "offline")
