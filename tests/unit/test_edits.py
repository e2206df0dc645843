"""Edit and delete (protocol version 2): by the author only, stored in every channel of the
message with the next offsets, acked, delivered live to its audience, and returned by history
and resume like any message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import FakeSession, MemoryCluster


async def started(count: int = 2) -> MemoryCluster:
    return await MemoryCluster(count).start()


def last(session: FakeSession, kind: str) -> dict[str, Any]:
    return session.of_type(kind)[-1]


@pytest.mark.gen_test
async def test_the_author_edits_and_deletes_a_private_message_on_both_sides() -> None:
    c = await started()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    alice_too = await c.join("alice", 2)  # another device of the author
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "helo", "cid": "m"})
    original = last(bob, "message")
    await c.send(alice, 1, {"type": "edit", "channel": "user:alice", "id": original["id"], "text": "hello", "cid": "e"})
    ack = last(alice, "ack")
    for session, channel in ((bob, "user:bob"), (alice_too, "user:alice")):
        change = last(session, "message")
        assert (change["kind"], change["ref"], change["text"], change["channel"]) == (
            "edit",
            original["id"],
            "hello",
            channel,
        )
        assert change["id"] == ack["id"] and change["id"] != original["id"]
    assert (ack["cid"], ack["channel"]) == ("e", "user:alice")
    await c.send(alice, 1, {"type": "delete", "channel": "user:bob", "id": original["id"], "cid": "d"})
    deleted = last(bob, "message")
    assert (deleted["kind"], deleted["ref"], "text" in deleted) == ("delete", original["id"], False)
    assert [m["offset"] for m in bob.of_type("message")] == [1, 2, 3]  # the next offsets
    page = await c.history.before("user:bob", None, 10)
    assert [m["kind"] for m in page] == ["private", "edit", "delete"]
    later = await c.join("bob", 1)  # a device that resumes gets the changes too
    await c.send(later, 1, {"type": "resume", "positions": {"user:bob": 0}})
    assert [m["kind"] for m in later.of_type("message")] == ["private", "edit", "delete"]


@pytest.mark.gen_test
async def test_only_the_author_may_change_a_message() -> None:
    c = await started()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "mine"})
    original = last(bob, "message")
    await c.send(bob, 2, {"type": "edit", "channel": "user:bob", "id": original["id"], "text": "yours", "cid": "e"})
    error = last(bob, "error")
    assert (error["code"], error["cid"]) == ("forbidden", "e")
    assert [m["kind"] for m in await c.history.before("user:bob", None, 10)] == ["private"]


@pytest.mark.gen_test
async def test_changing_a_message_that_is_not_there_is_a_bad_frame() -> None:
    c = await started(1)
    alice = await c.join("alice", 1)
    await c.send(alice, 1, {"type": "delete", "channel": "public", "id": "nope", "cid": "d"})
    assert (last(alice, "error")["code"], last(alice, "error")["cid"]) == ("bad_frame", "d")
    await c.send(alice, 1, {"type": "edit", "channel": "public", "id": "x", "cid": "e"})  # no text
    assert last(alice, "error")["code"] == "bad_frame"


@pytest.mark.gen_test
async def test_edits_of_public_and_room_messages_reach_their_audience() -> None:
    c = await started()
    ann, ben, cy = await c.join("ann", 1), await c.join("ben", 2), await c.join("cy", 2)
    for session, server in ((ann, 1), (ben, 2)):
        await c.send(session, server, {"type": "join", "room": "club"})
    await c.send(ann, 1, {"type": "public", "text": "hi all"})
    await c.send(ann, 1, {"type": "room", "room": "club", "text": "hi club"})
    public, room = last(cy, "message"), last(ben, "message")
    await c.send(ann, 1, {"type": "edit", "channel": "public", "id": public["id"], "text": "hi everyone"})
    await c.send(ann, 1, {"type": "edit", "channel": "room:club", "id": room["id"], "text": "hi, club"})
    assert [(m["kind"], m["channel"]) for m in cy.of_type("message")] == [("public", "public"), ("edit", "public")]
    edits = [m for m in ben.of_type("message") if m["kind"] == "edit"]
    assert [(m["channel"], m["text"]) for m in edits] == [("public", "hi everyone"), ("room:club", "hi, club")]
