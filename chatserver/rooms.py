"""Room membership, cluster-wide: who is in which room.

Membership is durable (a user stays in a room across sessions until they leave). Redis
layout (names from ``Names``): ``chat:room:{room}:members`` and ``chat:user:{user}:rooms``,
two sets kept in step by one transaction, and ``chat:rooms``, the rooms that have a member (the
directory; a room leaves it with its last member, in the same script).

On a Redis Cluster the three keys are on the shards of the room, of the user and of the
directory, which no transaction or script spans: a join adds the member first, then the room
to the user's set and to the directory; a leave removes the member first, and a room it empties
leaves the directory, and comes back at once if a join came in meanwhile (the join's member was
added before its directory entry, so the second look sees it). A join or leave that failed
between two steps is completed by doing it again; the directory never lists a room by a member
count it no longer has (``directory`` counts the members each time).
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from chatserver.names import Names
from chatserver.redisroute import Client


class RoomsError(Exception):
    """The membership store could not be reached."""


class Rooms(Protocol):
    async def join(self, user: str, room: str) -> bool:
        """Make ``user`` a member; True if they were not one already."""
        ...

    async def leave(self, user: str, room: str) -> bool:
        """End the membership; True if there was one."""
        ...

    async def is_member(self, user: str, room: str) -> bool: ...

    async def members(self, room: str) -> list[str]:
        """Every member, sorted."""
        ...

    async def rooms_of(self, user: str) -> list[str]:
        """Every room ``user`` is in, sorted."""
        ...

    async def directory(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` rooms with their member counts, most members first, then by name
        (of at most ``DIRECTORY_SCAN`` rooms looked at)."""
        ...


#: How many rooms ``directory`` looks at, at most (one scan, one pipeline).
DIRECTORY_SCAN = 2000

# Leave: both sets, and the room out of the directory when it has no member left (atomic, so a
# join in between cannot be undone). KEYS: room members, user rooms, directory; ARGV: user, room.
_LEAVE_LUA = """
local left = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return left
"""


def _ranked(counts: dict[str, int], limit: int) -> list[tuple[str, int]]:
    return sorted(((r, n) for r, n in counts.items() if n > 0), key=lambda rn: (-rn[1], rn[0]))[:limit]


class RedisRooms:
    def __init__(self, client: Client, names: Names) -> None:
        self._redis = client
        self._names = names
        self._sharded = isinstance(client, RedisCluster)  # MULTI and scripts span one slot only

    async def join(self, user: str, room: str) -> bool:
        if self._sharded:
            return await self._join_sharded(user, room)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(self._names.room_members(room), user)
                pipe.sadd(self._names.user_rooms(user), room)
                pipe.sadd(self._names.rooms_index(), room)
                changed, _, _ = await pipe.execute()
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return bool(changed)

    async def leave(self, user: str, room: str) -> bool:
        if self._sharded:
            return await self._leave_sharded(user, room)
        keys = [self._names.room_members(room), self._names.user_rooms(user), self._names.rooms_index()]
        try:
            left = await self._redis.eval(_LEAVE_LUA, len(keys), *keys, user, room)
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return bool(left)

    async def _join_sharded(self, user: str, room: str) -> bool:
        """A join on a cluster: one step per shard, in this order (see the module docstring)."""
        try:
            changed = await self._redis.sadd(self._names.room_members(room), user)
            await self._redis.sadd(self._names.user_rooms(user), room)
            await self._redis.sadd(self._names.rooms_index(), room)
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return bool(changed)

    async def _leave_sharded(self, user: str, room: str) -> bool:
        """A leave on a cluster: one step per shard (see the module docstring)."""
        members = self._names.room_members(room)
        try:
            left = await self._redis.srem(members, user)
            await self._redis.srem(self._names.user_rooms(user), room)
            if not await self._redis.scard(members):
                await self._redis.srem(self._names.rooms_index(), room)
                if await self._redis.scard(members):  # a join came in meanwhile
                    await self._redis.sadd(self._names.rooms_index(), room)
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return bool(left)

    async def directory(self, limit: int) -> list[tuple[str, int]]:
        try:
            rooms: list[str] = []
            async for found in self._redis.sscan_iter(self._names.rooms_index(), count=500):
                rooms.append(found.decode() if isinstance(found, bytes) else str(found))
                if len(rooms) >= DIRECTORY_SCAN:
                    break
            async with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.scard(self._names.room_members(room))
                counts = await pipe.execute()
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return _ranked(dict(zip(rooms, (int(n) for n in counts), strict=True)), limit)

    async def is_member(self, user: str, room: str) -> bool:
        try:
            return bool(await self._redis.sismember(self._names.room_members(room), user))
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc

    async def members(self, room: str) -> list[str]:
        return await self._set(self._names.room_members(room))

    async def rooms_of(self, user: str) -> list[str]:
        return await self._set(self._names.user_rooms(user))

    async def _set(self, key: str) -> list[str]:
        try:
            found = await self._redis.smembers(key)
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in found)


class MemoryRooms:
    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}

    async def join(self, user: str, room: str) -> bool:
        members = self._members.setdefault(room, set())
        joined = user not in members
        members.add(user)
        return joined

    async def leave(self, user: str, room: str) -> bool:
        members = self._members.get(room, set())
        left = user in members
        members.discard(user)
        return left

    async def is_member(self, user: str, room: str) -> bool:
        return user in self._members.get(room, set())

    async def members(self, room: str) -> list[str]:
        return sorted(self._members.get(room, set()))

    async def rooms_of(self, user: str) -> list[str]:
        return sorted(room for room, members in self._members.items() if user in members)

    async def directory(self, limit: int) -> list[tuple[str, int]]:
        return _ranked({room: len(members) for room, members in self._members.items()}, limit)
