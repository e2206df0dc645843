"""Rooms you can find (this server's addition): ``rooms`` lists the rooms with their member
counts, and ``who`` with a room names all its members besides those online."""

from __future__ import annotations

import pytest

from chatserver import protocol as p
from chatserver.codec import JSON
from chatserver.rooms import MemoryRooms
from tests.fakes import MemoryCluster, settle


def test_a_rooms_frame_needs_nothing_but_its_type() -> None:
    assert p.decode_frame('{"type": "rooms", "cid": "r"}', JSON) == p.RoomsFrame(cid="r")


@pytest.mark.gen_test
async def test_the_directory_lists_rooms_by_members_and_drops_empty_ones() -> None:
    c = await MemoryCluster(2).start()
    ann, ben, cy = await c.join("ann", 1), await c.join("ben", 2), await c.join("cy", 2)
    for session, server, room in ((ann, 1, "club"), (ben, 2, "club"), (cy, 2, "quiet"), (ann, 1, "zoo")):
        await c.send(session, server, {"type": "join", "room": room})
    await c.send(cy, 2, {"type": "rooms", "cid": "r"})  # anyone may look, members or not
    assert cy.of_type("rooms")[-1] == {
        "type": "rooms",
        "rooms": [{"room": "club", "members": 2}, {"room": "quiet", "members": 1}, {"room": "zoo", "members": 1}],
        "cid": "r",
    }
    await c.send(cy, 2, {"type": "leave", "room": "quiet"})
    await c.send(ben, 2, {"type": "rooms"})
    assert [r["room"] for r in ben.of_type("rooms")[-1]["rooms"]] == ["club", "zoo"]


@pytest.mark.gen_test
async def test_who_in_a_room_names_every_member_and_those_online() -> None:
    c = await MemoryCluster(2).start()
    ann, ben = await c.join("ann", 1), await c.join("ben", 2)
    for session, server in ((ann, 1), (ben, 2)):
        await c.send(session, server, {"type": "join", "room": "club"})
    c.routers[1].disconnect(ben)  # ben goes offline, still a member
    await settle()
    await c.send(ann, 1, {"type": "who", "room": "club", "cid": "w"})
    answer = ann.of_type("who")[-1]
    assert (answer["users"], answer["members"]) == (["ann"], ["ann", "ben"])


@pytest.mark.gen_test
async def test_the_directory_is_capped_and_ranked() -> None:
    rooms = MemoryRooms()
    for i in range(5):
        for user in range(i + 1):
            await rooms.join(f"u{user}", f"r{i}")
    assert await rooms.directory(3) == [("r4", 5), ("r3", 4), ("r2", 3)]
