"""Rooms and presence across servers, over the real Redis and Kafka."""

from __future__ import annotations

import signal
import time

import pytest

from tests.chatclient import ChatClient
from tests.integration.conftest import RealCluster, new_cluster


async def connect(cluster: RealCluster, n: int, user: str) -> ChatClient:
    return (await cluster.connect(n, user))[0]


@pytest.mark.gen_test(timeout=30)
async def test_room_messages_cross_servers_to_members_only_and_are_kept(cluster: RealCluster) -> None:
    ann, ben, dee = (
        await connect(cluster, 1, "ann20"),
        await connect(cluster, 2, "ben20"),
        await connect(cluster, 2, "dee20"),
    )
    await ann.send({"type": "join", "room": "r20", "cid": "j1"})
    assert await ann.recv_until(lambda f: f.get("cid") == "j1") == {"type": "ack", "cid": "j1", "room": "r20"}
    await ben.send({"type": "join", "room": "r20"})
    seen = await ann.recv_until(lambda f: f["type"] == "presence" and f.get("room") == "r20" and f["user"] == "ben20")
    assert seen["status"] == "join"
    await ben.send({"type": "room", "room": "r20", "text": "hello room", "cid": "m"})
    got = await ann.recv_type("message")
    assert (got["kind"], got["room"], got["channel"], got["from"], got["text"]) == (
        "room",
        "r20",
        "room:r20",
        "ben20",
        "hello room",
    )
    ack = await ben.recv_type("ack")
    assert (ack["channel"], ack["offset"]) == ("room:r20", got["offset"])
    await dee.send({"type": "room", "room": "r20", "text": "intruder", "cid": "x"})
    assert (await dee.recv_type("error"))["code"] == "not_member"
    assert not [f for f in await dee.drain(0.5) if f["type"] == "message"]
    await dee.send({"type": "history", "channel": "room:r20", "cid": "h"})
    assert (await dee.recv_type("error"))["code"] == "forbidden"
    await ann.send({"type": "history", "channel": "room:r20"})
    assert [m["text"] for m in (await ann.recv_type("history"))["messages"]] == ["hello room"]
    await ann.send({"type": "who", "room": "r20", "cid": "w"})
    assert (await ann.recv_type("who"))["users"] == ["ann20", "ben20"]


@pytest.mark.gen_test(timeout=60)
async def test_a_user_whose_server_dies_goes_offline_within_seconds() -> None:
    c = new_cluster()
    try:
        c.start_all(1, 2)
        watcher = await connect(c, 1, "watcher21")
        await connect(c, 2, "ghost21")
        online = await watcher.recv_until(lambda f: f["type"] == "presence" and f["user"] == "ghost21")
        assert online["status"] == "online"
        await watcher.send({"type": "who", "cid": "w"})
        assert "ghost21" in (await watcher.recv_type("who"))["users"]
        c.stop(2, signal.SIGKILL)  # no goodbye
        killed = time.monotonic()
        offline = await watcher.recv_until(
            lambda f: f["type"] == "presence" and f["user"] == "ghost21" and f["status"] == "offline", timeout=20
        )
        assert offline == {"type": "presence", "user": "ghost21", "status": "offline"}
        print(f"\noffline presence {time.monotonic() - killed:.1f}s after the server was killed (TTL 4 s)")
        await watcher.send({"type": "who", "cid": "w2"})
        assert "ghost21" not in (await watcher.recv_type("who"))["users"]
    finally:
        c.close()


@pytest.mark.gen_test(timeout=30)
async def test_delivered_and_read_receipts_cross_servers(cluster: RealCluster) -> None:
    ann = await ChatClient.connect(cluster.url(1), cluster.token("ann22"), receipts=True)
    await ann.recv_type("welcome")
    ben = await connect(cluster, 2, "ben22")
    await ann.send({"type": "private", "to": "ben22", "text": "receipt please", "cid": "c"})
    msg = await ben.recv_type("message")
    delivered = await ann.recv_type("receipt")
    assert delivered == {"type": "receipt", "id": msg["id"], "from": "ben22", "status": "delivered"}
    await ben.send({"type": "receipt", "to": "ann22", "id": msg["id"], "status": "read"})
    read = await ann.recv_type("receipt")
    assert read == {"type": "receipt", "id": msg["id"], "from": "ben22", "status": "read"}
