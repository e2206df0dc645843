"""What happens to a frame: validate, authorize, route, publish, ack; and to a bus message: deliver.

No sockets and no I/O libraries here: the router talks to a ``Hub`` of sessions, a
``Registry`` and a ``Bus``, all injected, so the same code runs over Redis and Kafka in
production and over in-memory fakes in tests.

Routing:
- public: one envelope to every live server's topic (this one included); each server
  writes it to all its sessions, the sender's too.
- private: one envelope to the topics of the servers holding the recipient or the sender
  (always this one, so every message is durably written even when the recipient is
  offline); each delivers it to the recipient's sessions and to the sender's other ones.
The sender's ``ack`` goes out only when every topic has the message (acks=all).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol

from chatserver import protocol as p
from chatserver.bus import Bus
from chatserver.hub import Hub, Session
from chatserver.metrics import Metrics
from chatserver.registry import Registry, RegistryError

log = logging.getLogger(__name__)

#: WebSocket close code: the server is going away (clients reconnect elsewhere).
CLOSE_GOING_AWAY = 1001


class ClientSession(Session, Protocol):
    """A hub session that also knows how its client encodes frames."""

    @property
    def codec(self) -> p.Codec: ...


def _new_id() -> str:
    return uuid.uuid4().hex


class Router:
    def __init__(
        self,
        server_id: str,
        hub: Hub,
        registry: Registry,
        bus: Bus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.server_id = server_id
        self.hub = hub
        self._registry = registry
        self._bus = bus
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ sessions

    async def connect(self, session: ClientSession) -> None:
        """Register a new authenticated session and greet it."""
        if self.hub.add(session):
            try:
                await self._registry.add(session.user, self.server_id)
            except RegistryError as exc:  # the next heartbeat records it
                self._metrics.registry_failures.inc()
                log.warning("could not register %s: %s", session.user, exc)
        self._count_sessions()
        session.send(p.welcome(session.user, self.server_id, {}))

    def disconnect(self, session: ClientSession) -> None:
        """Forget a closed session; the registry entry goes with the user's last one."""
        if self.hub.remove(session):
            self._spawn(self._unregister(session.user))
        self._count_sessions()

    async def _unregister(self, user: str) -> None:
        if self.hub.has_user(user):  # came back meanwhile
            return
        try:
            await self._registry.remove(user, self.server_id)
        except RegistryError as exc:  # the entry expires by itself
            self._metrics.registry_failures.inc()
            log.warning("could not unregister %s: %s", user, exc)

    def _count_sessions(self) -> None:
        self._metrics.connections.set(len(self.hub))
        self._metrics.users.set(len(self.hub.users()))

    # ------------------------------------------------------------------ client frames

    async def handle(self, session: ClientSession, raw: str | bytes) -> None:
        """Act on one client frame. Never raises: every refusal becomes an ``error`` frame."""
        try:
            frame = p.decode_frame(raw, session.codec)
        except p.ProtocolError as exc:
            self._refuse(session, exc.code, exc.message, exc.cid)
            return
        try:
            if isinstance(frame, p.PublicFrame):
                self._metrics.frames_in.labels("public").inc()
                await self._send_public(session, frame)
            elif isinstance(frame, p.PrivateFrame):
                self._metrics.frames_in.labels("private").inc()
                await self._send_private(session, frame)
            else:
                self._metrics.frames_in.labels("ping").inc()
                session.send(p.pong(frame.cid))
        except RegistryError as exc:
            self._metrics.registry_failures.inc()
            log.warning("registry unavailable while routing for %s: %s", session.user, exc)
            self._refuse(session, p.INTERNAL, "message not sent: the user registry is unavailable; retry", frame.cid)

    async def _send_public(self, session: ClientSession, frame: p.PublicFrame) -> None:
        servers = await self._registry.live_servers()
        servers.add(self.server_id)
        envelope = p.Envelope(
            kind="public",
            id=self._new_id(),
            sender=session.user,
            text=frame.text,
            ts=self._now_ms(),
            origin=session.id,
        )
        self._publish(session, frame.cid, envelope, servers)

    async def _send_private(self, session: ClientSession, frame: p.PrivateFrame) -> None:
        sender, recipient = session.user, frame.to
        where = await self._registry.servers_of([recipient, sender])
        servers = where[recipient] | where[sender] | {self.server_id}
        envelope = p.Envelope(
            kind="private",
            id=self._new_id(),
            sender=sender,
            text=frame.text,
            ts=self._now_ms(),
            to=recipient,
            recipients=(recipient,) if recipient == sender else (recipient, sender),
            origin=session.id,
        )
        self._publish(session, frame.cid, envelope, servers)

    def _publish(self, session: ClientSession, cid: str | None, envelope: p.Envelope, servers: Collection[str]) -> None:
        """Publish to every server's topic; ack (or refuse) once all have answered."""
        payload = envelope.to_bytes()
        started = time.perf_counter()
        done = asyncio.gather(*(self._bus.publish(server, payload) for server in servers))
        self._metrics.messages_routed.labels(envelope.kind).inc()

        def report(future: asyncio.Future[list[None]]) -> None:
            exc = future.exception()
            if exc is not None:
                self._metrics.bus_failures.inc()
                log.warning("message %s from %s not published: %s", envelope.id, envelope.sender, exc)
                self._refuse(session, p.INTERNAL, f"message not sent ({exc}); retry", cid)
                return
            self._metrics.publish_seconds.observe(time.perf_counter() - started)
            self._metrics.messages_acked.inc()
            session.send(p.ack(cid, envelope.id, envelope.ts))

        done.add_done_callback(report)

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
        frame = envelope.message_frame()
        if envelope.kind == "public":
            delivered = self.hub.broadcast(frame)
        else:
            delivered = sum(self.hub.deliver(user, frame, skip=envelope.origin) for user in envelope.recipients)
        if delivered:
            self._metrics.deliveries.labels(envelope.kind).inc(delivered)
            self._metrics.delivery_seconds.observe(max(0.0, self._clock() - envelope.ts / 1000))

    # ------------------------------------------------------------------ lifecycle

    async def heartbeat(self, live: bool) -> None:
        """Refresh this server's registry entries (and its liveness when ``live``)."""
        await self._registry.heartbeat(self.server_id, list(self.hub.users()), live)

    async def withdraw(self) -> None:
        """Graceful stop: leave the registry, then tell every client to reconnect elsewhere."""
        try:
            await self._registry.withdraw(self.server_id, list(self.hub.users()))
        except RegistryError as exc:
            log.warning("could not withdraw from the registry (entries will expire): %s", exc)
        for session in list(self.hub.sessions()):
            session.close(CLOSE_GOING_AWAY, "server shutting down; reconnect")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
