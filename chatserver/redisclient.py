"""The Redis client of a server, from ``REDIS_URL``: a single Redis, or the master that Sentinel
names (``redis+sentinel://``). Connections that Redis closed are replaced and their command sent
again; a command that may have run is never sent twice."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

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
