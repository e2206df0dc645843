"""The account store on a real Redis: a name is taken once, and only its hash is kept."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
import redis.asyncio as aioredis

from chatserver.accounts import Accounts, Outcome, RedisAccountStore
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
