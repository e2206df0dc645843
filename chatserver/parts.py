"""What every job of one server shares: its id, its sessions (``Hub``), the stores and the bus
behind their small interfaces, its metrics and its clock; and the close codes it uses.

No job owns these; each is handed the same ``Parts`` (``chatserver.router`` builds it). A job
never reaches into another's state: it calls the other's methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatserver import frames
from chatserver import protocol as p
from chatserver.bus import Bus
from chatserver.codec import Codec
from chatserver.envelope import Envelope
from chatserver.history import History
from chatserver.hub import Hub, Session
from chatserver.metrics import Metrics
from chatserver.registry import Registry
from chatserver.rooms import Rooms

log = logging.getLogger(__name__)

#: WebSocket close codes (docs/PROTOCOL.md): the server is going away (reconnect elsewhere);
#: the client broke a policy (it kept flooding after rate_limited errors); a store is down
#: right now (reconnect after a pause); the session's token expired (get a new one, reconnect
#: and resume); a channel it reads started its offsets over (reconnect and resume: ``resumed``
#: names the gap).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_RESET = 4002


class ClientSession(Session, Protocol):
    """A hub session that also knows how its client encodes frames, and what it asked for."""

    @property
    def codec(self) -> Codec: ...

    @property
    def wants_receipts(self) -> bool:
        """The client asked for "delivered" receipts of its private messages (``receipts=1``)."""
        ...

    def renew(self, deadline: float) -> None:
        """The session now ends at ``deadline`` (seconds since the epoch: its token's ``exp``
        and the clock leeway), closed with ``CLOSE_TOKEN_EXPIRED``, unless renewed again."""


def new_id() -> str:
    return uuid.uuid4().hex


def ignore_failure(future: asyncio.Future[Any]) -> None:
    """Transient events are best effort: a lost typing hint or presence is not an error."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("a transient event was not published: %s", future.exception())


@dataclass
class Parts:
    server_id: str
    hub: Hub
    registry: Registry
    history: History
    bus: Bus
    rooms: Rooms
    metrics: Metrics
    clock: Callable[[], float] = time.time
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def may_read(self, user: str, channel: str) -> bool:
        """``public``, the user's own channel, and the channels of rooms they are in."""
        if channel == p.PUBLIC or channel == p.user_channel(user):
            return True
        if channel.startswith("room:"):
            return await self.rooms.is_member(user, channel[5:])
        return False

    def refuse(self, session: ClientSession, code: str, message: str, cid: str | None) -> None:
        """An ``error`` frame to ``session`` (counted by code)."""
        self.metrics.errors.labels(code).inc()
        session.send(frames.error(code, message, cid))

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background, kept until done (``Router.withdraw`` waits for it)."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def publish_event(self, body: dict[str, Any], audience: list[str] | None, skip: str = "") -> None:
        """A transient event (presence, typing, receipt) to ``audience``'s sessions, or to
        everyone: to the servers that hold them, never stored, never acked."""
        envelope = Envelope(
            kind="event",
            id="",
            sender="",
            text="",
            ts=self.now_ms(),
            recipients=tuple(audience or ()),
            origin=skip,
            event=body,
        )
        if audience is None:
            servers = await self.registry.live_servers()
        else:
            servers = set().union(*(await self.registry.servers_of(audience)).values())
        servers.add(self.server_id)
        payload = envelope.to_bytes()
        for server in servers:
            self.bus.publish(server, payload).add_done_callback(ignore_failure)
