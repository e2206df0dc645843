"""What users of a two-server cluster see, over the real Kafka and Redis."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import cast

import pytest
import redis

from chatserver.names import Names
from tests.chatclient import ChatClient, refused_status
from tests.integration.conftest import REDIS_URL, RealCluster, new_cluster


async def connect(cluster: RealCluster, n: int, user: str) -> ChatClient:
    return (await cluster.connect(n, user))[0]


def messages(frames: list[dict[str, object]]) -> list[dict[str, object]]:
    return [f for f in frames if f["type"] == "message"]


@pytest.mark.gen_test(timeout=30)
async def test_private_message_from_ws1_reaches_user_on_ws2_exactly_once(cluster: RealCluster) -> None:
    alice, bob = await connect(cluster, 1, "alice1"), await connect(cluster, 2, "bob1")
    await alice.send({"type": "private", "to": "bob1", "text": "across servers", "cid": "c-1"})
    ack = await alice.recv_type("ack")
    got = await bob.recv_type("message")
    assert (got["kind"], got["from"], got["to"], got["text"]) == ("private", "alice1", "bob1", "across servers")
    assert (ack["cid"], ack["id"]) == ("c-1", got["id"])
    assert messages(await bob.drain(1.0)) == []  # once, not twice
    assert messages(await alice.drain(0.2)) == []  # the sending session gets the ack only


@pytest.mark.gen_test(timeout=30)
async def test_public_message_reaches_users_on_both_servers_once(cluster: RealCluster) -> None:
    alice, bob, carol = (
        await connect(cluster, 1, "alice2"),
        await connect(cluster, 2, "bob2"),
        await connect(cluster, 2, "carol2"),
    )
    await alice.send({"type": "public", "text": "hello everyone", "cid": "p-1"})
    for client in (alice, bob, carol):
        got = await client.recv_until(lambda f: f["type"] == "message" and f["text"] == "hello everyone")
        assert (got["kind"], got["from"]) == ("public", "alice2")
    assert (await alice.recv_type("ack"))["cid"] == "p-1"
    for client in (alice, bob, carol):
        assert [m for m in messages(await client.drain(0.5)) if m["text"] == "hello everyone"] == []


@pytest.mark.gen_test(timeout=30)
async def test_sender_identity_is_the_tokens_whatever_the_frame_says(cluster: RealCluster) -> None:
    mallory, bob = await connect(cluster, 1, "mallory3"), await connect(cluster, 2, "bob3")
    await mallory.send({"type": "private", "to": "bob3", "text": "it's alice", "from": "alice", "user": "alice"})
    got = await bob.recv_type("message")
    assert got["from"] == "mallory3"


@pytest.mark.gen_test(timeout=30)
async def test_every_session_of_both_users_gets_a_private_message_but_the_sending_one(cluster: RealCluster) -> None:
    alice1, alice2 = await connect(cluster, 1, "alice4"), await connect(cluster, 2, "alice4")
    bob1, bob2 = await connect(cluster, 1, "bob4"), await connect(cluster, 2, "bob4")
    await alice1.send({"type": "private", "to": "bob4", "text": "to all your devices", "cid": "m"})
    await alice1.recv_type("ack")
    for client in (alice2, bob1, bob2):
        assert [m["text"] for m in messages(await client.drain(1.0))] == ["to all your devices"]
    assert messages(alice1.seen) == []


@pytest.mark.gen_test(timeout=30)
async def test_bad_frames_get_errors_and_the_connection_survives(cluster: RealCluster) -> None:
    alice = await connect(cluster, 1, "alice5")
    for raw, code in [
        ("{{{", "bad_frame"),
        ("[]", "bad_frame"),
        ('{"type": "private", "text": "no recipient", "cid": "x"}', "bad_frame"),
        ('{"type": "launch"}', "unknown_type"),
        (json.dumps({"type": "public", "text": "y" * 4001}), "too_large"),
    ]:
        await alice.send(raw)
        assert (await alice.recv_type("error"))["code"] == code
    await alice.send({"type": "public", "text": "still alive", "cid": "ok"})
    assert (await alice.recv_type("ack"))["cid"] == "ok"


@pytest.mark.gen_test(timeout=30)
async def test_no_token_or_a_forged_token_is_refused_with_401(cluster: RealCluster) -> None:
    assert await refused_status(cluster.url(1), None) == 401
    forged = cluster.token("alice")[:-4] + "abcd"
    assert await refused_status(cluster.url(2), forged) == 401


@pytest.mark.gen_test(timeout=30)
async def test_sessions_are_recorded_in_redis_and_removed_when_they_close(cluster: RealCluster) -> None:
    names = Names(cluster.prefix)
    store = redis.Redis.from_url(REDIS_URL)
    key = names.user_servers("dana6")
    alice = await connect(cluster, 2, "dana6")
    assert {m.decode() for m in cast(list[bytes], store.zrange(key, 0, -1))} == {cluster.server_id(2)}
    assert 0 < store.pttl(key) <= 4000  # expires unless refreshed
    alice.close()
    deadline = time.monotonic() + 5
    while store.zcard(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.zcard(key) == 0
    live = {m.decode() for m in cast(list[bytes], store.zrange(names.live_servers(), 0, -1))}
    assert {cluster.server_id(1), cluster.server_id(2)} <= live


@pytest.mark.gen_test(timeout=60)
async def test_a_crashed_servers_entries_expire_and_messages_still_flow(cluster: RealCluster) -> None:
    names = Names(cluster.prefix)
    store = redis.Redis.from_url(REDIS_URL)
    cluster.start(3)
    ghost = await connect(cluster, 3, "erin7")
    alice = await connect(cluster, 1, "alice7")
    cluster.stop(3, signal.SIGKILL)  # no goodbye
    assert store.zrange(names.user_servers("erin7"), 0, -1) == [cluster.server_id(3).encode()]
    deadline = time.monotonic() + 10
    while store.exists(names.user_servers("erin7")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not store.exists(names.user_servers("erin7")), "entries of a dead server must expire"
    now_ms = int(time.time() * 1000)
    live = {m.decode() for m in cast(list[bytes], store.zrangebyscore(names.live_servers(), now_ms, "+inf"))}
    assert cluster.server_id(3) not in live and cluster.server_id(1) in live
    await alice.send({"type": "public", "text": "after the crash", "cid": "z"})
    assert (await alice.recv_type("ack", timeout=10))["cid"] == "z"
    ghost.close()


@pytest.mark.gen_test(timeout=30)
async def test_metrics_count_connections_and_routed_messages(cluster: RealCluster) -> None:
    alice = await connect(cluster, 1, "alice8")
    await alice.send({"type": "public", "text": "count me", "cid": "n"})
    await alice.recv_type("ack")
    text = urllib.request.urlopen(cluster.url(1) + "/metrics", timeout=5).read().decode()
    routed = [line for line in text.splitlines() if line.startswith('chat_messages_routed_total{kind="public"}')]
    assert routed and float(routed[0].split()[-1]) >= 1
    connections = [line for line in text.splitlines() if line.startswith("chat_connections ")]
    assert connections and float(connections[0].split()[-1]) >= 1


def test_readyz_reports_what_is_down() -> None:
    c = new_cluster(KAFKA_BOOTSTRAP="127.0.0.1:1", CHAT_KAFKA_SEND_TIMEOUT_S="2")
    try:
        server = c.start(1, wait=False)
        deadline = time.monotonic() + 10
        while server.status("/healthz") != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.status("/healthz") == 200  # alive, but:
        assert server.status("/readyz") == 503
        body = urllib_body(server.url + "/readyz")
        assert "kafka" in body["error"]["message"]
    finally:
        c.close()
    c = new_cluster(REDIS_URL="redis://127.0.0.1:1/0")
    try:
        server = c.start(1, wait=False)
        deadline = time.monotonic() + 30
        body = {}
        while time.monotonic() < deadline:
            if server.status("/readyz") == 503:
                body = urllib_body(server.url + "/readyz")
                if "redis" in body["error"]["message"]:
                    break
            time.sleep(0.2)
        assert "redis" in body["error"]["message"]
    finally:
        c.close()


def urllib_body(url: str) -> dict[str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]
