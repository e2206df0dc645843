"""The operator's figures in a real Redis: every server seen lately, live or not."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as aioredis

from chatserver.names import Names
from chatserver.redisregistry import RedisRegistry
from chatserver.registry import KNOWN_FOR_S
from tests.integration.conftest import REDIS_URL, _delete_names


@pytest.mark.gen_test
async def test_servers_stay_known_after_they_leave_the_live_set_and_are_forgotten_a_day_later() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    names = Names(prefix)
    client = aioredis.Redis.from_url(REDIS_URL)
    registry = RedisRegistry(client, names, 30)
    try:
        await registry.heartbeat("ws-1", [], live=True)
        await registry.heartbeat("ws-2", [], live=True)
        await registry.publish_stats("ws-1", {"state": "ready", "connections": "3"})
        await registry.publish_stats("ws-2", {"state": "ready"})
        await registry.withdraw("ws-2", [])  # stopped: out of the live set
        await registry.publish_stats("ws-2", {"state": "stopped"})
        stats = await registry.cluster_stats()
        assert stats == {
            "ws-1": {"state": "ready", "connections": "3", "live": "yes"},
            "ws-2": {"state": "stopped", "live": "no"},
        }
        assert await client.pttl(names.server_stats("ws-2")) > (KNOWN_FOR_S - 60) * 1000, "kept a day, not a TTL"
        # Seen last more than a day ago: forgotten at the next publication.
        await client.zadd(names.known_servers(), {"ws-2": int((time.time() - KNOWN_FOR_S - 1) * 1000)})
        await registry.publish_stats("ws-1", {"state": "ready", "connections": "3"})
        assert set(await registry.cluster_stats()) == {"ws-1"}
    finally:
        await client.aclose()
        _delete_names(prefix)
