"""The hub: a user's sessions on this server, and delivery to them."""

from __future__ import annotations

from chatserver import frames
from chatserver.codec import OutFrame
from chatserver.hub import Hub
from tests.fakes import FakeSession


def test_first_and_last_session_of_a_user_are_reported() -> None:
    hub = Hub()
    a1, a2 = FakeSession("alice"), FakeSession("alice")
    assert hub.add(a1) is True
    assert hub.add(a2) is False
    assert len(hub) == 2 and list(hub.users()) == ["alice"]
    assert hub.remove(a1) is False
    assert hub.remove(a1) is False  # twice is harmless
    assert hub.remove(a2) is True
    assert len(hub) == 0 and not hub.has_user("alice")


def test_deliver_skips_the_origin_session_and_broadcast_reaches_all() -> None:
    hub = Hub()
    a1, a2, b = FakeSession("alice"), FakeSession("alice"), FakeSession("bob")
    for s in (a1, a2, b):
        hub.add(s)
    assert hub.deliver("alice", frames.pong(None), skip=a1.id) == 1
    assert (len(a1.frames), len(a2.frames)) == (0, 1)
    assert hub.deliver("carol", frames.pong(None)) == 0
    assert hub.broadcast(frames.pong("x")) == 3
    assert all(s.frames[-1] == {"type": "pong", "cid": "x"} for s in (a1, a2, b))


def test_reaches_says_whether_anyone_but_the_skipped_session_is_here() -> None:
    hub = Hub()
    a1, a2 = FakeSession("alice"), FakeSession("alice")
    hub.add(a1)
    assert hub.reaches("alice") and not hub.reaches("alice", skip=a1.id)
    assert not hub.reaches("bob")
    hub.add(a2)
    assert hub.reaches("alice", skip=a1.id)


def test_a_held_session_gets_nothing_before_release_then_everything_in_order() -> None:
    hub = Hub()
    new = FakeSession("ann")
    hub.add(new)
    hub.hold(new, ["public"], everything=True)
    event = OutFrame({"type": "presence", "user": "ben", "status": "online"})
    old = OutFrame({"type": "message", "channel": "public", "offset": 3})
    fresh = OutFrame({"type": "message", "channel": "public", "offset": 4})
    for frame in (event, old, fresh):
        hub.broadcast(frame)
    assert new.frames == []
    new.send(frames.pong("welcome first"))
    hub.place(new, {"public": 3})  # offsets up to 3 are history to this session
    hub.release(new)
    assert [f.get("offset", f["type"]) for f in new.frames] == ["pong", "presence", 4]
