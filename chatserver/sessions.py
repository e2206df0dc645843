"""Sessions: a client arrives, is registered where the cluster can find it, is greeted, lives
on its token (renewed by ``refresh``), and leaves; and this server keeps its registry entries
alive (heartbeat) until it withdraws.

Registering comes before the greeting reads positions: every message stored after that read is
routed here too (``chatserver.messages`` stores before it looks up the route). A user's registry
entry goes with their last session here; a user whose last session anywhere left is announced
offline (``chatserver.presence``).
"""

from __future__ import annotations

import asyncio
import logging

from chatserver import frames
from chatserver import protocol as p
from chatserver.auth import AuthError, TokenAuthority
from chatserver.delivery import Delivery
from chatserver.parts import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN, ClientSession, Parts
from chatserver.presence import Presence
from chatserver.recovery import Recovery
from chatserver.registry import RegistryError
from chatserver.rooms import RoomsError

log = logging.getLogger(__name__)


class Sessions:
    HEARTBEAT_CHUNK = 500  # users per registry heartbeat call

    def __init__(
        self,
        parts: Parts,
        delivery: Delivery,
        recovery: Recovery,
        presence: Presence,
        auth: TokenAuthority | None = None,
    ) -> None:
        """``auth``: checks the tokens of ``refresh`` (without it, every refresh is refused)."""
        self._parts = parts
        self._auth = auth
        self._hub = parts.hub
        self._delivery = delivery
        self._recovery = recovery
        self._presence = presence
        self._unregistering: dict[str, asyncio.Task[None]] = {}
        self._withdrawn = False  # after a graceful stop began, sessions leave no registry work

    async def connect(self, session: ClientSession) -> None:
        """Register a new authenticated session, then greet it (``Recovery.greet``). Until
        ``welcome`` is out, every frame for it waits."""
        parts, user = self._parts, session.user
        try:
            rooms = await parts.rooms.rooms_of(user)
        except RoomsError as exc:  # greeted without them, it would get their messages unplaced
            log.warning("rooms of %s unknown: %s", user, exc)
            session.close(CLOSE_TRY_AGAIN, "the room store is unavailable; reconnect shortly")
            return
        channels = [p.PUBLIC, p.user_channel(user), *(p.room_channel(r) for r in rooms)]
        first = self._hub.add(session)
        self._hub.hold(session, channels, everything=True)  # welcome goes first
        for channel in channels:
            self._delivery.open(channel)
        parts.metrics.sessions_per_user.observe(self._hub.count(user))
        if first:
            await self._register(session)
        self._count()
        await self._recovery.greet(session, channels, rooms)

    async def _register(self, session: ClientSession) -> None:
        user = session.user
        pending = self._unregistering.get(user)
        if pending is not None:  # the user's last session here just closed: let it finish
            await asyncio.shield(pending)
        try:
            was_online = bool((await self._parts.registry.servers_of([user]))[user])
            await self._parts.registry.add(user, self._parts.server_id)
            if not was_online:
                await self._presence.announce(user, "online", skip=session.id)
        except RegistryError as exc:  # the next heartbeat records it
            self._parts.metrics.registry_failures.inc()
            log.warning("could not register %s: %s", user, exc)

    async def refresh(self, session: ClientSession, frame: p.RefreshFrame) -> None:
        """A new token for an open session: valid and naming the session's own user, it moves the
        session's end to its ``exp`` (answered with ``refreshed``); otherwise nothing changes and
        the session still ends when its current token does."""
        try:
            if self._auth is None:
                raise AuthError("this server does not renew sessions")
            grant = self._auth.check(frame.token)
        except AuthError as exc:
            self._parts.refuse(session, p.UNAUTHORIZED, f"{exc}; the session keeps its current token", frame.cid)
            return
        if grant.user != session.user:
            why = f"the token is {grant.user}'s, not {session.user}'s: a session keeps its user"
            self._parts.refuse(session, p.FORBIDDEN, why, frame.cid)
            return
        session.renew(grant.deadline)
        session.send(frames.refreshed(grant.user, grant.exp, frame.cid))

    def disconnect(self, session: ClientSession) -> None:
        """Forget a closed session; the registry entry goes with the user's last one."""
        self._recovery.forget(session)
        self._presence.forget(session)
        if self._hub.remove(session):
            self._delivery.close(p.user_channel(session.user))
            if not self._withdrawn:
                task = self._parts.spawn(self._unregister(session.user))
                self._unregistering[session.user] = task
        self._count()

    async def _unregister(self, user: str) -> None:
        try:
            if not self._hub.has_user(user):  # else: came back meanwhile
                await self._parts.registry.remove(user, self._parts.server_id)
                if await self._parts.registry.went_offline(user):
                    await self._presence.announce(user, "offline")
        except RegistryError as exc:  # the entry expires by itself
            self._parts.metrics.registry_failures.inc()
            log.warning("could not unregister %s: %s", user, exc)
        finally:
            if self._unregistering.get(user) is asyncio.current_task():
                del self._unregistering[user]

    def _count(self) -> None:
        self._parts.metrics.connections.set(len(self._hub))
        self._parts.metrics.users.set(len(self._hub.users()))

    async def heartbeat(self, live: bool) -> None:
        """Refresh this server's registry entries (and its liveness when ``live``).

        In chunks, each taken from the hub just before it is sent: a user whose last session
        closed while an earlier chunk was on its way is not written back (that made thousands of
        stale entries when thousands left at once, swept and announced later)."""
        users = list(self._hub.users())
        for start in range(0, max(len(users), 1), self.HEARTBEAT_CHUNK):
            chunk = [u for u in users[start : start + self.HEARTBEAT_CHUNK] if self._hub.has_user(u)]
            await self._parts.registry.heartbeat(self._parts.server_id, chunk, live)
        await self._presence.refresh_online()

    async def withdraw(self) -> None:
        """Graceful stop: leave the registry, then tell every client to reconnect elsewhere."""
        self._withdrawn = True
        if self._parts.background:  # unregistrations under way finish first
            await asyncio.wait(list(self._parts.background), timeout=2.0)
        try:
            await self._parts.registry.withdraw(self._parts.server_id, list(self._hub.users()))
        except RegistryError as exc:
            log.warning("could not withdraw from the registry (entries will expire): %s", exc)
        for session in list(self._hub.sessions()):
            session.close(CLOSE_GOING_AWAY, "server shutting down; reconnect")
