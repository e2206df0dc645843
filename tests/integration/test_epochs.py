"""Epochs and the idempotent store on a real Redis: what a client is told after Redis lost data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from chatserver.envelope import Envelope
from chatserver.history import Retention
from chatserver.names import Names
from chatserver.redishistory import RedisHistory
from tests.integration.conftest import REDIS_URL


@asynccontextmanager
async def history() -> AsyncIterator[tuple[RedisHistory, aioredis.Redis, str]]:
    """A history under a prefix of its own, its keys deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"test-epochs-{uuid.uuid4().hex[:8]}-"
    try:
        yield RedisHistory(client, Names(prefix), Retention()), client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def public(i: int) -> Envelope:
    return Envelope(kind="public", id=f"id-{i}", sender="ann", text=f"m{i}", ts=1000 + i)


@pytest.mark.gen_test
async def test_a_channel_keeps_its_epoch_until_its_store_loses_it() -> None:
    async with history() as (h, client, prefix):
        before = (await h.heads(["public"]))["public"]
        assert before.offset == 0 and before.epoch
        stored = await h.store(public(1), None)
        assert stored.offsets == (("public", 1),) and stored.epochs == (("public", before.epoch),)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        await client.delete(*keys)  # Redis restarted without its data
        after = await h.store(public(2), None)
        assert after.offsets == (("public", 1),)  # offsets start over...
        assert dict(after.epochs)["public"] > before.epoch  # ...in a newer epoch


@pytest.mark.gen_test
async def test_a_store_run_twice_stores_once_even_without_a_cid() -> None:
    async with history() as (h, _client, _prefix):
        first = await h.store(public(1), None)
        again = await h.store(public(1), None)  # the same call again: a retried pipeline
        assert (again.offsets, again.duplicate) == (first.offsets, True)
        assert len((await h.after("public", 0, 10))[0]) == 1


@pytest.mark.gen_test
async def test_renewing_an_epoch_happens_once_for_a_stale_one() -> None:
    async with history() as (h, _client, _prefix):
        stale = (await h.heads(["public"]))["public"].epoch
        fresh = await h.renew_epoch("public", stale)
        assert fresh != stale
        assert await h.renew_epoch("public", stale) == fresh  # a second server's renewal: no change
        assert (await h.heads(["public"]))["public"].epoch == fresh


@pytest.mark.gen_test
async def test_find_looks_a_message_up_by_id_and_no_text_can_fake_one() -> None:
    async with history() as (h, _client, _prefix):
        for i in range(1, 4):
            await h.store(public(i), None)
        fake = Envelope(kind="public", id="id-9", sender="eve", text='"id":"id-2"', ts=2000)
        await h.store(fake, None)
        found = await h.find("public", "id-2")
        assert found is not None and (found["offset"], found["text"], found["from"]) == (2, "m2", "ann")
        assert await h.find("public", "id-404") is None
        assert await h.find("room:none", "id-2") is None


@pytest.mark.gen_test
async def test_a_channel_lives_as_long_as_messages_keep_coming() -> None:
    """CHAT_CHANNEL_IDLE_S: every key of a channel (offsets, history, epoch) expires once no
    message came for that long; each message gives them that long again."""
    async with history() as (h, client, prefix):
        h._retention = Retention(idle_s=60)
        await h.heads(["user:ghost"])  # a user who connects and never gets a message
        await h.store(public(1), None)
        for key in [k async for k in client.scan_iter(match=f"{prefix}*chan:*")]:
            assert 0 < await client.pttl(key) <= 60_000, key
        public_keys = [k async for k in client.scan_iter(match=f"{prefix}*chan:public*")]
        assert len(public_keys) == 3, "offsets, history and epoch"
        for key in public_keys:
            await client.pexpire(key, 1_000)  # as if the last message came 59 s ago
        await h.store(public(2), None)
        for key in public_keys:
            assert 1_000 < await client.pttl(key) <= 60_000, f"{key!r}: the next message renews it"
