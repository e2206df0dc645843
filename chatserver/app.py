"""Wiring: the only module that knows every part. ``build_node`` assembles one server from its
settings (Redis and Kafka, or in-memory twins); ``make_app`` maps URLs to handlers over it."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import tornado.web
from tornado.routing import URLSpec

from chatserver.accounts import RedisAccountStore
from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.config import Settings
from chatserver.history import MemoryHistory, Retention
from chatserver.kafkabus import KafkaBus
from chatserver.limits import Limits, MemoryUserLimiter, RedisUserLimiter
from chatserver.metrics import Metrics
from chatserver.names import Names
from chatserver.node import ChatNode
from chatserver.redisbatch import RedisBatch
from chatserver.redisclient import CLUSTER_SCHEME, redis_client
from chatserver.redishistory import RedisHistory
from chatserver.redisregistry import RedisRegistry
from chatserver.registry import MemoryRegistry, RegistryError
from chatserver.rooms import MemoryRooms, RedisRooms
from chatserver.web import endpoints, signin, socket
from chatserver.web.outbox import Outbox
from chatserver.web.timers import Deadlines, Keepalive

log = logging.getLogger(__name__)
access_log = logging.getLogger("chatserver.access")

PACKAGE = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """Where the page's ``templates`` or ``static`` folder is, found through this package, never
    the working directory: inside it when installed from a wheel (pyproject.toml maps them there),
    else at the top of the checkout it runs from."""
    packaged = PACKAGE / name
    return packaged if packaged.is_dir() else PACKAGE.parent / name


def build_node(settings: Settings, broker: MemoryBroker | None = None) -> ChatNode:
    """Real Redis and Kafka, or in-memory twins for ``backend == "memory"`` (``broker``: one
    shared by several nodes of one process)."""
    cluster = settings.backend != "memory" and settings.redis_url.startswith(CLUSTER_SCHEME)
    names = Names(settings.name_prefix, hash_tags=cluster)
    retention = Retention(
        settings.history_min, settings.history_max, settings.history_keep_s, settings.dedupe_s, settings.channel_idle_s
    )
    metrics = Metrics()
    if settings.backend == "memory":
        return ChatNode(
            settings,
            MemoryRegistry(settings.session_ttl_s),
            MemoryHistory(retention),
            MemoryBus(broker or MemoryBroker(), settings.server_id),
            limits=Limits.from_settings(settings, MemoryUserLimiter(settings.user_rate_per_s)),
            rooms=MemoryRooms(),
            metrics=metrics,
        )
    client = redis_client(settings.redis_url)
    # Stores and route look-ups of one loop turn: one round trip (one per shard on a cluster).
    batch = RedisBatch(client, wait_replicas=settings.redis_wait_replicas, wait_ms=settings.redis_wait_ms)
    bus = KafkaBus(
        settings.kafka_bootstrap,
        settings.server_id,
        names,
        poll_interval_ms=settings.poll_interval_ms,
        linger_ms=settings.kafka_linger_ms,
        fetch_wait_ms=settings.kafka_fetch_wait_ms,
        fetch_min_bytes=settings.kafka_fetch_min_bytes,
        send_timeout_s=settings.kafka_send_timeout_s,
        batch=settings.kafka_batch,
    )
    return ChatNode(
        settings,
        RedisRegistry(client, names, settings.session_ttl_s, batch=batch),
        RedisHistory(client, names, retention, batch=batch),
        bus,
        on_close=client.aclose,
        limits=Limits.from_settings(settings, RedisUserLimiter(client, names, settings.user_rate_per_s, batch=batch)),
        rooms=RedisRooms(client, names),
        accounts=RedisAccountStore(client, names),
        # One pipeline runs a store before the route look-up queued after it; on a cluster they
        # may go to two nodes, in no order between them: the look-up waits for the store.
        shared_batch=not cluster,
        metrics=metrics,
    )


def make_app(node: ChatNode) -> tornado.web.Application:
    settings = node.settings
    session_ids = itertools.count(1)
    proxies = endpoints.TrustedProxies(settings.trusted_proxies)
    page_signin = endpoints.SignIn(settings.token_url, node.accounts is not None, settings.dev_login)
    routes: list[URLSpec] = [
        tornado.web.url(r"/", endpoints.PageHandler, {"server_id": settings.server_id, "signin": page_signin}),
        tornado.web.url(r"/healthz", endpoints.HealthHandler),
        tornado.web.url(r"/readyz", endpoints.ReadyHandler, {"readiness": node.readiness}),
        tornado.web.url(r"/metrics", endpoints.MetricsHandler, {"metrics": node.metrics}),
        tornado.web.url(
            r"/ws",
            socket.ChatSocket,
            {
                "router": node.router,
                "auth": node.auth,
                "readiness": node.readiness,
                "policy": socket.SocketPolicy(frozenset(settings.allowed_origins), proxies, settings.max_send_buffer),
                "metrics": node.metrics,
                "connections": node.limits.connections,
                "session_ids": session_ids,
                "outbox": Outbox(),
                "keepalive": Keepalive(settings.ping_interval_s),
                "deadlines": Deadlines(),
            },
        ),
    ]
    if settings.dev_login or node.accounts is not None:
        login = {
            "auth": node.auth,
            "dev_login": settings.dev_login,
            "accounts": node.accounts,
            "trusted_proxies": proxies,
        }
        routes.append(tornado.web.url(r"/api/login", signin.LoginHandler, login))
        if node.accounts is not None:
            routes.append(tornado.web.url(r"/api/signup", signin.SignupHandler, login))
    if settings.admin_token:
        routes.append(tornado.web.url(r"/admin", endpoints.AdminPageHandler))

        async def cluster_view() -> dict[str, Any]:
            try:
                return await node.cluster_view()
            except RegistryError as exc:
                raise endpoints.Unavailable(str(exc)) from exc

        admin = {"token": settings.admin_token, "cluster_view": cluster_view}
        routes.append(tornado.web.url(r"/admin/api/cluster", endpoints.AdminApiHandler, admin))
    return tornado.web.Application(
        routes,
        template_path=str(asset_dir("templates")),
        static_path=str(asset_dir("static")),
        static_handler_class=endpoints.StaticFiles,
        default_handler_class=endpoints.NotFoundHandler,
        websocket_max_message_size=settings.max_frame_bytes,
        websocket_ping_interval=0,  # timers.Keepalive pings every socket from one timer
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
