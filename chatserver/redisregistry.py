"""The registry in Redis (contract: ``registry.Registry``), shared by every server of the cluster.

Redis layout (names from ``Names``): ``chat:user:{user}:servers`` is a sorted set of server
ids scored by expiry time in ms; the key itself expires too, so idle users leave nothing
behind. ``chat:servers`` is the same for live servers. Reads ignore expired members;
heartbeats prune them. No ``KEYS``/``SCAN`` anywhere on the message path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Coroutine, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from chatserver.names import Names
from chatserver.redisbatch import RedisBatch, replies_of
from chatserver.redisroute import Client
from chatserver.registry import KNOWN_FOR_S, SWEEP_PAGE, Clock, RegistryError

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

    def servers_of(self, users: Sequence[str]) -> Coroutine[Any, Any, dict[str, set[str]]]:
        """One grouped script call: the route look-ups of a loop turn are one EVAL. On one Redis
        it is queued now (see ``Registry.servers_of``); on a cluster, once awaited."""
        keys = [self._names.user_servers(u) for u in users]
        now = [self._now_ms()]
        if not users or self._batch.sharded:
            return self._servers_of_each(users, keys, now)
        return self._routes(users, self._batch.group("servers_of", _SERVERS_OF_LUA, keys, now))

    async def _servers_of_each(self, users: Sequence[str], keys: list[str], now: list[int]) -> dict[str, set[str]]:
        """One call per user, each on its own (on a cluster users are on many shards); none
        for no user."""
        calls = [self._batch.group("servers_of", _SERVERS_OF_LUA, [key], now) for key in keys]
        try:
            replies = [found for [found] in await replies_of(calls)]
        except Exception as exc:  # as _all: whatever the batch failed with
            raise RegistryError(f"redis: {exc}") from exc
        return {user: {s.decode() for s in reply} for user, reply in zip(users, replies, strict=True)}

    @staticmethod
    async def _routes(users: Sequence[str], call: asyncio.Future[Any]) -> dict[str, set[str]]:
        try:
            replies = await call
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
