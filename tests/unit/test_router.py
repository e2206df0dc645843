"""Routing over in-memory parts: two routers sharing a registry and a broker model a cluster."""

from __future__ import annotations

import pytest

from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.hub import Hub
from chatserver.metrics import Metrics
from chatserver.registry import MemoryRegistry, RegistryError
from chatserver.router import Router
from tests.fakes import FailingBus, FakeSession, settle


class Cluster:
    def __init__(self, count: int = 2) -> None:
        self.registry = MemoryRegistry(ttl_s=30)
        self.broker = MemoryBroker()
        self.routers = [
            Router(f"ws-{n}", Hub(), self.registry, MemoryBus(self.broker, f"ws-{n}"), Metrics())
            for n in range(1, count + 1)
        ]

    async def start(self) -> None:
        for router in self.routers:
            await router._bus.start(router.on_bus_message)
            await router.heartbeat(live=True)

    async def join(self, user: str, server: int) -> FakeSession:
        session = FakeSession(user, f"ws-{server}")
        await self.routers[server - 1].connect(session)
        return session

    async def send(self, session: FakeSession, server: int, frame: str) -> None:
        await self.routers[server - 1].handle(session, frame)
        await settle()


@pytest.mark.gen_test
async def test_welcome_names_the_user_and_the_server() -> None:
    c = Cluster()
    await c.start()
    alice = await c.join("alice", 2)
    assert alice.frames == [{"type": "welcome", "user": "alice", "server": "ws-2", "positions": {}}]


@pytest.mark.gen_test
async def test_private_message_crosses_servers_once_and_is_acked() -> None:
    c = Cluster()
    await c.start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    await c.send(alice, 1, '{"type": "private", "to": "bob", "text": "hi", "cid": "c1", "from": "eve"}')
    [msg] = bob.of_type("message")
    [ack] = alice.of_type("ack")
    assert msg["from"] == "alice" and msg["to"] == "bob" and msg["text"] == "hi" and msg["kind"] == "private"
    assert ack["cid"] == "c1" and ack["id"] == msg["id"] and ack["ts"] == msg["ts"]
    assert alice.of_type("message") == []  # the sending session gets the ack, not a copy


@pytest.mark.gen_test
async def test_private_message_reaches_every_session_of_both_users_but_the_sending_one() -> None:
    c = Cluster()
    await c.start()
    alice1, alice2 = await c.join("alice", 1), await c.join("alice", 2)
    bob1, bob2 = await c.join("bob", 1), await c.join("bob", 2)
    await c.send(alice1, 1, '{"type": "private", "to": "bob", "text": "hi"}')
    for session in (alice2, bob1, bob2):
        assert [m["text"] for m in session.of_type("message")] == ["hi"]
    assert alice1.of_type("message") == []


@pytest.mark.gen_test
async def test_private_message_to_an_offline_user_is_still_accepted() -> None:
    c = Cluster()
    await c.start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, '{"type": "private", "to": "nobody", "text": "hi", "cid": "k"}')
    assert [f["type"] for f in alice.frames[1:]] == ["ack"]


@pytest.mark.gen_test
async def test_public_message_reaches_everyone_on_every_server_the_sender_included() -> None:
    c = Cluster(3)
    await c.start()
    sessions = [await c.join(name, n) for n, name in ((1, "alice"), (2, "bob"), (3, "carol"), (3, "dave"))]
    await c.send(sessions[0], 1, '{"type": "public", "text": "hello", "cid": "p"}')
    for session in sessions:
        assert [(m["from"], m["text"]) for m in session.of_type("message")] == [("alice", "hello")]
    assert sessions[0].of_type("ack")[0]["cid"] == "p"


@pytest.mark.gen_test
async def test_bad_frame_gets_an_error_and_later_frames_still_work() -> None:
    c = Cluster(1)
    await c.start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, "{not json")
    await c.send(alice, 1, '{"type": "ping", "cid": "after"}')
    assert alice.frames[1]["type"] == "error" and alice.frames[1]["code"] == "bad_frame"
    assert alice.frames[2] == {"type": "pong", "cid": "after"}


@pytest.mark.gen_test
async def test_a_failed_publish_is_reported_with_the_cid_and_never_acked() -> None:
    registry = MemoryRegistry(ttl_s=30)
    router = Router("ws-1", Hub(), registry, FailingBus(), Metrics())
    alice = FakeSession("alice")
    await router.connect(alice)
    await router.handle(alice, '{"type": "public", "text": "x", "cid": "c9"}')
    await settle()
    [err] = alice.of_type("error")
    assert err["code"] == "internal" and err["cid"] == "c9" and "retry" in err["message"]
    assert alice.of_type("ack") == []


class DownRegistry(MemoryRegistry):
    async def servers_of(self, users):  # type: ignore[no-untyped-def]
        raise RegistryError("redis: connection refused")


@pytest.mark.gen_test
async def test_registry_outage_gives_a_retryable_error() -> None:
    router = Router("ws-1", Hub(), DownRegistry(ttl_s=30), MemoryBus(MemoryBroker(), "ws-1"), Metrics())
    alice = FakeSession("alice")
    await router.connect(alice)
    await router.handle(alice, '{"type": "private", "to": "bob", "text": "x", "cid": "c1"}')
    [err] = alice.of_type("error")
    assert err["code"] == "internal" and err["cid"] == "c1"


@pytest.mark.gen_test
async def test_registry_follows_sessions_and_withdraw_closes_them_with_1001() -> None:
    c = Cluster(1)
    await c.start()
    a1, a2 = await c.join("alice", 1), await c.join("alice", 1)
    assert (await c.registry.servers_of(["alice"]))["alice"] == {"ws-1"}
    c.routers[0].disconnect(a1)
    await settle()
    assert (await c.registry.servers_of(["alice"]))["alice"] == {"ws-1"}
    await c.routers[0].withdraw()
    assert a2.closed is not None and a2.closed[0] == 1001
    assert await c.registry.live_servers() == set()
