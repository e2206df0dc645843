"""The seams of exactly-once delivery, over in-memory parts: reconnect and resume while messages
flow, epochs after a store lost its data, membership acks, retries, and messages the bus brings
out of order, twice, or not at all."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest

from chatserver.envelope import Envelope
from chatserver.history import MemoryHistory
from chatserver.parts import CLOSE_RESET
from tests.fakes import FakeSession, MemoryCluster, settle


def Cluster(
    count: int = 2, resume_wait_s: float = 30.0, gap_wait_s: float = 0.05, history: Any = None
) -> MemoryCluster:
    """Sessions held after welcome for a resume, as in production (for ``resume_wait_s``)."""
    return MemoryCluster(count, resume_wait_s, gap_wait_s, history=history)


async def stored_private(history: MemoryHistory, i: int) -> bytes:
    """Message ``i`` from alice to bob, stored as another server would, as the bus carries it."""
    envelope = Envelope(
        kind="private", id=f"m{i}", sender="alice", text=f"t{i}", ts=1, to="bob", recipients=("bob", "alice")
    )
    stored = await history.store(envelope, None)
    return dataclasses.replace(envelope, offsets=stored.offsets, epochs=stored.epochs).to_bytes()


async def alice_wrote_bob_three() -> tuple[MemoryCluster, FakeSession, FakeSession]:
    """alice on ws-1 and bob on ws-2, both resumed; alice has sent bob offsets 1-3 of user:bob."""
    c = await Cluster().start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    for session, server in ((alice, 1), (bob, 2)):
        await c.send(session, server, {"type": "resume", "positions": {}})
    for i in range(3):
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"old {i}"})
    return c, alice, bob


def offsets(session: FakeSession, channel: str) -> list[int]:
    return [f["offset"] for f in session.of_type("message") if f["channel"] == channel]


@pytest.mark.gen_test
async def test_messages_published_between_welcome_and_resume_come_once_and_in_order() -> None:
    c = await Cluster().start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "resume", "positions": {}})
    for i in range(3):  # bob is away: offsets 1-3 of user:bob
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"away {i}"})
    bob = await c.join("bob", 2)
    assert bob.frames[0]["positions"]["user:bob"] == 3
    for i in range(3):  # after bob's welcome, before his resume: offsets 4-6, live
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"live {i}"})
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 1}, "cid": "r"})
    for i in range(2):
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"after {i}"})
    assert offsets(bob, "user:bob") == [2, 3, 4, 5, 6, 7, 8]
    resumed = bob.of_type("resumed")[0]
    assert resumed["recovered"] is True and resumed["cid"] == "r"
    assert bob.frames.index(resumed) > [f.get("offset") for f in bob.frames].index(6)  # replay, then resumed


@pytest.mark.gen_test
async def test_a_session_that_never_resumes_goes_live_from_its_welcome_after_the_wait() -> None:
    c = await Cluster(resume_wait_s=0.05).start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "early"})
    assert bob.of_type("message") == []  # held for a resume that may come
    deadline = asyncio.get_running_loop().time() + 5
    while not bob.of_type("message") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert [m["text"] for m in bob.of_type("message")] == ["early"]


@pytest.mark.gen_test
async def test_sending_a_message_ends_the_wait_for_resume() -> None:
    c = await Cluster().start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "early"})
    await c.send(bob, 2, {"type": "public", "text": "hello"})
    assert [m["text"] for m in bob.of_type("message")] == ["early", "hello"]


@pytest.mark.parametrize("resume_from", [1, 3])  # below the welcome's position (3), or at it
@pytest.mark.parametrize("went_live", ["the wait ran out", "bob sent a message"])
@pytest.mark.gen_test
async def test_a_late_resume_still_reads_in_order_from_the_clients_offset(went_live: str, resume_from: int) -> None:
    """A resume 1.5 s after welcome got offsets 9, 10, 7, 8: the live ones had gone out when the
    wait ended, and the replay sent only what was below them. After resume the channel must read
    as one increasing sequence with whatever was published since welcome, so what went out live
    is sent again in its place (the client drops the second copies by id)."""
    c = await Cluster(resume_wait_s=0.05).start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "resume", "positions": {}})
    for i in range(3):  # bob is away: offsets 1-3 of user:bob
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"away {i}"})
    bob = await c.join("bob", 2)
    if went_live == "bob sent a message":
        await c.send(bob, 2, {"type": "public", "text": "hi"})
    for i in range(2):  # offsets 4-5
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"live {i}"})
    deadline = asyncio.get_running_loop().time() + 5
    while offsets(bob, "user:bob") != [4, 5] and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert offsets(bob, "user:bob") == [4, 5]  # live, before any resume
    before = len(bob.frames)
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": resume_from}, "cid": "r"})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "after"})  # offset 6
    after_resume = [f["offset"] for f in bob.frames[before:] if f["type"] == "message" and f["channel"] == "user:bob"]
    assert after_resume == list(range(resume_from + 1, 7))
    assert bob.of_type("resumed")[0]["recovered"] is True


@pytest.mark.gen_test
async def test_a_live_message_while_a_late_resume_checks_its_channels_waits_for_the_replay() -> None:
    """A chaos run with Redis restarting: a late resume spent 0.7 s asking whether the user may
    read its channels, the live messages of that time went out at once, and the replay then
    sent older offsets after them. The channels are held from the moment the resume is read."""
    c = await Cluster(resume_wait_s=0.05).start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "resume", "positions": {}})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "away"})  # offset 1
    bob = await c.join("bob", 2)
    await c.send(bob, 2, {"type": "public", "text": "hi"})  # bob's channels go live
    parts = c.routers[1].parts  # ws-2
    asked, answer = asyncio.Event(), asyncio.Event()
    may_read = parts.may_read

    async def slow_may_read(user: str, channel: str) -> bool:
        asked.set()
        await answer.wait()  # the room store is slow to answer
        return await may_read(user, channel)

    parts.may_read = slow_may_read  # type: ignore[method-assign]
    before = len(bob.frames)
    resuming = asyncio.ensure_future(c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 0}, "cid": "r"}))
    await asyncio.wait_for(asked.wait(), 5)
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "meanwhile"})  # offset 2
    answer.set()
    await resuming
    await settle()
    after_resume = [f["offset"] for f in bob.frames[before:] if f["type"] == "message" and f["channel"] == "user:bob"]
    assert after_resume == [1, 2]


@pytest.mark.gen_test
async def test_a_resume_repeated_later_sends_nothing_twice() -> None:
    c = await Cluster().start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 0}})
    for i in range(3):
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"m{i}"})
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 1}})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "m3"})
    assert offsets(bob, "user:bob") == [1, 2, 3, 4]


@pytest.mark.gen_test
async def test_after_the_store_lost_its_data_a_session_is_told_to_resume_and_hears_of_the_gap() -> None:
    c, alice, bob = await alice_wrote_bob_three()
    assert offsets(bob, "user:bob") == [1, 2, 3]
    old_epochs = bob.frames[0]["epochs"]
    c.history.lose_everything()  # Redis restarted empty: offsets start over at 1
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "new"})
    # Offset 1 again: not dropped as "already seen", and not shown as if nothing happened.
    assert bob.closed is not None and bob.closed[0] == CLOSE_RESET
    again = await c.join("bob", 1)
    assert again.frames[0]["epochs"]["user:bob"] != old_epochs["user:bob"]
    await c.send(again, 1, {"type": "resume", "positions": {"user:bob": 3}, "epochs": old_epochs, "cid": "r"})
    resumed = again.of_type("resumed")[0]
    assert resumed["recovered"] is False and resumed["gaps"] == ["user:bob"]
    assert resumed["positions"]["user:bob"] == 1
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "newer"})
    assert [m["text"] for m in again.of_type("message")] == ["newer"]


@pytest.mark.gen_test
async def test_resume_with_the_current_epoch_replays_as_usual() -> None:
    c = await Cluster().start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "resume", "positions": {}})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "hi"})
    bob = await c.join("bob", 2)
    epochs = bob.frames[0]["epochs"]
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 0}, "epochs": epochs})
    assert [m["text"] for m in bob.of_type("message")] == ["hi"]
    assert bob.of_type("resumed")[0]["recovered"] is True


@pytest.mark.gen_test
async def test_join_and_leave_with_a_cid_are_acked() -> None:
    c = await Cluster(1).start()
    ann = await c.join("ann", 1)
    await c.send(ann, 1, {"type": "join", "room": "lobby", "cid": "j1"})
    await c.send(ann, 1, {"type": "leave", "room": "lobby", "cid": "l1"})
    assert [f for f in ann.of_type("ack")] == [
        {"type": "ack", "cid": "j1", "room": "lobby"},
        {"type": "ack", "cid": "l1", "room": "lobby"},
    ]


@pytest.mark.gen_test
async def test_the_same_cid_and_text_to_two_rooms_are_two_messages() -> None:
    c = await Cluster(1).start()
    ann = await c.join("ann", 1)
    await c.send(ann, 1, {"type": "resume", "positions": {}})
    for room in ("red", "blue"):
        await c.send(ann, 1, {"type": "join", "room": room})
    for room in ("red", "blue"):
        await c.send(ann, 1, {"type": "room", "room": room, "text": "same", "cid": "c1"})
    rooms = [m["room"] for m in ann.of_type("message")]
    assert rooms == ["red", "blue"]
    assert len(await c.history.before("room:blue", None, 10)) == 1


@pytest.mark.gen_test
async def test_messages_the_bus_brings_out_of_order_or_twice_reach_sessions_once_in_order() -> None:
    c = await Cluster(1).start()
    router = c.routers[0]
    bob = await c.join("bob", 1)
    await c.send(bob, 1, {"type": "resume", "positions": {}})
    envelopes = [await stored_private(c.history, i) for i in range(1, 5)]  # offsets 1-4 of user:bob
    for n in (2, 1, 1, 4, 3, 2):  # out of order, with copies
        router.on_bus_message(envelopes[n - 1])
    assert offsets(bob, "user:bob") == [1, 2, 3, 4]


@pytest.mark.gen_test
async def test_a_message_stored_and_never_published_is_read_from_history_into_its_place() -> None:
    c = await Cluster(1, gap_wait_s=0.01).start()
    router = c.routers[0]
    bob = await c.join("bob", 1)
    await c.send(bob, 1, {"type": "resume", "positions": {}})
    payloads = [await stored_private(c.history, i) for i in range(1, 4)]
    router.on_bus_message(payloads[0])
    router.on_bus_message(payloads[2])  # offset 2's server died between storing and publishing
    assert offsets(bob, "user:bob") == [1]
    deadline = asyncio.get_running_loop().time() + 5
    while len(offsets(bob, "user:bob")) < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert offsets(bob, "user:bob") == [1, 2, 3]
    assert [m["text"] for m in bob.of_type("message")] == ["t1", "t2", "t3"]


@pytest.mark.gen_test
async def test_a_private_message_replied_to_at_once_reaches_the_sender_without_waiting_for_its_own() -> None:
    """The sender's own copy never comes back to its server: its channel must move on anyway,
    or every reply would wait for a hole that never fills."""
    c = await Cluster(2, gap_wait_s=30).start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    for session, server in ((alice, 1), (bob, 2)):
        await c.send(session, server, {"type": "resume", "positions": {}})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "ping"})
    await c.send(bob, 2, {"type": "private", "to": "alice", "text": "pong"})
    assert [m["text"] for m in alice.of_type("message")] == ["pong"]
    assert offsets(alice, "user:alice") == [2]


@pytest.mark.gen_test
async def test_offsets_handed_out_again_after_a_crash_give_the_channel_a_new_epoch() -> None:
    """A Redis that crashed before its newest writes reached disk hands out their offsets again,
    in the same epoch: the session must not drop the new messages as copies of what it saw."""
    c, alice, bob = await alice_wrote_bob_three()
    old_epochs = bob.frames[0]["epochs"]
    for channel in ("user:alice", "user:bob"):
        c.history.lose_newest(channel, 2)  # offsets 2 and 3 are lost, and will be given again
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "new"})
    await settle()
    assert bob.closed is not None and bob.closed[0] == CLOSE_RESET
    again = await c.join("bob", 1)
    assert again.frames[0]["epochs"]["user:bob"] != old_epochs["user:bob"]
    await c.send(again, 1, {"type": "resume", "positions": {"user:bob": 3}, "epochs": old_epochs})
    resumed = again.of_type("resumed")[0]
    assert (resumed["recovered"], resumed["gaps"], resumed["positions"]["user:bob"]) == (False, ["user:bob"], 2)


class FlakyHistory(MemoryHistory):
    """A history whose reads of positions fail while ``down``."""

    down = False

    async def heads(self, channels: Any) -> Any:
        if self.down:
            from chatserver.history import HistoryError

            raise HistoryError("redis: connection refused")
        return await super().heads(channels)


@pytest.mark.gen_test
async def test_a_session_that_cannot_be_told_its_positions_is_asked_to_come_back_and_leaves_nothing_held() -> None:
    history = FlakyHistory()
    c = Cluster(1, history=history)
    await c.start()
    history.down = True
    first = await c.join("ann", 1)
    assert first.frames == [] and first.closed is not None and first.closed[0] == 1013
    c.routers[0].disconnect(first)
    history.down = False
    ann, ben = await c.join("ann", 1), await c.join("ben", 1)
    for session in (ann, ben):
        await c.send(session, 1, {"type": "resume", "positions": {}})
    await c.send(ben, 1, {"type": "public", "text": "hello"})
    assert [m["text"] for m in ann.of_type("message")] == ["hello"]


@pytest.mark.gen_test
async def test_a_session_told_of_a_new_epoch_gets_its_offsets_from_the_start_again() -> None:
    """Resuming an open session after its store lost everything: the new epoch's offsets 1, 2,
    3 are below what the session was sent of the old one, and must not be taken for copies."""
    c, alice, bob = await alice_wrote_bob_three()
    old_epochs = bob.frames[0]["epochs"]
    c.history.lose_everything()  # its next epoch sorts above the old one, even made at once
    await c.send(bob, 2, {"type": "resume", "positions": {"user:bob": 3}, "epochs": old_epochs})
    resumed = bob.of_type("resumed")[-1]
    assert (resumed["recovered"], resumed["gaps"], resumed["positions"]["user:bob"]) == (False, ["user:bob"], 0)
    for i in range(3):
        await c.send(alice, 1, {"type": "private", "to": "bob", "text": f"new {i}"})
    assert [m["text"] for m in bob.of_type("message")][-3:] == ["new 0", "new 1", "new 2"]


@pytest.mark.gen_test
async def test_a_client_that_saw_offsets_its_store_lost_gives_the_channel_a_new_epoch() -> None:
    """A store that lost its newest writes in the same epoch (a machine crash under Redis) would
    hand those offsets out again: a client that resumes from beyond the head says so, and the
    channel gets a new epoch, so nobody takes the new messages for the ones they saw."""
    c, alice, bob = await alice_wrote_bob_three()
    old_epochs = bob.frames[0]["epochs"]
    bob.close(1000, "")
    c.routers[1].disconnect(bob)
    for channel in ("user:alice", "user:bob"):
        c.history.lose_newest(channel, 2)
    again = await c.join("bob", 2)
    await c.send(again, 2, {"type": "resume", "positions": {"user:bob": 3}, "epochs": old_epochs})
    resumed = again.of_type("resumed")[-1]
    assert (resumed["recovered"], resumed["gaps"]) == (False, ["user:bob"])
    assert resumed["epochs"]["user:bob"] != old_epochs["user:bob"], "offsets 2 and 3 will be given again"
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "new"})
    new = again.of_type("message")[-1]
    assert (new["text"], new["offset"]) == ("new", 2)


@pytest.mark.gen_test
async def test_the_wait_for_resume_outlasts_a_loop_that_runs_late() -> None:
    """Under overload the loop runs late: the wait's timer comes due while the client's resume,
    sent in time, is still being read. A late timer waits as long again instead of releasing
    live messages ahead of the replay."""
    c = await Cluster(resume_wait_s=0.05).start()
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "resume", "positions": {}})
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "before"})  # offset 1
    bob = await c.join("bob", 2)
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "live"})  # offset 2, held

    async def resume_being_read() -> None:  # a frame takes a few loop turns to read
        for _ in range(3):
            await asyncio.sleep(0)
        await c.routers[1].handle(bob, json.dumps({"type": "resume", "positions": {"user:bob": 0}}))

    asyncio.get_running_loop().call_soon(time.sleep, 0.2)  # the loop is 0.2 s late
    await asyncio.ensure_future(resume_being_read())
    await settle()
    assert offsets(bob, "user:bob") == [1, 2]


@pytest.mark.gen_test
async def test_a_session_whose_rooms_cannot_be_read_is_asked_to_come_back() -> None:
    """Greeted without its rooms, a session would get their messages live with no position
    to count from, and its resume would replay some of them again."""
    from chatserver.rooms import MemoryRooms, RoomsError

    class DownRooms(MemoryRooms):
        async def rooms_of(self, user: str) -> list[str]:
            raise RoomsError("redis: connection refused")

    c = Cluster(1)
    for router in c.routers:
        router.parts.rooms = DownRooms()
    await c.start()
    ann = await c.join("ann", 1)
    assert ann.frames == [] and ann.closed is not None and ann.closed[0] == 1013
