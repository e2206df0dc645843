"""Wiring: the only module that knows every part. ``ChatNode`` owns one server's parts and
their lifecycle; ``make_app`` maps URLs to handlers over a node."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
import tornado.web
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from tornado.routing import URLSpec

from chatserver import handlers as h
from chatserver.auth import TokenAuthority
from chatserver.bus import Bus, KafkaBus, MemoryBroker, MemoryBus
from chatserver.config import Settings
from chatserver.history import History, MemoryHistory, RedisHistory, Retention
from chatserver.hub import Hub
from chatserver.limits import Backlog, ConnectionCounter, MemoryUserLimiter, RedisUserLimiter, UserLimiter
from chatserver.metrics import Metrics
from chatserver.names import Names
from chatserver.redisbatch import RedisBatch
from chatserver.registry import MemoryRegistry, RedisRegistry, Registry, RegistryError
from chatserver.rooms import MemoryRooms, RedisRooms, Rooms
from chatserver.router import Limits, Router

log = logging.getLogger(__name__)
access_log = logging.getLogger("chatserver.access")

ROOT = Path(__file__).resolve().parent.parent


class _Counted:
    """Counts every call of the wrapped object's coroutine methods, by name (registry ops)."""

    def __init__(self, inner: object, counter: Any) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        counter = self._counter.labels(name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counter.inc()
            return attr(*args, **kwargs)  # the coroutine itself: no extra frame per call

        setattr(self, name, counted)  # found directly from now on, not through __getattr__
        return counted


class ChatNode:
    """One chat server: hub, router, registry and bus, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        history: History,
        bus: Bus,
        on_close: Callable[[], Awaitable[None]] | None = None,
        user_limiter: UserLimiter | None = None,
        rooms: Rooms | None = None,
        shared_batch: bool = False,
    ) -> None:
        """``shared_batch``: ``registry`` and ``history`` queue their commands into one
        ``RedisBatch``, so a message's store and route look-up can share a round trip."""
        self.settings = settings
        self.registry = registry
        self.history = history
        self.bus = bus
        self._on_close = on_close
        self.metrics = Metrics()
        self.auth = TokenAuthority(settings.secret, settings.token_ttl_s)
        self.hub = Hub()
        backlog = Backlog(settings.shed_after_ms / 1000)
        limits = Limits(settings.conn_rate_per_s, settings.conn_burst, settings.flood_strikes, user_limiter, backlog)
        self.metrics.consumer_lag.set_function(lambda: float(self.bus.lag()))
        self.metrics.backlog_oldest.set_function(backlog.oldest_age_s)
        registry = cast(Registry, _Counted(registry, self.metrics.registry_ops))
        self.router = Router(
            settings.server_id,
            self.hub,
            registry,
            history,
            bus,
            self.metrics,
            limits,
            rooms,
            presence_max_online=settings.presence_max_online,
            store_and_route_together=shared_batch,
            resume_wait_s=settings.resume_wait_ms / 1000,
            gap_wait_s=settings.gap_wait_ms / 1000,
        )
        self._draining = False
        # In the registry's live set, so public messages reach it. Only once ready the first time
        # (its consumer position is then fixed); from then on it stays there while it runs and is
        # not draining, even while its probe stalls: its sessions are open and must get them.
        self._announced = False
        self._heartbeat_error = ""  # why the last heartbeat failed ("" when it did not)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._registry_checked = (0.0, False, "not checked yet")

    @classmethod
    def from_settings(cls, settings: Settings, broker: MemoryBroker | None = None) -> ChatNode:
        """Real Redis and Kafka, or in-memory fakes for ``backend == "memory"``."""
        names = Names(settings.name_prefix)
        retention = Retention(settings.history_min, settings.history_max, settings.history_keep_s, settings.dedupe_s)
        if settings.backend == "memory":
            registry: Registry = MemoryRegistry(settings.session_ttl_s)
            history: History = MemoryHistory(retention)
            bus: Bus = MemoryBus(broker or MemoryBroker(), settings.server_id)
            limiter = MemoryUserLimiter(settings.user_rate_per_s)
            return cls(settings, registry, history, bus, user_limiter=limiter, rooms=MemoryRooms())
        client = redis_client(settings.redis_url)
        batch = RedisBatch(client)  # stores and route look-ups of one loop turn: one round trip
        registry = RedisRegistry(client, names, settings.session_ttl_s, batch=batch)
        history = RedisHistory(client, names, retention, batch=batch)
        bus = KafkaBus(
            settings.kafka_bootstrap,
            settings.server_id,
            names,
            poll_interval_ms=settings.poll_interval_ms,
            linger_ms=settings.kafka_linger_ms,
            fetch_wait_ms=settings.kafka_fetch_wait_ms,
            fetch_min_bytes=settings.kafka_fetch_min_bytes,
            send_timeout_s=settings.kafka_send_timeout_s,
        )
        redis_limiter = RedisUserLimiter(client, names, settings.user_rate_per_s, batch=batch)
        rooms = RedisRooms(client, names)
        return cls(
            settings,
            registry,
            history,
            bus,
            on_close=client.aclose,
            user_limiter=redis_limiter,
            rooms=rooms,
            shared_batch=True,
        )

    async def start(self) -> None:
        # 1. consume this server's topic (readiness follows once a probe comes back);
        # 2. heartbeat the registry: users always, this server as live once ready.
        await self.bus.start(self.router.on_bus_message)
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        self._heartbeat_task.add_done_callback(self._heartbeat_ended)

    async def _heartbeat_loop(self) -> None:
        """Refresh this server's entries until stopped, whatever fails: a heartbeat that stops
        lets every entry expire while the server runs on (its sessions then get nothing)."""
        logged = ""  # the failure last logged: each distinct one is logged once, with its traceback
        while True:
            # Announced once ready; then live until draining, even while the probe stalls.
            live = not self._draining and (self._announced or self.bus.status()[0])
            try:
                await self.router.heartbeat(live)
                self._announced = self._announced or live
                self._heartbeat_error = ""
                if live:
                    await self.router.sweep_presence()
                    await self.registry.publish_stats(self.settings.server_id, self.stats())
                if logged:
                    log.warning("heartbeat works again")
                    logged = ""
            except Exception as exc:  # anything: a bug must cost a heartbeat, not all of them
                self._heartbeat_error = (
                    f"{type(exc).__name__}: {exc}" if not isinstance(exc, RegistryError) else str(exc)
                )
                if self._heartbeat_error != logged:
                    log.error("heartbeat failed (retrying): %s", self._heartbeat_error, exc_info=exc)
                    logged = self._heartbeat_error
            # Until announced, and while failing, check often, so a server is reachable soon after.
            healthy = self._announced and not self._heartbeat_error
            await asyncio.sleep(self.settings.heartbeat_s if healthy else min(0.25, self.settings.heartbeat_s))

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        if self._draining:
            return
        why = "cancelled" if task.cancelled() else repr(task.exception()) if task.exception() else "returned"
        log.error("the heartbeat stopped (%s): this server is not ready from now on", why)

    def stats(self) -> dict[str, str]:
        """This server's figures for the operator page (totals: the page derives rates)."""

        def total(counter: Any) -> float:
            return float(
                sum(sample.value for m in counter.collect() for sample in m.samples if sample.name.endswith("_total"))
            )

        ready, reason = self.bus.status()
        return {
            "ts": f"{time.time():.3f}",
            "connections": str(len(self.hub)),
            "users": str(len(self.hub.users())),
            "routed": f"{total(self.metrics.messages_routed):.0f}",
            "delivered": f"{total(self.metrics.deliveries):.0f}",
            "errors": f"{total(self.metrics.errors):.0f}",
            "lag": str(self.bus.lag()),
            "state": "draining" if self._draining else ("ready" if ready and self._announced else reason),
        }

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): not draining, Kafka consumed, Redis answering (checked at most 1/s)."""
        if self._draining:
            return False, "draining: this server is shutting down"
        task = self._heartbeat_task
        if task is not None and task.done():
            how = "cancelled" if task.cancelled() else repr(task.exception() or "returned")
            return False, f"the registry heartbeat stopped ({how}): restart this server"
        ready, reason = self.bus.status()
        if not ready:
            return False, reason
        if self._heartbeat_error:
            return False, f"heartbeat to the registry at {self.settings.redis_url} fails: {self._heartbeat_error}"
        if not self._announced:
            return False, f"registering this server in redis at {self.settings.redis_url}: in progress"
        checked_at, ok, why = self._registry_checked
        if time.monotonic() - checked_at > 1.0:
            try:
                await asyncio.wait_for(self.registry.ping(), timeout=2.0)
                ok, why = True, "ok"
            except (RegistryError, TimeoutError) as exc:
                ok, why = False, f"redis at {self.settings.redis_url} does not answer: {exc or 'timeout'}"
            self._registry_checked = (time.monotonic(), ok, why)
        return ok, why

    async def stop(self) -> None:
        """Graceful stop: refuse new sessions, leave the registry, close sessions with 1001,
        let frames under way finish, deliver what is in flight to Kafka, then release connections."""
        self._draining = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await self.router.withdraw()
        with contextlib.suppress(TimeoutError):  # frames under way reach the bus before it is flushed
            await asyncio.wait_for(self.router.quiesce(), timeout=5.0)
        await asyncio.sleep(0.2)  # let close frames go out
        await self.bus.close()
        await self.history.close()
        await self.registry.close()
        if self._on_close is not None:
            await self._on_close()
            self._on_close = None


SENTINEL_SCHEME = "redis+sentinel://"


def redis_client(url: str) -> aioredis.Redis:
    """A client for ``redis://...`` (or ``rediss://``), or for the master that Sentinel names:
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``."""
    # A pooled connection that Redis closed (a restart) fails on first use: retry such a command
    # on a fresh connection. Only connection errors, not timeouts: a command that may have run is
    # not repeated. redis-py's Retry retries TimeoutError unless told otherwise (retry_on_error
    # only adds to its supported_errors), so they are named here. The RedisBatch, which carries
    # every message store, never re-sends a pipeline it wrote, whatever this policy says.
    options: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
    }
    if not url.startswith(SENTINEL_SCHEME):
        direct: aioredis.Redis = aioredis.Redis.from_url(url, health_check_interval=10, **options)
        return direct
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = credentials.split(":", 1)[-1] or None
    hosts = [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in netloc.split(",") if item)]
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError(f"REDIS_URL={url!r}: use redis+sentinel://host:port[,host:port]/service[/db]")
    sentinel = Sentinel(hosts, sentinel_kwargs=options, password=password, **options)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(service, db=int(db or 0))
    return master


def make_app(node: ChatNode) -> tornado.web.Application:
    settings = node.settings
    session_ids = itertools.count(1)
    routes: list[URLSpec] = [
        tornado.web.url(r"/", h.PageHandler, {"server_id": settings.server_id}),
        tornado.web.url(r"/healthz", h.HealthHandler),
        tornado.web.url(r"/readyz", h.ReadyHandler, {"readiness": node.readiness}),
        tornado.web.url(r"/metrics", h.MetricsHandler, {"metrics": node.metrics}),
        tornado.web.url(
            r"/ws",
            h.ChatSocket,
            {
                "router": node.router,
                "auth": node.auth,
                "readiness": node.readiness,
                "settings": settings,
                "connections": ConnectionCounter(settings.max_sessions_per_user, settings.max_conns_per_ip),
                "session_ids": session_ids,
                "outbox": h.Outbox(),
                "keepalive": h.Keepalive(settings.ping_interval_s),
            },
        ),
    ]
    if settings.dev_login:
        routes.append(tornado.web.url(r"/api/login", h.LoginHandler, {"auth": node.auth}))
    if settings.admin_token:
        routes.append(tornado.web.url(r"/admin", h.AdminPageHandler))
        admin = {"token": settings.admin_token, "cluster_stats": node.registry.cluster_stats}
        routes.append(tornado.web.url(r"/admin/api/cluster", h.AdminApiHandler, admin))
    return tornado.web.Application(
        routes,
        template_path=str(ROOT / "templates"),
        static_path=str(ROOT / "static"),
        default_handler_class=h.NotFoundHandler,
        websocket_max_message_size=settings.max_frame_bytes,
        websocket_ping_interval=0,  # handlers.Keepalive pings every socket from one timer
        compress_response=True,
        log_function=log_request,
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings: ``/ws?token=...`` must never reach a log."""
    status = handler.get_status()
    # 503 is an expected answer (starting, draining, a dependency down): a warning, not an error.
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 or status == 503 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.1fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        1000.0 * request.request_time(),
    )
