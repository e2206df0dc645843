"""The Redis client of a server, from ``REDIS_URL``: a single Redis, the master that Sentinel
names (``redis+sentinel://``), or a Redis Cluster (``redis+cluster://``). Connections that Redis
closed are replaced and their command sent again; a command that may have run is never sent
twice."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from chatserver.redisroute import Client

SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"


def _options() -> dict[str, Any]:
    # A pooled connection that Redis closed (a restart) fails on first use: retry such a command
    # on a fresh connection. Only connection errors, not timeouts: a command that may have run is
    # not repeated. redis-py's Retry retries TimeoutError unless told otherwise (retry_on_error
    # only adds to its supported_errors), so they are named here. The RedisBatch, which carries
    # every message store, never re-sends a pipeline it wrote, whatever this policy says.
    return {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
    }


def _hosts(url: str, netloc: str) -> list[tuple[str, int]]:
    try:
        hosts = [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in netloc.split(",") if item)]
    except ValueError:
        hosts = []
    if not hosts:
        raise ValueError(f"REDIS_URL={url!r}: name at least one host:port")
    return hosts


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, the rest) of ``[[user]:password@]rest`` (``password@``: no user)."""
    if "@" not in netloc:
        return None, None, netloc
    credentials, rest = netloc.rsplit("@", 1)
    user = credentials.split(":", 1)[0] if ":" in credentials else ""
    return user or None, credentials.split(":", 1)[-1] or None, rest


def redis_client(url: str) -> Client:
    """A client for ``redis://...`` (or ``rediss://``); for the master that Sentinel names:
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``; or for a Redis
    Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]`` (any of its nodes;
    the client learns the others and follows failovers)."""
    options = _options()
    if url.startswith(CLUSTER_SCHEME):
        rest, _, query = url[len(CLUSTER_SCHEME) :].partition("?")
        if query:
            raise ValueError(f"REDIS_URL={url!r}: redis+cluster:// takes no ?options (give the nodes only)")
        netloc, _, path = rest.partition("/")
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"REDIS_URL={url!r}: a Redis Cluster has database 0 only")
        username, password, netloc = _credentials(netloc)
        nodes = [ClusterNode(host, port) for host, port in _hosts(url, netloc)]
        cluster: RedisCluster = RedisCluster(
            startup_nodes=nodes, username=username, password=password, health_check_interval=10, **options
        )
        return cluster
    if not url.startswith(SENTINEL_SCHEME):
        direct: aioredis.Redis = aioredis.Redis.from_url(url, health_check_interval=10, **options)
        return direct
    netloc, _, path = url[len(SENTINEL_SCHEME) :].partition("/")
    _, password, netloc = _credentials(netloc)
    service, _, db = path.partition("/")
    if not service:
        raise ValueError(f"REDIS_URL={url!r}: use redis+sentinel://host:port[,host:port]/service[/db]")
    hosts = _hosts(url, netloc)
    sentinel = Sentinel(hosts, sentinel_kwargs=options, password=password, **options)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(service, db=int(db or 0))
    return master
