"""Routing over in-memory parts: two routers sharing a registry and a broker model a cluster."""

from __future__ import annotations

import asyncio

import pytest

from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.history import MemoryHistory, Retention
from chatserver.hub import Hub
from chatserver.limits import Backlog, Limits
from chatserver.metrics import Metrics
from chatserver.registry import MemoryRegistry, RegistryError
from chatserver.router import Router
from tests.fakes import FailingBus, FakeSession, HeldBus, MemoryCluster, settle

Cluster = MemoryCluster


@pytest.mark.gen_test
async def test_welcome_names_the_user_and_the_server() -> None:
    c = Cluster()
    await c.start()
    alice = await c.join("alice", 2)
    [welcome] = alice.frames
    epochs = welcome.pop("epochs")
    positions = {"public": 0, "user:alice": 0}
    assert welcome == {"type": "welcome", "user": "alice", "server": "ws-2", "positions": positions}
    assert set(epochs) == {"public", "user:alice"} and all(isinstance(e, str) and e for e in epochs.values())


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
    router = Router("ws-1", Hub(), registry, MemoryHistory(), FailingBus(), Metrics())
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
    router = Router(
        "ws-1", Hub(), DownRegistry(ttl_s=30), MemoryHistory(), MemoryBus(MemoryBroker(), "ws-1"), Metrics()
    )
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


def texts(session: FakeSession) -> list[str]:
    return [m["text"] for m in session.of_type("message")]


@pytest.mark.gen_test
async def test_messages_carry_contiguous_offsets_in_their_channels() -> None:
    c = Cluster()
    await c.start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    for i in range(3):
        await c.send(alice, 1, f'{{"type": "private", "to": "bob", "text": "m{i}"}}')
    await c.send(bob, 2, '{"type": "public", "text": "pub"}')
    assert [(m["channel"], m["offset"]) for m in bob.of_type("message")] == [
        ("user:bob", 1),
        ("user:bob", 2),
        ("user:bob", 3),
        ("public", 1),
    ]
    assert bob.frames[0]["positions"] == {"public": 0, "user:bob": 0}


@pytest.mark.gen_test
async def test_offline_messages_are_replayed_on_resume_in_order_then_resumed() -> None:
    c = Cluster()
    await c.start()
    alice = await c.join("alice", 1)
    for i in range(5):
        await c.send(alice, 1, f'{{"type": "private", "to": "bob", "text": "while away {i}", "cid": "c{i}"}}')
    assert len(alice.of_type("ack")) == 5
    bob = await c.join("bob", 2)
    assert bob.frames[0]["positions"]["user:bob"] == 5
    await c.send(bob, 2, '{"type": "resume", "positions": {"user:bob": 2, "public": 0}, "cid": "r"}')
    assert texts(bob) == ["while away 2", "while away 3", "while away 4"]
    resumed = bob.frames[-1]
    assert resumed.pop("epochs") == bob.frames[0]["epochs"]
    assert resumed == {"type": "resumed", "recovered": True, "cid": "r", "positions": {"user:bob": 5, "public": 0}}


class SlowHistory(MemoryHistory):
    """Pauses reads of history until released, so a test can publish during a replay."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.proceed = asyncio.Event()

    async def after(self, channel, offset, limit):  # type: ignore[no-untyped-def]
        result = await super().after(channel, offset, limit)  # read now ...
        self.reading.set()
        await self.proceed.wait()  # ... answer later, after more messages were sent
        return result


@pytest.mark.gen_test
async def test_a_message_sent_during_a_replay_is_neither_lost_nor_doubled() -> None:
    slow = SlowHistory()
    c = Cluster(history=slow)
    await c.start()
    alice = await c.join("alice", 1)
    for i in range(3):
        await c.send(alice, 1, f'{{"type": "private", "to": "bob", "text": "old {i}"}}')
    bob = await c.join("bob", 2)
    resume = asyncio.ensure_future(c.routers[1].handle(bob, '{"type": "resume", "positions": {"user:bob": 0}}'))
    await slow.reading.wait()
    await c.send(alice, 1, '{"type": "private", "to": "bob", "text": "during"}')  # live, held back
    assert texts(bob) == []
    slow.proceed.set()
    await resume
    await c.send(alice, 1, '{"type": "private", "to": "bob", "text": "after"}')
    assert texts(bob) == ["old 0", "old 1", "old 2", "during", "after"]
    assert [m["offset"] for m in bob.of_type("message")] == [1, 2, 3, 4, 5]


@pytest.mark.gen_test
async def test_a_live_copy_of_a_replayed_message_is_dropped() -> None:
    c = Cluster()
    await c.start()
    alice = await c.join("alice", 1)
    bob = await c.join("bob", 2)
    held = _HeldBus()
    c.routers[0].parts.bus, real_bus = held, c.routers[0].parts.bus  # hold alice's publishes
    await c.routers[0].handle(alice, '{"type": "private", "to": "bob", "text": "in flight"}')
    await c.send(bob, 2, '{"type": "resume", "positions": {"user:bob": 0}}')  # replays it
    held.flush_to(real_bus)  # ... then the live copy arrives
    await settle()
    assert texts(bob) == ["in flight"]


class _HeldBus:
    def __init__(self) -> None:
        self.held: list[tuple[str, bytes]] = []

    async def start(self, on_message):  # type: ignore[no-untyped-def]
        return None

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        self.held.append((server_id, payload))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def status(self) -> tuple[bool, str]:
        return True, "ok"

    def lag(self) -> int:
        return 0

    async def close(self) -> None:
        return None

    def flush_to(self, bus) -> None:  # type: ignore[no-untyped-def]
        for server_id, payload in self.held:
            bus.publish(server_id, payload)


@pytest.mark.gen_test
async def test_resume_past_trimmed_history_reports_the_gap() -> None:
    c = Cluster(history=MemoryHistory(Retention(min_keep=2, max_keep=2)))
    await c.start()
    alice = await c.join("alice", 1)
    for i in range(5):
        await c.send(alice, 1, f'{{"type": "public", "text": "p{i}"}}')
    bob = await c.join("bob", 2)
    await c.send(bob, 2, '{"type": "resume", "positions": {"public": 1}}')
    assert texts(bob) == ["p3", "p4"]
    resumed = bob.frames[-1]
    del resumed["epochs"]
    assert resumed == {"type": "resumed", "recovered": False, "gaps": ["public"], "positions": {"public": 5}}


@pytest.mark.gen_test
async def test_history_pages_backwards_and_only_readable_channels() -> None:
    c = Cluster(1)
    await c.start()
    alice = await c.join("alice", 1)
    for i in range(6):
        await c.send(alice, 1, f'{{"type": "public", "text": "h{i}"}}')
    await c.send(alice, 1, '{"type": "history", "channel": "public", "limit": 4, "cid": "1"}')
    page = alice.of_type("history")[-1]
    assert [m["text"] for m in page["messages"]] == ["h2", "h3", "h4", "h5"] and page["cid"] == "1"
    await c.send(alice, 1, '{"type": "history", "channel": "public", "before": 3, "limit": 4}')
    assert [m["text"] for m in alice.of_type("history")[-1]["messages"]] == ["h0", "h1"]
    for channel in ("user:bob", "room:lobby"):
        await c.send(alice, 1, f'{{"type": "history", "channel": "{channel}", "cid": "x"}}')
        assert alice.frames[-1]["type"] == "error" and alice.frames[-1]["code"] == "forbidden"
    await c.send(alice, 1, '{"type": "resume", "positions": {"user:bob": 0}, "cid": "y"}')
    assert [f["type"] for f in alice.frames[-2:]] == ["error", "resumed"]


@pytest.mark.gen_test
async def test_a_retried_send_keeps_its_id_and_is_stored_once() -> None:
    c = Cluster()
    await c.start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    frame = '{"type": "private", "to": "bob", "text": "once", "cid": "same"}'
    await c.send(alice, 1, frame)
    await c.send(alice, 1, frame)  # a client retrying after a lost ack
    acks = alice.of_type("ack")
    assert len(acks) == 2 and acks[0]["id"] == acks[1]["id"]
    assert (await c.history.latest(["user:bob"]))["user:bob"] == 1
    assert {m["id"] for m in bob.of_type("message")} == {acks[0]["id"]}


@pytest.mark.gen_test
async def test_a_room_message_reaches_every_member_on_every_server_and_no_one_else() -> None:
    c = Cluster(3)
    await c.start()
    ann, ben, cy, outsider = (
        await c.join("ann", 1),
        await c.join("ben", 2),
        await c.join("cy", 2),
        await c.join("dee", 3),
    )
    for session, server in ((ann, 1), (ben, 2), (cy, 2)):
        await c.send(session, server, '{"type": "join", "room": "lobby", "cid": "j"}')
    await c.send(ben, 2, '{"type": "room", "room": "lobby", "text": "hi room", "cid": "r1"}')
    for session in (ann, ben, cy):  # every member, the sender included
        [msg] = session.of_type("message")
        assert (msg["kind"], msg["room"], msg["channel"], msg["offset"], msg["from"]) == (
            "room",
            "lobby",
            "room:lobby",
            1,
            "ben",
        )
    assert ben.of_type("ack")[0] == {"type": "ack", "cid": "j", "room": "lobby"}  # the join's
    assert ben.of_type("ack")[1]["channel"] == "room:lobby"
    assert outsider.of_type("message") == []
    await c.send(outsider, 3, '{"type": "room", "room": "lobby", "text": "let me in", "cid": "x"}')
    assert outsider.frames[-1]["code"] == "not_member" and outsider.frames[-1]["cid"] == "x"


@pytest.mark.gen_test
async def test_a_room_message_goes_only_to_servers_holding_members() -> None:
    c = Cluster(3)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    await c.join("dee", 3)
    for session, server in ((ann, 1), (ben, 2)):
        await c.send(session, server, '{"type": "join", "room": "quiet"}')
    published = spy_on_publishes(c.routers[0])
    await c.send(ann, 1, '{"type": "room", "room": "quiet", "text": "psst"}')
    assert sorted(published) == ["ws-1", "ws-2"], "ws-3 holds no member"


def spy_on_publishes(router: Router) -> list[str]:
    """The servers ``router`` publishes to from now on, in order."""
    published: list[str] = []
    bus = router.parts.bus
    original = bus.publish

    def spy(server_id: str, payload: bytes) -> asyncio.Future[None]:
        published.append(server_id)
        return original(server_id, payload)

    bus.publish = spy  # type: ignore[method-assign]
    return published


@pytest.mark.gen_test
async def test_a_private_message_skips_the_senders_topic_when_no_session_there_needs_it() -> None:
    c = Cluster(2)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    published = spy_on_publishes(c.routers[0])
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "one hop"}')
    assert published == ["ws-2"]
    assert len(ben.of_type("message")) == 1 and len(ann.of_type("ack")) == 1


@pytest.mark.gen_test
async def test_the_senders_other_session_on_the_same_server_still_gets_its_copy() -> None:
    c = Cluster(2)
    await c.start()
    ann, ann_too, ben = await c.join("ann", 1), await c.join("ann", 1), await c.join("ben", 2)
    published = spy_on_publishes(c.routers[0])
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "both tabs"}')
    assert sorted(published) == ["ws-1", "ws-2"]
    [copy] = ann_too.of_type("message")
    assert copy["text"] == "both tabs" and copy["channel"] == "user:ann"
    assert ann.of_type("message") == [] and len(ben.of_type("message")) == 1


@pytest.mark.gen_test
async def test_a_message_to_nobody_online_is_stored_written_to_kafka_and_acked() -> None:
    """An ack means "written to Kafka with acks=all" (the contract), even when no session needs
    the message now: it goes to the sender's own server's topic."""
    c = Cluster(2)
    await c.start()
    ann = await c.join("ann", 1)
    published = spy_on_publishes(c.routers[0])
    await c.send(ann, 1, '{"type": "private", "to": "zed", "text": "read it later", "cid": "z"}')
    assert published == ["ws-1"]
    [ack] = ann.of_type("ack")
    zed = await c.join("zed", 2)
    await c.send(zed, 2, '{"type": "history", "channel": "user:zed", "cid": "h"}')
    assert [m["text"] for m in zed.of_type("history")[0]["messages"]] == ["read it later"]
    assert ack["offset"] == 1


@pytest.mark.gen_test
async def test_a_delivered_receipt_goes_straight_to_the_sending_sessions_server() -> None:
    c = Cluster(3)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    await c.join("ann", 3)  # another session of the sender elsewhere: no look-up, no copy
    published = spy_on_publishes(c.routers[1])
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "got it?"}')
    [msg] = ben.of_type("message")
    assert published == ["ws-1"]
    assert ann.of_type("receipt") == [{"type": "receipt", "id": msg["id"], "from": "ben", "status": "delivered"}]


@pytest.mark.gen_test
async def test_members_see_joins_and_leaves_and_who_answers_from_the_cluster() -> None:
    c = Cluster(2)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    await c.send(ann, 1, '{"type": "join", "room": "club", "cid": "a"}')
    assert {"type": "presence", "user": "ann", "status": "join", "room": "club", "cid": "a"} in ann.frames
    await c.send(ben, 2, '{"type": "join", "room": "club"}')
    assert {"type": "presence", "user": "ben", "status": "join", "room": "club"} in ann.frames
    await c.send(ann, 1, '{"type": "who", "room": "club", "cid": "w"}')
    answer = {"type": "who", "room": "club", "users": ["ann", "ben"], "members": ["ann", "ben"], "cid": "w"}
    assert ann.frames[-1] == answer
    await c.send(ann, 1, '{"type": "who"}')
    assert ann.frames[-1]["users"] == ["ann", "ben"]
    await c.send(ben, 2, '{"type": "leave", "room": "club"}')
    assert {"type": "presence", "user": "ben", "status": "leave", "room": "club"} in ann.frames
    await c.send(ben, 2, '{"type": "history", "channel": "room:club", "cid": "h"}')
    assert ben.frames[-1]["code"] == "forbidden", "a former member may not read the room"


@pytest.mark.gen_test
async def test_online_and_offline_presence_reach_others() -> None:
    c = Cluster(2)
    await c.start()
    ann = await c.join("ann", 1)
    ben = await c.join("ben", 2)
    await settle()
    assert {"type": "presence", "user": "ben", "status": "online"} in ann.frames
    c.routers[1].disconnect(ben)
    await settle(50)
    assert {"type": "presence", "user": "ben", "status": "offline"} in ann.frames


@pytest.mark.gen_test
async def test_online_presence_is_withheld_beyond_the_limit_and_who_still_answers() -> None:
    c = Cluster(2, presence_max_online=2)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    await settle()
    assert {"type": "presence", "user": "ben", "status": "online"} in ann.frames, "under the limit: announced"
    await c.join("cy", 2)
    for router in c.routers:
        await router.heartbeat(live=True)  # learns that 3 users are online
    await c.join("dee", 1)
    await settle()
    assert {"type": "presence", "user": "dee", "status": "online"} not in ben.frames
    assert c.routers[0].parts.metrics.presence_withheld._value.get() == 1
    await c.send(ben, 2, '{"type": "who", "cid": "w"}')
    assert ben.frames[-1]["users"] == ["ann", "ben", "cy", "dee"]


@pytest.mark.gen_test
async def test_a_dead_servers_crowd_is_not_announced_one_by_one_beyond_the_limit() -> None:
    now = [1000.0]
    c = Cluster(2, registry=MemoryRegistry(ttl_s=30, clock=lambda: now[0]), presence_max_online=3)
    await c.start()
    ann = await c.join("ann", 1)
    for user in ("u1", "u2", "u3"):
        await c.join(user, 2)
    await settle()
    now[0] += 60  # ws-2 died: its entries expire; ws-1 keeps heartbeating
    await c.routers[0].heartbeat(live=True)
    before = len(ann.of_type("presence"))
    await c.routers[0].sweep_presence()
    await settle()
    assert len(ann.of_type("presence")) == before, "1 online + 3 gone > 3: withheld"
    assert c.routers[0].parts.metrics.presence_withheld._value.get() == 3


@pytest.mark.gen_test
async def test_a_heartbeat_does_not_write_back_users_who_left_while_it_ran() -> None:
    c = Cluster(1)
    await c.start()
    router = c.routers[0]
    router.sessions.HEARTBEAT_CHUNK = 2
    sessions = [await c.join(u, 1) for u in ("a", "b", "c", "d")]
    written: list[list[str]] = []
    first_sent = asyncio.Event()
    proceed = asyncio.Event()
    original = c.registry.heartbeat

    async def slow_heartbeat(server_id: str, users, live: bool) -> None:  # type: ignore[no-untyped-def]
        written.append(sorted(users))
        if len(written) == 1:
            first_sent.set()
            await proceed.wait()  # the first chunk is on its way...
        await original(server_id, users, live)

    c.registry.heartbeat = slow_heartbeat  # type: ignore[method-assign]
    beat = asyncio.create_task(router.heartbeat(live=True))
    await first_sent.wait()
    for session in sessions[2:]:  # ... while c and d leave
        router.disconnect(session)
    await settle()
    proceed.set()
    await beat
    assert written == [["a", "b"], []], "c and d are not written back"
    assert (await c.registry.servers_of(["c", "d"])) == {"c": set(), "d": set()}


@pytest.mark.gen_test
async def test_typing_hints_reach_the_target_at_most_once_a_second() -> None:
    c = Cluster(2)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    for _ in range(5):
        await c.send(ann, 1, '{"type": "typing", "to": "ben"}')
    assert ben.of_type("typing") == [{"type": "typing", "from": "ann", "to": "ben"}]
    assert ann.of_type("typing") == [] and ann.of_type("error") == []


@pytest.mark.gen_test
async def test_the_sender_gets_delivered_then_read_receipts_for_a_private_message() -> None:
    c = Cluster(2)
    await c.start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "did you get this?"}')
    [msg] = ben.of_type("message")
    assert ann.of_type("receipt") == [{"type": "receipt", "id": msg["id"], "from": "ben", "status": "delivered"}]
    await c.send(ben, 2, f'{{"type": "receipt", "to": "ann", "id": "{msg["id"]}", "status": "read"}}')
    assert ann.of_type("receipt")[-1] == {"type": "receipt", "id": msg["id"], "from": "ben", "status": "read"}
    await c.send(ben, 2, '{"type": "receipt", "to": "ann", "id": "x", "status": "seen", "cid": "b"}')
    assert ben.frames[-1]["code"] == "bad_frame"


@pytest.mark.gen_test
async def test_delivered_receipts_only_for_a_session_that_asked_for_them() -> None:
    c = Cluster(2)
    await c.start()
    ann = FakeSession("ann", "ws-1", receipts=False)
    await c.routers[0].connect(ann)
    ben = await c.join("ben", 2)
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "no marks, please"}')
    assert len(ben.of_type("message")) == 1
    assert ann.of_type("receipt") == [] and len(ann.of_type("ack")) == 1


@pytest.mark.gen_test
async def test_no_delivered_receipt_while_the_recipient_is_offline() -> None:
    c = Cluster(2)
    await c.start()
    ann = await c.join("ann", 1)
    await c.send(ann, 1, '{"type": "private", "to": "ben", "text": "later"}')
    assert ann.of_type("receipt") == []


@pytest.mark.gen_test
async def test_welcome_lists_the_users_rooms_with_their_positions() -> None:
    c = Cluster(1)
    await c.start()
    ann = await c.join("ann", 1)
    await c.send(ann, 1, '{"type": "join", "room": "book-club"}')
    await c.send(ann, 1, '{"type": "room", "room": "book-club", "text": "chapter 1"}')
    again = await c.join("ann", 1)
    assert again.frames[0]["rooms"] == ["book-club"]
    assert again.frames[0]["positions"]["room:book-club"] == 1
    c.routers[0].disconnect(again)
    assert again.id not in c.routers[0].presence._typing_sent


@pytest.mark.gen_test
async def test_a_graceful_stop_waits_for_a_frame_that_is_being_handled() -> None:
    slow_store = SlowStore()
    c = Cluster(1, history=slow_store)
    await c.start()
    ann = await c.join("ann", 1)
    sending = asyncio.ensure_future(c.routers[0].handle(ann, '{"type": "public", "text": "last words", "cid": "l"}'))
    await slow_store.storing.wait()
    quiet = asyncio.ensure_future(c.routers[0].quiesce())
    await asyncio.sleep(0.05)
    assert not quiet.done(), "the stop waits while the message is stored but not published"
    slow_store.proceed.set()
    await sending
    await quiet
    await settle()
    assert [m["text"] for m in ann.of_type("message")] == ["last words"]


class SlowStore(MemoryHistory):
    def __init__(self) -> None:
        super().__init__()
        self.storing = asyncio.Event()
        self.proceed = asyncio.Event()

    async def store(self, envelope, fingerprint):  # type: ignore[no-untyped-def]
        self.storing.set()
        await self.proceed.wait()
        return await super().store(envelope, fingerprint)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_backlog_ages_from_its_oldest_unanswered_message() -> None:
    clock = Clock()
    backlog = Backlog(shed_after_s=2.0, clock=clock)
    assert backlog.oldest_age_s() == 0.0 and not backlog.overloaded()
    first = backlog.open()
    clock.now += 1.0
    second = backlog.open()
    clock.now += 1.5
    assert backlog.oldest_age_s() == 2.5 and backlog.overloaded()
    second.answer()  # answered out of order: the first still holds the age
    assert backlog.overloaded()
    first.answer()
    assert backlog.oldest_age_s() == 0.0 and not backlog.overloaded()
    never = Backlog(shed_after_s=0, clock=clock)
    never.open()
    clock.now += 3600
    assert not never.overloaded(), "0 turns shedding off"


def test_the_backlog_forgets_answered_messages_even_when_nobody_asks_its_age() -> None:
    backlog = Backlog(shed_after_s=0)  # shedding off: the router never asks, nor may /metrics
    for _ in range(10_000):
        backlog.open().answer()
    assert backlog.held() <= 1, "answered tickets are dropped as new ones come"
    stuck = backlog.open()
    for _ in range(100):
        backlog.open().answer()
    assert backlog.held() == 101, "behind an unanswered one they wait, bounded by the send timeout"
    stuck.answer()
    backlog.open()
    assert backlog.held() == 1


@pytest.mark.gen_test
async def test_an_overloaded_server_refuses_new_messages_at_once_and_recovers() -> None:
    clock, bus, metrics = Clock(), HeldBus(), Metrics()
    backlog = Backlog(shed_after_s=2.0, clock=clock)
    router = Router("ws-1", Hub(), MemoryRegistry(30), MemoryHistory(), bus, metrics, Limits(backlog=backlog))
    alice, bob = FakeSession("alice"), FakeSession("bob")
    await router.connect(alice)
    await router.connect(bob)  # on this server: his messages go through its topic
    await router.handle(alice, '{"type": "private", "to": "bob", "text": "one", "cid": "c1"}')
    clock.now += 1.0
    await router.handle(alice, '{"type": "public", "text": "two", "cid": "c2"}')
    await settle()
    assert alice.of_type("ack") == [], "Kafka holds both: not acked yet"
    held = len(bus.held)

    clock.now += 1.5  # the oldest has waited 2.5 s
    await router.handle(alice, '{"type": "private", "to": "bob", "text": "three", "cid": "c3"}')
    await router.handle(alice, '{"type": "ping", "cid": "p"}')
    await settle()
    [refused] = alice.of_type("error")
    assert refused["code"] == "rate_limited" and refused["cid"] == "c3" and "overloaded" in refused["message"]
    assert len(bus.held) == held, "the refused message was not published"
    assert alice.of_type("pong") == [{"type": "pong", "cid": "p"}], "only messages are shed"
    assert metrics.messages_shed._value.get() == 1

    bus.release()  # Kafka catches up: both are acked and the backlog is empty
    await settle()
    assert [f["cid"] for f in alice.of_type("ack")] == ["c1", "c2"]
    await router.handle(alice, '{"type": "private", "to": "bob", "text": "three", "cid": "c3"}')
    bus.release()
    await settle()
    assert [f["cid"] for f in alice.of_type("ack")][-1] == "c3", "accepted again once the backlog drained"
    stored = await router.parts.history.before("user:alice", None, 10)
    assert [m["text"] for m in stored] == ["one", "three"], "the refused attempt was not stored"
