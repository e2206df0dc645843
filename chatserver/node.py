"""One chat server's life: its parts assembled (``ChatNode``), started, kept alive in the
registry (a heartbeat that survives any failure), asked whether it is ready, and stopped
gracefully.

Start: consume this server's topic (readiness follows once a probe comes back), then heartbeat
the registry: users always, this server as live once ready. Once announced it stays live (so
public messages reach it) while it runs and is not draining, even while its probe stalls; only
readiness and new sessions follow the probe. Stop: refuse new sessions, leave the registry,
close sessions with 1001, let frames under way finish, flush the bus, release connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatserver.accounts import Accounts, AccountStore, MemoryAccountStore
from chatserver.auth import TokenAuthority
from chatserver.build import build_info
from chatserver.bus import Bus
from chatserver.config import Settings
from chatserver.history import History
from chatserver.hub import Hub
from chatserver.limits import Limits
from chatserver.metrics import Metrics
from chatserver.registry import CountedRegistry, Registry, RegistryError
from chatserver.rooms import Rooms
from chatserver.router import Router

log = logging.getLogger(__name__)


class ChatNode:
    """One chat server: hub, router, registry and bus, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        history: History,
        bus: Bus,
        on_close: Callable[[], Awaitable[None]] | None = None,
        limits: Limits | None = None,
        rooms: Rooms | None = None,
        shared_batch: bool = False,
        metrics: Metrics | None = None,
        accounts: AccountStore | None = None,
    ) -> None:
        """``shared_batch``: ``registry`` and ``history`` queue their commands into one
        ``RedisBatch``, so a message's store and route look-up can share a round trip."""
        self.settings = settings
        self.registry = registry
        self.history = history
        self.bus = bus
        self._on_close = on_close
        self.metrics = metrics or Metrics()
        self.auth = TokenAuthority(settings.secret, settings.token_ttl_s, settings.token_leeway_s)
        # Built-in accounts (CHAT_ACCOUNTS=1), over the given store or, without one, this process's.
        self.accounts = Accounts(accounts or MemoryAccountStore()) if settings.accounts else None
        self.hub = Hub()
        self.limits = limits or Limits.from_settings(settings, None)
        self.metrics.consumer_lag.set_function(lambda: float(self.bus.lag()))
        self.metrics.backlog_oldest.set_function(self.limits.backlog.oldest_age_s)
        self.metrics.ready.set_function(lambda: float(self._ready_now()))
        self.metrics.redis_up.set_function(lambda: float(self._announced and not self._heartbeat_error))
        self.metrics.kafka_up.set_function(lambda: float(self.bus.status()[0]))
        self.router = Router(
            settings.server_id,
            self.hub,
            CountedRegistry(registry, self.metrics.count_registry_op),
            history,
            bus,
            self.metrics,
            self.limits,
            rooms,
            presence_max_online=settings.presence_max_online,
            store_and_route_together=shared_batch,
            resume_wait_s=settings.resume_wait_ms / 1000,
            gap_wait_s=settings.gap_wait_ms / 1000,
            auth=self.auth,
        )
        self._draining = False
        self._started = time.time()
        # In the registry's live set, so public messages reach it. Only once ready the first time
        # (its consumer position is then fixed); from then on it stays there while it runs and is
        # not draining, even while its probe stalls: its sessions are open and must get them.
        self._announced = False
        self._heartbeat_error = ""  # why the last heartbeat failed ("" when it did not)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._registry_checked = (0.0, False, "not checked yet")

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

    def stats(self, state: str = "") -> dict[str, str]:
        """This server's figures for the operator page (totals: the page derives rates), and
        what it is: ``state`` (by default ready, draining, or why it is not ready), version,
        start time, the health of Redis and Kafka as this server sees them."""

        def total(counter: Any) -> float:
            return float(
                sum(sample.value for m in counter.collect() for sample in m.samples if sample.name.endswith("_total"))
            )

        ready, reason = self.bus.status()
        build = build_info()
        return {
            "version": build.version,
            "commit": build.commit,
            "started": f"{self._started:.3f}",
            "backlog": f"{self.limits.backlog.oldest_age_s():.3f}",
            "shed": f"{total(self.metrics.messages_shed):.0f}",
            "redis": f"fails: {self._heartbeat_error}" if self._heartbeat_error else "ok",
            "kafka": "ok" if ready else reason,
            "ts": f"{time.time():.3f}",
            "connections": str(len(self.hub)),
            "users": str(len(self.hub.users())),
            "routed": f"{total(self.metrics.messages_routed):.0f}",
            "delivered": f"{total(self.metrics.deliveries):.0f}",
            "errors": f"{total(self.metrics.errors):.0f}",
            "lag": str(self.bus.lag()),
            "state": state or ("draining" if self._draining else ("ready" if ready and self._announced else reason)),
        }

    async def cluster_view(self) -> dict[str, Any]:
        """The operator's view from this server: every known server's figures, users online in
        the cluster (each counted once), and Redis and Kafka as this server sees them.
        Raises ``RegistryError`` when Redis does not answer."""
        servers = await self.registry.cluster_stats()
        users = await self.registry.online_count()
        ready, reason = self.bus.status()
        cluster = {"users": users, "redis": "ok", "kafka": "ok" if ready else reason}
        return {"servers": servers, "cluster": {**cluster, "answered_by": self.settings.server_id}}

    async def _last_word(self, state: str) -> None:
        """While stopping: tell the operator page this server's state, if Redis answers soon."""
        with contextlib.suppress(RegistryError, TimeoutError):
            await asyncio.wait_for(self.registry.publish_stats(self.settings.server_id, self.stats(state)), 1.0)

    def _ready_now(self) -> bool:
        """What readiness() says without asking Redis again (for the ``chat_ready`` gauge)."""
        task = self._heartbeat_task
        alive = task is not None and not task.done()
        return alive and not self._draining and self._announced and not self._heartbeat_error and self.bus.status()[0]

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
        if self._announced:
            await self._last_word("draining")
        await self.router.withdraw()
        with contextlib.suppress(TimeoutError):  # frames under way reach the bus before it is flushed
            await asyncio.wait_for(self.router.quiesce(), timeout=5.0)
        await asyncio.sleep(0.2)  # let close frames go out
        await self.bus.close()
        if self._announced:
            await self._last_word("stopped")
        await self.history.close()
        await self.registry.close()
        if self._on_close is not None:
            await self._on_close()
            self._on_close = None
