"""Room membership, cluster-wide: who is in which room.

Membership is durable (a user stays in a room across sessions until they leave). Redis
layout (names from ``Names``): ``chat:room:{room}:members`` and ``chat:user:{user}:rooms``,
two sets kept in step by one transaction.
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from chatserver.names import Names


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


class RedisRooms:
    def __init__(self, client: aioredis.Redis, names: Names) -> None:
        self._redis = client
        self._names = names

    async def join(self, user: str, room: str) -> bool:
        return await self._change("sadd", user, room)

    async def leave(self, user: str, room: str) -> bool:
        return await self._change("srem", user, room)

    async def _change(self, command: str, user: str, room: str) -> bool:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                getattr(pipe, command)(self._names.room_members(room), user)
                getattr(pipe, command)(self._names.user_rooms(user), room)
                changed, _ = await pipe.execute()
        except aioredis.RedisError as exc:
            raise RoomsError(f"redis: {exc}") from exc
        return bool(changed)

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
