"""The account store on a real Redis: a name is taken once, only its hash is kept, and attempts
are counted for all servers together."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
import redis.asyncio as aioredis

from chatserver.accounts import ATTEMPT_WINDOW_S, ATTEMPTS_PER_MINUTE, Accounts, Outcome, RedisAccountStore
from chatserver.names import Names
from tests.integration.conftest import REDIS_URL


@pytest.mark.gen_test(timeout=30)
async def test_accounts_on_redis_keep_a_hash_and_refuse_a_taken_name() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    names = Names(f"test-accounts-{uuid.uuid4().hex[:8]}-")
    accounts = Accounts(RedisAccountStore(client, names))
    try:
        assert await accounts.sign_up("alice", "correct horse", "127.0.0.1") is Outcome.OK
        assert await accounts.sign_up("alice", "another one", "127.0.0.2") is Outcome.TAKEN
        stored = cast(bytes, await client.get(names.account("alice"))).decode()
        assert stored.startswith("$argon2id$") and "correct horse" not in stored
        assert await accounts.sign_in("alice", "correct horse", "127.0.0.3") is Outcome.OK
        assert await accounts.sign_in("alice", "wrong horse", "127.0.0.4") is Outcome.WRONG
    finally:
        await client.delete(names.account("alice"))
        await client.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_attempts_are_counted_across_servers() -> None:
    """Two servers over one Redis: guesses spread over both still meet one limit per account and
    per address, and the counters expire."""
    client = aioredis.Redis.from_url(REDIS_URL)
    names = Names(f"test-accounts-{uuid.uuid4().hex[:8]}-")
    one, two = Accounts(RedisAccountStore(client, names)), Accounts(RedisAccountStore(client, names))
    try:
        assert await one.sign_up("alice", "correct horse", "10.0.0.1") is Outcome.OK
        outcomes = [
            await (one if i % 2 else two).sign_in("alice", f"guess {i}", f"10.0.1.{i}")
            for i in range(ATTEMPTS_PER_MINUTE)
        ]
        assert outcomes == [Outcome.WRONG] * (ATTEMPTS_PER_MINUTE - 1) + [Outcome.LIMITED], "the sign-up counted"
        assert await one.sign_in("alice", "correct horse", "10.0.2.1") is Outcome.LIMITED, "the account is"
        # One address guessing many accounts, over both servers.
        spread = [await (one if i % 2 else two).sign_in(f"u{i}", "guess", "10.0.3.1") for i in range(11)]
        assert spread[:ATTEMPTS_PER_MINUTE] == [Outcome.WRONG] * ATTEMPTS_PER_MINUTE and spread[-1] is Outcome.LIMITED
        ttl = await client.ttl(names.attempts("user:alice"))
        assert 0 < ttl <= ATTEMPT_WINDOW_S
    finally:
        keys = [k async for k in client.scan_iter(match=f"{names.prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
