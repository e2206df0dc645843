"""Room membership on a real Redis: the directory follows joins and leaves, and a room leaves it
with its last member."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from chatserver.names import Names
from chatserver.rooms import RedisRooms
from tests.integration.conftest import REDIS_URL


@pytest.mark.gen_test(timeout=30)
async def test_the_rooms_directory_on_redis_counts_members_and_forgets_empty_rooms() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    names = Names(f"test-rooms-{uuid.uuid4().hex[:8]}-")
    rooms = RedisRooms(client, names)
    try:
        assert await rooms.directory(10) == []
        assert await rooms.join("ann", "club") and await rooms.join("ben", "club")
        assert not await rooms.join("ben", "club")  # already a member: nothing changes
        assert await rooms.join("cy", "quiet")
        assert await rooms.directory(10) == [("club", 2), ("quiet", 1)]
        assert await rooms.directory(1) == [("club", 2)]
        assert await rooms.leave("cy", "quiet") and not await rooms.leave("cy", "quiet")
        assert await rooms.directory(10) == [("club", 2)]
        assert not await client.sismember(names.rooms_index(), "quiet")  # the last member took it along
        assert await rooms.rooms_of("ben") == ["club"] and await rooms.members("club") == ["ann", "ben"]
    finally:
        keys = [names.rooms_index(), *(names.room_members(r) for r in ("club", "quiet"))]
        await client.delete(*keys, *(names.user_rooms(u) for u in ("ann", "ben", "cy")))
        await client.aclose()
