"""Reactions (this server's addition): anyone who may read a message reacts to it with one of a
small set of emoji, or takes the reaction back; stored in every channel of the message with the
next offsets, acked, delivered live to its audience, returned by history and resume."""

from __future__ import annotations

from typing import Any

import pytest

from chatserver import protocol as p
from chatserver.codec import JSON
from tests.fakes import FakeSession, MemoryCluster

THUMBS, HEART = "\U0001f44d", "\u2764\ufe0f"


def last(session: FakeSession, kind: str) -> dict[str, Any]:
    return session.of_type(kind)[-1]


def test_a_react_frame_names_a_message_and_one_of_the_reactions() -> None:
    frame = p.decode_frame(f'{{"type": "react", "channel": "public", "id": "m1", "emoji": "{THUMBS}"}}', JSON)
    assert frame == p.ReactFrame(channel="public", id="m1", emoji=THUMBS)
    taken_back = p.decode_frame(
        '{"type": "react", "channel": "room:a", "id": "m", "emoji": "\U0001f389", "remove": true}', JSON
    )
    assert isinstance(taken_back, p.ReactFrame) and taken_back.remove
    for bad in (
        '{"type": "react", "channel": "public", "id": "m", "emoji": "<b>"}',  # not one of the set
        '{"type": "react", "channel": "public", "id": "m"}',  # no emoji
        f'{{"type": "react", "channel": "elsewhere", "id": "m", "emoji": "{THUMBS}"}}',
        f'{{"type": "react", "channel": "public", "emoji": "{THUMBS}"}}',  # no id
        f'{{"type": "react", "channel": "public", "id": "m", "emoji": "{THUMBS}", "remove": 1}}',
    ):
        with pytest.raises(p.ProtocolError) as info:
            p.decode_frame(bad, JSON)
        assert info.value.code == p.BAD_FRAME, bad


@pytest.mark.gen_test
async def test_the_recipient_reacts_to_a_private_message_and_both_sides_see_it() -> None:
    c = await MemoryCluster(2).start()
    alice, bob = await c.join("alice", 1), await c.join("bob", 2)
    bob_too = await c.join("bob", 1)  # another device of the one who reacts
    await c.send(alice, 1, {"type": "private", "to": "bob", "text": "lunch?", "cid": "m"})
    original = last(bob, "message")
    react = {"type": "react", "channel": "user:bob", "id": original["id"], "emoji": THUMBS, "cid": "r"}
    await c.send(bob, 2, react)
    ack = last(bob, "ack")
    assert (ack["cid"], ack["channel"]) == ("r", "user:bob")
    for session, channel in ((alice, "user:alice"), (bob_too, "user:bob")):
        seen = last(session, "message")
        assert (seen["kind"], seen["ref"], seen["emoji"], seen["from"], seen["channel"]) == (
            "react",
            original["id"],
            THUMBS,
            "bob",
            channel,
        )
        assert "text" not in seen and seen["id"] == ack["id"]
    await c.send(bob, 2, {**react, "remove": True, "cid": "u"})
    assert (last(alice, "message")["kind"], last(alice, "message")["emoji"]) == ("unreact", THUMBS)
    assert [m["offset"] for m in alice.of_type("message")] == [2, 3]  # after her message (acked, offset 1)
    page = await c.history.before("user:alice", None, 10)
    assert [m["kind"] for m in page] == ["private", "react", "unreact"]
    later = await c.join("alice", 2)  # a device that resumes gets the reactions too
    await c.send(later, 2, {"type": "resume", "positions": {"user:alice": 0}})
    assert [m["kind"] for m in later.of_type("message")] == ["private", "react", "unreact"]


@pytest.mark.gen_test
async def test_only_who_may_read_a_message_may_react_to_it() -> None:
    c = await MemoryCluster(2).start()
    ann, ben, eve = await c.join("ann", 1), await c.join("ben", 2), await c.join("eve", 2)
    for session, server in ((ann, 1), (ben, 2)):
        await c.send(session, server, {"type": "join", "room": "club"})
    await c.send(ann, 1, {"type": "room", "room": "club", "text": "members only"})
    await c.send(ann, 1, {"type": "private", "to": "ben", "text": "just us"})
    room_msg, private_msg = ben.of_type("message")[-2:]
    await c.send(eve, 2, {"type": "react", "channel": "room:club", "id": room_msg["id"], "emoji": HEART, "cid": "a"})
    await c.send(eve, 2, {"type": "react", "channel": "user:ann", "id": private_msg["id"], "emoji": HEART, "cid": "b"})
    assert [(e["code"], e["cid"]) for e in eve.of_type("error")] == [("forbidden", "a"), ("forbidden", "b")]
    assert [m["kind"] for m in await c.history.before("room:club", None, 10)] == ["room"]
    # a member reacts: the room's members get it, eve does not
    await c.send(ben, 2, {"type": "react", "channel": "room:club", "id": room_msg["id"], "emoji": HEART})
    assert (last(ann, "message")["kind"], last(ann, "message")["emoji"]) == ("react", HEART)
    assert [m for m in eve.of_type("message") if m.get("kind") == "react"] == []
    # a reaction is not a message one can react to
    reaction = last(ann, "message")
    await c.send(ann, 1, {"type": "react", "channel": "room:club", "id": reaction["id"], "emoji": HEART, "cid": "c"})
    assert (last(ann, "error")["code"], last(ann, "error")["cid"]) == ("bad_frame", "c")
