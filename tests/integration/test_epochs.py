"""Epochs and the idempotent store on a real Redis: what a client is told after Redis lost data."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from chatserver.envelope import Envelope
from chatserver.history import Clock, Retention, new_epoch
from chatserver.names import Names
from chatserver.redishistory import RedisHistory
from tests.integration.conftest import REDIS_URL


@asynccontextmanager
async def history(clock: Clock = time.time) -> AsyncIterator[tuple[RedisHistory, aioredis.Redis, str]]:
    """A history under a prefix of its own (on a server whose clock is ``clock``), its keys
    deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"test-epochs-{uuid.uuid4().hex[:8]}-"
    try:
        yield RedisHistory(client, Names(prefix), Retention(), clock), client, prefix
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


@pytest.mark.gen_test
async def test_after_redis_lost_a_channel_the_new_epoch_sorts_above_one_made_by_a_server_whose_clock_is_ahead() -> None:
    """Servers' clocks differ; a server that sees two epochs keeps the higher one and drops the
    lower one's messages as late. So the epoch made after the loss must be the higher one,
    whichever server's clock made the first."""
    async with history(clock=lambda: time.time() + 3600) as (ahead, client, prefix):
        before = dict((await ahead.store(public(1), None)).epochs)["public"]
        await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")])  # Redis lost it
        behind = RedisHistory(client, Names(prefix), Retention())  # another server, its clock right
        after = dict((await behind.store(public(2), None)).epochs)["public"]
        assert after > before


@pytest.mark.gen_test
async def test_a_renewed_epoch_sorts_above_the_stale_one_whatever_made_it() -> None:
    async with history() as (h, client, prefix):
        await h.store(public(1), None)
        stale = new_epoch(lambda: time.time() + 3600)  # made by a clock an hour ahead
        await client.set(Names(prefix).channel_epoch("public"), stale)
        for _ in range(20):  # random bits alone would put about half of the renewals below
            fresh = await h.renew_epoch("public", stale)
            assert fresh > stale
            stale = fresh
