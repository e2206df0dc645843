"""Where users are: user -> the servers holding their sessions, and which servers are live.

Every entry carries an expiry. A server refreshes its entries by heartbeat; when it dies
without saying goodbye its entries simply expire, so nothing routes to it for long.

Redis layout (names from ``Names``): ``chat:user:{user}:servers`` is a sorted set of server
ids scored by expiry time in ms; the key itself expires too, so idle users leave nothing
behind. ``chat:servers`` is the same for live servers. Reads ignore expired members;
heartbeats prune them. No ``KEYS``/``SCAN`` anywhere on the message path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from chatserver.names import Names
from chatserver.redisbatch import RedisBatch, replies_of
from chatserver.redisroute import Client

Clock = Callable[[], float]


#: Users one ``sweep_offline`` call returns at most; a full page means a crowd left at once.
SWEEP_PAGE = 200
#: How long the operator page remembers a server that stopped publishing its figures (dead or stopped).
KNOWN_FOR_S = 24 * 3600


class RegistryError(Exception):
    """The registry could not be reached or answered badly."""


class Registry(Protocol):
    async def add(self, user: str, server_id: str) -> None:
        """Record that ``server_id`` holds at least one session of ``user``."""

    async def remove(self, user: str, server_id: str) -> None:
        """``server_id`` holds no session of ``user`` any more."""

    async def servers_of(self, users: Sequence[str]) -> dict[str, set[str]]:
        """For each user, the live servers holding their sessions (one round trip)."""
        ...

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        """Refresh this server's entries; ``live`` also (re)announces it as consuming."""

    async def withdraw(self, server_id: str, users: Iterable[str]) -> None:
        """Remove this server and its users' entries at once (graceful stop)."""

    async def live_servers(self) -> set[str]:
        """Servers that announced themselves and have not expired."""
        ...

    async def online(self, limit: int) -> list[str]:
        """Up to ``limit`` users with a session somewhere, sorted."""
        ...

    async def online_count(self) -> int:
        """How many users have a session somewhere."""
        ...

    async def went_offline(self, user: str) -> bool:
        """After this server dropped ``user``: True (once, cluster-wide) if no server holds them."""
        ...

    async def sweep_offline(self) -> list[str]:
        """Users whose every server died without a goodbye, at most ``SWEEP_PAGE`` per call;
        each is returned by one caller only."""
        ...

    async def publish_stats(self, server_id: str, stats: dict[str, str]) -> None:
        """Record this server's figures for the operator page (kept ``KNOWN_FOR_S``)."""

    async def cluster_stats(self) -> dict[str, dict[str, str]]:
        """The latest figures of every server seen within ``KNOWN_FOR_S``, live or not: each
        with ``live`` ("yes" while in the live set, else "no")."""
        ...

    async def ping(self) -> None:
        """Raise ``RegistryError`` unless the backing store answers."""

    async def close(self) -> None: ...


# KEYS: the server sets of some users. ARGV: now (ms). Answers each user's live servers.
_SERVERS_OF_LUA = """
local found = {}
for i = 1, #KEYS do found[i] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf') end
return found
"""


class RedisRegistry:
    """The registry in Redis, shared by every server of the cluster."""

    _BATCH = 500  # users per pipeline in a heartbeat

    def __init__(
        self,
        client: Client,
        names: Names,
        ttl_s: float,
        clock: Clock = time.time,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = client
        self._names = names
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self._batch = batch or RedisBatch(client)  # look-ups of one loop turn share a round trip

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # Sessions opening and closing go through the batch too: thousands of clients leaving at
    # once (a proxy restart) are a few pipelines, not thousands of pooled connections.

    async def add(self, user: str, server_id: str) -> None:
        key = self._names.user_servers(user)
        expiry = self._now_ms() + self._ttl_ms
        await self._all(
            ("ZADD", key, expiry, server_id),
            ("PEXPIRE", key, self._ttl_ms),
            ("ZADD", self._names.online(), "GT", expiry, user),
        )

    async def remove(self, user: str, server_id: str) -> None:
        await self._all(("ZREM", self._names.user_servers(user), server_id))

    async def _all(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run ``commands`` through the batch; RegistryError if any failed."""
        replies = await asyncio.gather(*(self._batch.execute(*c) for c in commands), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise RegistryError(f"redis: {reply}") from reply
        return replies

    async def servers_of(self, users: Sequence[str]) -> dict[str, set[str]]:
        """One grouped script call: the route look-ups of a loop turn are one EVAL."""
        if not users:
            return {}
        keys = [self._names.user_servers(u) for u in users]
        now = [self._now_ms()]
        try:
            if self._batch.sharded:  # users are on many shards: one call per user, each on its own
                calls = [self._batch.group("servers_of", _SERVERS_OF_LUA, [key], now) for key in keys]
                replies = [found for [found] in await replies_of(calls)]
            else:
                replies = await self._batch.group("servers_of", _SERVERS_OF_LUA, keys, now)
        except Exception as exc:  # as _all: whatever the batch failed with
            raise RegistryError(f"redis: {exc}") from exc
        return {user: {s.decode() for s in reply} for user, reply in zip(users, replies, strict=True)}

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        now = self._now_ms()
        expiry = now + self._ttl_ms
        batch = list(users)
        try:
            for start in range(0, max(len(batch), 1), self._BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    if start == 0:
                        servers = self._names.live_servers()
                        if live:
                            pipe.zadd(servers, {server_id: expiry})
                        pipe.zremrangebyscore(servers, "-inf", now)
                    chunk = batch[start : start + self._BATCH]
                    if chunk:
                        pipe.zadd(self._names.online(), dict.fromkeys(chunk, expiry), gt=True)
                    for user in chunk:
                        key = self._names.user_servers(user)
                        pipe.zadd(key, {server_id: expiry})
                        pipe.zremrangebyscore(key, "-inf", now)
                        pipe.pexpire(key, self._ttl_ms)
                    await pipe.execute()
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def withdraw(self, server_id: str, users: Iterable[str]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self._names.live_servers(), server_id)
                for user in users:
                    pipe.zrem(self._names.user_servers(user), server_id)
                await pipe.execute()
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def live_servers(self) -> set[str]:
        try:
            members = await self._redis.zrangebyscore(self._names.live_servers(), self._now_ms(), "+inf")
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc
        return {m.decode() for m in cast(list[bytes], members)}

    async def online(self, limit: int) -> list[str]:
        try:
            found = await self._redis.zrangebyscore(self._names.online(), self._now_ms(), "+inf", start=0, num=limit)
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc
        return sorted(m.decode() for m in cast(list[bytes], found))

    async def online_count(self) -> int:
        try:
            return int(await self._redis.zcount(self._names.online(), self._now_ms(), "+inf"))
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def went_offline(self, user: str) -> bool:
        if (await self.servers_of([user]))[user]:
            return False
        [removed] = await self._all(("ZREM", self._names.online(), user))
        return bool(removed)

    async def sweep_offline(self) -> list[str]:
        try:
            expired = await self._redis.zrangebyscore(
                self._names.online(), "-inf", self._now_ms(), start=0, num=SWEEP_PAGE
            )
            gone = []
            for member in cast(list[bytes], expired):
                if await self._redis.zrem(self._names.online(), member):  # only one server wins
                    gone.append(member.decode())
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc
        return gone

    async def publish_stats(self, server_id: str, stats: dict[str, str]) -> None:
        key, now_ms = self._names.server_stats(server_id), int(time.time() * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=cast(Any, stats))
                pipe.pexpire(key, KNOWN_FOR_S * 1000)
                pipe.zadd(self._names.known_servers(), {server_id: now_ms})
                pipe.zremrangebyscore(self._names.known_servers(), 0, now_ms - KNOWN_FOR_S * 1000)
                await pipe.execute()
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def cluster_stats(self) -> dict[str, dict[str, str]]:
        live = await self.live_servers()
        try:
            members = cast(list[bytes], await self._redis.zrange(self._names.known_servers(), 0, -1))
            known = sorted(m.decode() for m in members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for server in known:
                    pipe.hgetall(self._names.server_stats(server))
                replies = await pipe.execute()
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc
        return {
            server: {**{k.decode(): v.decode() for k, v in reply.items()}, "live": "yes" if server in live else "no"}
            for server, reply in zip(known, replies, strict=True)
            if reply or server in live
        }

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except aioredis.RedisError as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def close(self) -> None:
        return None  # the client belongs to whoever created it


class MemoryRegistry:
    """The registry in this process: the single-node default and the test fake.

    One instance may be shared by several in-process servers to model a cluster.
    """

    def __init__(self, ttl_s: float, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._users: dict[str, dict[str, float]] = {}
        self._servers: dict[str, float] = {}
        self._online: dict[str, float] = {}
        self._stats: dict[str, dict[str, str]] = {}

    async def add(self, user: str, server_id: str) -> None:
        expiry = self._clock() + self._ttl_s
        self._users.setdefault(user, {})[server_id] = expiry
        self._online[user] = max(self._online.get(user, 0.0), expiry)

    async def remove(self, user: str, server_id: str) -> None:
        entries = self._users.get(user)
        if entries is not None:
            entries.pop(server_id, None)
            if not entries:
                del self._users[user]

    async def servers_of(self, users: Sequence[str]) -> dict[str, set[str]]:
        now = self._clock()
        return {u: {s for s, exp in self._users.get(u, {}).items() if exp > now} for u in users}

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        expiry = self._clock() + self._ttl_s
        if live:
            self._servers[server_id] = expiry
        for user in users:
            self._users.setdefault(user, {})[server_id] = expiry
            self._online[user] = max(self._online.get(user, 0.0), expiry)

    async def withdraw(self, server_id: str, users: Iterable[str]) -> None:
        self._servers.pop(server_id, None)
        for user in users:
            await self.remove(user, server_id)

    async def live_servers(self) -> set[str]:
        now = self._clock()
        return {s for s, exp in self._servers.items() if exp > now}

    async def online(self, limit: int) -> list[str]:
        now = self._clock()
        return sorted(u for u, exp in self._online.items() if exp > now)[:limit]

    async def online_count(self) -> int:
        now = self._clock()
        return sum(1 for exp in self._online.values() if exp > now)

    async def went_offline(self, user: str) -> bool:
        if (await self.servers_of([user]))[user]:
            return False
        return self._online.pop(user, None) is not None

    async def sweep_offline(self) -> list[str]:
        now = self._clock()
        gone = [u for u, exp in self._online.items() if exp <= now][:SWEEP_PAGE]
        for user in gone:
            del self._online[user]
        return gone

    async def publish_stats(self, server_id: str, stats: dict[str, str]) -> None:
        self._stats[server_id] = dict(stats)

    async def cluster_stats(self) -> dict[str, dict[str, str]]:
        live = await self.live_servers()
        known = sorted({*self._stats, *live})
        return {s: {**self._stats.get(s, {}), "live": "yes" if s in live else "no"} for s in known}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class CountedRegistry:
    """Any ``Registry``, with every call counted by operation (``chat_registry_ops_total``)."""

    def __init__(self, inner: Registry, count: Callable[[str], None]) -> None:
        self._inner = inner
        self._count = count

    async def add(self, user: str, server_id: str) -> None:
        self._count("add")
        await self._inner.add(user, server_id)

    async def remove(self, user: str, server_id: str) -> None:
        self._count("remove")
        await self._inner.remove(user, server_id)

    async def servers_of(self, users: Sequence[str]) -> dict[str, set[str]]:
        self._count("servers_of")
        return await self._inner.servers_of(users)

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        self._count("heartbeat")
        await self._inner.heartbeat(server_id, users, live)

    async def withdraw(self, server_id: str, users: Iterable[str]) -> None:
        self._count("withdraw")
        await self._inner.withdraw(server_id, users)

    async def live_servers(self) -> set[str]:
        self._count("live_servers")
        return await self._inner.live_servers()

    async def online(self, limit: int) -> list[str]:
        self._count("online")
        return await self._inner.online(limit)

    async def online_count(self) -> int:
        self._count("online_count")
        return await self._inner.online_count()

    async def went_offline(self, user: str) -> bool:
        self._count("went_offline")
        return await self._inner.went_offline(user)

    async def sweep_offline(self) -> list[str]:
        self._count("sweep_offline")
        return await self._inner.sweep_offline()

    async def publish_stats(self, server_id: str, stats: dict[str, str]) -> None:
        self._count("publish_stats")
        await self._inner.publish_stats(server_id, stats)

    async def cluster_stats(self) -> dict[str, dict[str, str]]:
        self._count("cluster_stats")
        return await self._inner.cluster_stats()

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        await self._inner.close()
