"""Nothing lost, over the real Kafka and Redis: history, offline delivery, resume, offsets."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from chatserver.history import Retention
from chatserver.names import Names
from chatserver.redishistory import RedisHistory
from tests.chatclient import ChatClient
from tests.integration.conftest import REDIS_URL, RealCluster
from tests.unit import test_history as contract


async def connect(cluster: RealCluster, n: int, user: str) -> tuple[ChatClient, dict[str, int]]:
    client, welcome = await cluster.connect(n, user)
    return client, welcome["positions"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "check",
    [*contract.CHECKS, contract.check_retention_keeps_the_newest],
)
async def test_the_history_contract_holds_on_redis(check) -> None:  # type: ignore[no-untyped-def]
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"h{uuid.uuid4().hex[:8]}-"
    retention = Retention(min_keep=5, max_keep=100, keep_s=60) if "retention" in check.__name__ else Retention()
    try:
        await check(RedisHistory(client, Names(prefix), retention))
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_messages_to_an_offline_user_are_acked_kept_and_readable_on_return(cluster: RealCluster) -> None:
    alice, _ = await connect(cluster, 1, "al10")
    for i in range(3):
        await alice.send({"type": "private", "to": "carl10", "text": f"while you were out {i}", "cid": f"c{i}"})
    acks = [await alice.recv_type("ack") for _ in range(3)]
    carl, positions = await connect(cluster, 2, "carl10")
    assert positions["user:carl10"] == 3
    await carl.send({"type": "history", "channel": "user:carl10", "cid": "h"})
    page = await carl.recv_type("history")
    assert [m["text"] for m in page["messages"]] == [f"while you were out {i}" for i in range(3)]
    assert [m["id"] for m in page["messages"]] == [a["id"] for a in acks]
    assert [m["offset"] for m in page["messages"]] == [1, 2, 3]


@pytest.mark.gen_test(timeout=30)
async def test_a_client_reconnecting_to_the_other_server_resumes_what_it_missed(cluster: RealCluster) -> None:
    alice, _ = await connect(cluster, 1, "al11")
    bob, _ = await connect(cluster, 2, "bob11")
    await alice.send({"type": "private", "to": "bob11", "text": "first"})
    first = await bob.recv_type("message")
    bob.close()
    for text in ("second", "third"):
        await alice.send({"type": "private", "to": "bob11", "text": text, "cid": text})
        await alice.recv_type("ack")
    bob, _ = await connect(cluster, 1, "bob11")  # another server now
    await bob.send({"type": "resume", "positions": {"user:bob11": first["offset"]}, "cid": "r"})
    replay = [await bob.recv_type("message"), await bob.recv_type("message")]
    assert [m["text"] for m in replay] == ["second", "third"]
    assert [m["offset"] for m in replay] == [first["offset"] + 1, first["offset"] + 2]
    resumed = await bob.recv_type("resumed")
    assert (resumed["recovered"], resumed["cid"], resumed["positions"]) == (
        True,
        "r",
        {"user:bob11": first["offset"] + 2},
    )
    await alice.send({"type": "private", "to": "bob11", "text": "live again"})
    assert (await bob.recv_type("message"))["text"] == "live again"


@pytest.mark.gen_test(timeout=30)
async def test_history_pages_backwards_and_refuses_other_users_channels(cluster: RealCluster) -> None:
    alice, _ = await connect(cluster, 1, "al12")
    for i in range(5):
        await alice.send({"type": "private", "to": "al12", "text": f"note {i}", "cid": f"n{i}"})
        await alice.recv_type("ack")
    await alice.send({"type": "history", "channel": "user:al12", "limit": 2})
    newest = (await alice.recv_type("history"))["messages"]
    assert [m["text"] for m in newest] == ["note 3", "note 4"]
    await alice.send({"type": "history", "channel": "user:al12", "before": newest[0]["offset"], "limit": 10})
    assert [m["text"] for m in (await alice.recv_type("history"))["messages"]] == ["note 0", "note 1", "note 2"]
    await alice.send({"type": "history", "channel": "user:someone-else", "cid": "x"})
    err = await alice.recv_type("error")
    assert (err["code"], err["cid"]) == ("forbidden", "x")


@pytest.mark.gen_test(timeout=60)
async def test_offsets_stay_contiguous_under_concurrent_senders_on_both_servers(cluster: RealCluster) -> None:
    watcher, positions = await connect(cluster, 1, "watch13")
    base = positions["public"]
    senders = [(await connect(cluster, 1 + i % 2, f"send13-{i}"))[0] for i in range(4)]
    per_sender = 25

    async def send_all(i: int, client: ChatClient) -> list[str]:
        for k in range(per_sender):
            await client.send({"type": "public", "text": f"s{i}-{k}", "cid": f"{i}-{k}"})
        return [(await client.recv_type("ack", timeout=15))["id"] for _ in range(per_sender)]

    acked = await asyncio.gather(*(send_all(i, c) for i, c in enumerate(senders)))
    ids = {mid for ids in acked for mid in ids}
    seen: list[dict[str, Any]] = []
    while len(seen) < len(ids):
        frame = await watcher.recv_until(lambda f: f["type"] == "message" and f["id"] in ids, timeout=15)
        seen.append(frame)
    assert len({m["id"] for m in seen}) == len(seen) == 4 * per_sender, "each message once"
    assert sorted(m["offset"] for m in seen) == list(range(base + 1, base + 1 + 4 * per_sender))
    for i in range(4):  # each sender's messages arrive in the order they were sent
        mine = [m["text"] for m in seen if m["text"].startswith(f"s{i}-")]
        assert mine == [f"s{i}-{k}" for k in range(per_sender)]
