"""RedisBatch against a real Redis: one pipeline per loop turn, each caller its own reply."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatserver.redisbatch import RedisBatch
from tests.integration.conftest import REDIS_URL

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.mark.gen_test
async def test_commands_of_one_turn_share_a_pipeline_and_keep_their_order() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    key = f"test:batch:{uuid.uuid4().hex}"
    batch = RedisBatch(client)
    try:
        replies = await asyncio.gather(*(batch.execute("RPUSH", key, str(i)) for i in range(50)))
        assert replies == list(range(1, 51))
        assert batch.pipelines == 1 and batch.commands == 50
        assert await client.lrange(key, 0, -1) == [str(i).encode() for i in range(50)]
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.gen_test
async def test_a_failing_command_fails_alone() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    key = f"test:batch:{uuid.uuid4().hex}"
    batch = RedisBatch(client)
    try:
        await client.set(key, "text")
        good, bad = batch.execute("GET", key), batch.execute("INCR", key)
        assert await good == b"text"
        with pytest.raises(ResponseError):
            await bad
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.gen_test
async def test_a_script_unknown_to_redis_is_loaded_and_run() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    key = f"test:batch:{uuid.uuid4().hex}"
    batch = RedisBatch(client)
    try:
        await client.script_flush()  # as after a Redis restart without persistence of scripts
        assert await batch.evalsha(SCRIPT, [key], [5]) == 5
        assert await batch.evalsha(SCRIPT, [key], [2]) == 7
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.gen_test
async def test_every_caller_hears_of_a_connection_that_cannot_be_made() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    batch = RedisBatch(client)
    try:
        results = await asyncio.gather(batch.execute("GET", "a"), batch.execute("GET", "b"), return_exceptions=True)
        assert all(isinstance(r, aioredis.ConnectionError) for r in results), results
    finally:
        await client.aclose()
