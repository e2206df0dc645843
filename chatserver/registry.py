"""Where users are: user -> the servers holding their sessions, and which servers are live.

Every entry carries an expiry. A server refreshes its entries by heartbeat; when it dies
without saying goodbye its entries simply expire, so nothing routes to it for long.

The Redis implementation is ``redisregistry.RedisRegistry``; ``MemoryRegistry`` here is its
in-process twin, and ``CountedRegistry`` counts the calls of either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from typing import Any, Protocol

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
        """For each user, the live servers holding their sessions (one round trip). On one
        Redis the look-up is queued when this is called, as ``History.store``."""
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

    def servers_of(self, users: Sequence[str]) -> Coroutine[Any, Any, dict[str, set[str]]]:
        self._count("servers_of")
        return self._inner.servers_of(users)  # as the inner one: queued now, if it queues

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
