"""Every Redis part on a real Redis Cluster (``redis_cluster``: six nodes of their own), which
refuses what a single Redis lets pass: a command or script whose keys span hash slots."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

import tests.unit.test_history as contract
from chatserver.envelope import Envelope
from chatserver.history import Retention
from chatserver.limits import RedisUserLimiter
from chatserver.names import Names
from chatserver.redisbatch import RedisBatch
from chatserver.redisclient import redis_client
from chatserver.redishistory import RedisHistory
from chatserver.redisregistry import RedisRegistry
from chatserver.redisroute import NotReplicated
from chatserver.rooms import RedisRooms
from tests.integration.conftest import RealCluster, new_cluster
from tests.integration.hastack import (
    RedisClusterNodes,
    cluster_roles,
    lib_env,
    pid_of,
    run_lib,
    start_redis_cluster,
)

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@asynccontextmanager
async def on_cluster(nodes: RedisClusterNodes) -> AsyncIterator[tuple[RedisCluster, RedisBatch, Names]]:
    client = redis_client(nodes.url)
    assert isinstance(client, RedisCluster)
    try:
        yield client, RedisBatch(client), Names(f"t{uuid.uuid4().hex[:8]}-", hash_tags=True)
    finally:
        await client.aclose()


def evals(nodes: RedisClusterNodes) -> int:
    """EVAL calls so far, on every node of the cluster."""
    total = 0
    for port in nodes.ports:
        stats = redis.Redis(port=port).info("commandstats")
        total += int(stats.get("cmdstat_eval", {}).get("calls", 0))
    return total


@pytest.mark.gen_test(timeout=30)
async def test_the_cluster_refuses_a_cross_slot_script_that_a_single_redis_would_run(
    redis_cluster: RedisClusterNodes,
) -> None:
    async with on_cluster(redis_cluster) as (_, batch, _):
        node = redis.Redis(port=redis_cluster.ports[0])
        with pytest.raises(redis.exceptions.ResponseError, match="hash to the same slot"):
            node.eval(SCRIPT, 2, "a", "b", 1)  # what a single Redis would run
        node.close()
        with pytest.raises(ValueError, match="hash slots"):
            batch.group("incr", SCRIPT, ["a", "b"], [1])  # caught before it reaches Redis


@pytest.mark.gen_test(timeout=30)
async def test_a_turn_of_grouped_calls_is_one_script_call_per_hash_slot_each_with_its_reply(
    redis_cluster: RedisClusterNodes,
) -> None:
    async with on_cluster(redis_cluster) as (client, batch, names):
        tags = ["alpha", "beta", "gamma"]  # three hash slots, on three masters or fewer
        keys = [f"{names.prefix}{{{tag}}}:{i}" for tag in tags for i in range(10)]
        before = evals(redis_cluster)
        replies = await asyncio.gather(*(batch.group("incr", SCRIPT, [key], [n + 1]) for n, key in enumerate(keys)))
        assert replies == [n + 1 for n in range(len(keys))], "each call gets its own reply"
        assert evals(redis_cluster) - before == len(tags), "one EVAL per hash slot of the turn"
        assert batch.pipelines == 1
        assert [int(v or 0) for v in await asyncio.gather(*(client.get(k) for k in keys))] == replies


@pytest.mark.gen_test(timeout=30)
async def test_commands_for_every_shard_in_one_turn_each_get_their_reply_in_order(
    redis_cluster: RedisClusterNodes,
) -> None:
    async with on_cluster(redis_cluster) as (client, batch, names):
        keys = [f"{names.prefix}list:{i}" for i in range(40)]  # spread over the three masters
        await client.initialize()
        assert len({client.nodes_manager.get_node_from_slot(client.keyslot(k)).name for k in keys}) == 3
        calls = [batch.execute("RPUSH", key, str(n)) for key in keys for n in range(3)]
        assert await asyncio.gather(*calls) == [1, 2, 3] * len(keys)
        for key in keys:
            assert await client.lrange(key, 0, -1) == [b"0", b"1", b"2"], "a node's commands keep their order"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("check", contract.CHECKS)
async def test_the_history_contract_holds_on_a_cluster(redis_cluster: RedisClusterNodes, check: Any) -> None:
    async with on_cluster(redis_cluster) as (client, batch, names):
        await check(RedisHistory(client, names, Retention(), batch=batch))


@pytest.mark.gen_test(timeout=30)
async def test_a_retry_after_a_store_in_one_channel_only_fills_the_other_and_doubles_nothing(
    redis_cluster: RedisClusterNodes,
) -> None:
    async with on_cluster(redis_cluster) as (client, batch, names):
        history = RedisHistory(client, names, Retention(), batch=batch)
        first = contract.private(1)
        assert client.keyslot(names.channel_log("user:alice")) != client.keyslot(names.channel_log("user:bob"))
        # What a server that died between the two stores left: the message in user:alice only
        # (the first channel in sorted order), under its sent key there.
        sent = names.channel_sent("user:alice", "alice", "fp-1")
        await history._store(first, "fp-1", ("user:alice",), sent)
        retry = Envelope("private", "second-id", "alice", "t1", 2_000, to="bob", recipients=("bob", "alice"))
        stored = await history.store(retry, "fp-1")
        assert stored.id == first.id and stored.offsets == (("user:bob", 1), ("user:alice", 1))
        await contract.check_each_channel_has_the_message_once(history, first.id)
        again = await history.store(retry, "fp-1")
        assert again.duplicate and again.offsets == stored.offsets
        await contract.check_each_channel_has_the_message_once(history, first.id)


@pytest.mark.gen_test(timeout=30)
async def test_registry_rooms_and_limits_run_on_a_cluster(redis_cluster: RedisClusterNodes) -> None:
    async with on_cluster(redis_cluster) as (client, batch, names):
        registry = RedisRegistry(client, names, 30, batch=batch)
        users = [f"u{i}" for i in range(60)]
        await asyncio.gather(*(registry.add(u, "ws-1") for u in users))
        await registry.heartbeat("ws-2", users[:30], live=True)
        where = await registry.servers_of(users)
        assert where == {u: {"ws-1", "ws-2"} if i < 30 else {"ws-1"} for i, u in enumerate(users)}
        assert await registry.live_servers() == {"ws-2"} and await registry.online_count() == 60
        await registry.publish_stats("ws-2", {"sessions": "30"})
        assert (await registry.cluster_stats())["ws-2"] == {"sessions": "30", "live": "yes"}
        await registry.withdraw("ws-2", users[:30])
        await asyncio.gather(*(registry.remove(u, "ws-1") for u in users))
        assert all(await asyncio.gather(*(registry.went_offline(u) for u in users)))

        rooms = RedisRooms(client, names)
        assert await rooms.join("ann", "lobby") and not await rooms.join("ann", "lobby")
        assert await rooms.members("lobby") == ["ann"] and await rooms.rooms_of("ann") == ["lobby"]
        assert await rooms.join("bob", "lobby") and await rooms.join("bob", "den")
        assert await rooms.directory(10) == [("lobby", 2), ("den", 1)]
        assert await rooms.leave("ann", "lobby") and await rooms.rooms_of("ann") == []
        assert await rooms.leave("bob", "den") and await rooms.directory(10) == [("lobby", 1)]
        assert not await client.sismember(names.rooms_index(), "den"), "an emptied room leaves the directory"

        limiter = RedisUserLimiter(client, names, per_second=2, clock=lambda: 1000.5, batch=batch)
        assert await asyncio.gather(*(limiter.allow(u) for u in ("ann", "ann", "ann", "bob"))) == [
            True,
            True,
            False,
            True,
        ]


@pytest.fixture
def servers_on_cluster(redis_cluster: RedisClusterNodes) -> Iterator[RealCluster]:
    """Two chat servers whose REDIS_URL is the Redis Cluster (Kafka: the shared one)."""
    cluster = new_cluster(REDIS_URL=redis_cluster.url)
    try:
        cluster.start_all(1, 2)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.gen_test(timeout=60)
async def test_users_of_two_servers_on_a_cluster_chat_in_private_and_in_rooms_and_page_back(
    servers_on_cluster: RealCluster,
) -> None:
    cluster = servers_on_cluster
    ann, _ = await cluster.connect(1, "ann")
    ben, _ = await cluster.connect(2, "ben")
    await ann.send({"type": "private", "to": "ben", "text": "over the shards", "cid": "p1"})
    ack = await ann.recv_type("ack")
    got = await ben.recv_type("message")
    assert (got["text"], got["id"], got["channel"], got["offset"]) == ("over the shards", ack["id"], "user:ben", 1)
    for user, client in (("ann", ann), ("ben", ben)):
        await client.send({"type": "join", "room": "lobby", "cid": f"j-{user}"})
        await client.recv_until(lambda f: f["type"] == "ack" and f.get("room") == "lobby")
    await ben.send({"type": "room", "room": "lobby", "text": "hello room", "cid": "r1"})
    assert (await ann.recv_until(lambda f: f["type"] == "message" and f["kind"] == "room"))["text"] == "hello room"
    for client, channel in ((ann, "user:ann"), (ben, "user:ben")):
        await client.send({"type": "history", "channel": channel})
        page = await client.recv_type("history")
        assert [m["id"] for m in page["messages"]] == [ack["id"]], f"{channel}: the message once, same id"


@pytest.mark.gen_test(timeout=30)
async def test_a_durable_call_fails_when_no_replica_confirms_it_and_passes_once_one_does(
    redis_cluster: RedisClusterNodes,
) -> None:
    async with on_cluster(redis_cluster) as (client, _, names):
        batch = RedisBatch(client, wait_replicas=1, wait_ms=100)
        key = f"{names.prefix}durable"
        await client.initialize()
        master = client.nodes_manager.get_node_from_slot(client.keyslot(key)).port
        [replica] = [p for p, of in cluster_roles(int(master)).items() if of == int(master)]
        pid = pid_of(redis_cluster.run_dir, f"redis-{replica}")
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the shard's replica hears nothing for a while
        try:
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await batch.group("incr", SCRIPT, [key], [1], durable=True)
            assert await batch.group("incr", SCRIPT, [key], [1]) == 2, "not durable: not waited for"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await batch.group("incr", SCRIPT, [key], [1], durable=True) == 3


@pytest.mark.gen_test(timeout=90)
async def test_the_batch_follows_a_failover_and_a_stale_slot_map_to_the_promoted_replica(tmp_path: Path) -> None:
    """kill -9 of the master of a key: a call made once the cluster knows it failed waits for the
    promotion (nothing can be written to a dead node) and succeeds; the old master back as a replica answers MOVED to a
    client that still has the old map, which routes the call again."""
    nodes = start_redis_cluster(tmp_path / "own")
    try:
        stale = redis_client(nodes.url)
        live = redis_client(nodes.url)
        assert isinstance(stale, RedisCluster) and isinstance(live, RedisCluster)
        key = "failover:{k}"
        stale_batch, live_batch = RedisBatch(stale), RedisBatch(live)
        assert await stale_batch.execute("INCR", key) == 1  # both learn the slot map now
        assert await live_batch.execute("INCR", key) == 2
        master = int(live.nodes_manager.get_node_from_slot(live.keyslot(key)).port)
        pid = pid_of(nodes.run_dir, f"redis-{master}")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        other = next(p for p in nodes.ports if p != master)
        deadline = time.monotonic() + 30
        while master in await asyncio.to_thread(cluster_roles, other):  # until the others mark it failed
            assert time.monotonic() < deadline, f"redis-{master} not marked failed within 30 s"
        assert await live_batch.execute("INCR", key) == 3, "queued during the failover, run once on the new master"
        promoted = int(live.nodes_manager.get_node_from_slot(live.keyslot(key)).port)
        assert promoted != master
        env = lib_env(nodes.run_dir, CHAT_HA="1", REDIS_CLUSTER_PORTS=" ".join(map(str, nodes.ports)))
        await asyncio.to_thread(run_lib, env, "start_redis_cluster", 90)  # starts the missing node
        assert cluster_roles(master).get(master) == promoted, "the old master is back, as a replica"
        assert await stale_batch.execute("INCR", key) == 4, "MOVED from the old master: routed again"
        assert int(stale.nodes_manager.get_node_from_slot(stale.keyslot(key)).port) == promoted
        await stale.aclose()
        await live.aclose()
    finally:
        nodes.stop()
