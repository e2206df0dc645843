"""The outbox: frames of one loop turn leave as one write per socket, in order."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from chatserver.web.outbox import Outbox
from chatserver.web.socket import ChatSocket


class Socket:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def write_now(self, chunks: list[bytes]) -> None:
        self.writes.append(list(chunks))


def sock(s: Socket) -> ChatSocket:
    return cast(ChatSocket, s)


@pytest.mark.gen_test
async def test_frames_of_one_turn_are_one_write_per_socket_in_order() -> None:
    outbox, a, b = Outbox(), Socket(), Socket()
    for data in (b"1", b"2", b"3"):
        outbox.put(sock(a), data)
    outbox.put(sock(b), b"x")
    assert a.writes == [] and b.writes == [], "nothing is written before the turn ends"
    await asyncio.sleep(0)
    assert a.writes == [[b"1", b"2", b"3"]] and b.writes == [[b"x"]]
    outbox.put(sock(a), b"4")
    await asyncio.sleep(0)
    assert a.writes[-1] == [b"4"], "a later turn is a later write"


@pytest.mark.gen_test
async def test_flushing_one_socket_leaves_the_others_for_the_turn() -> None:
    outbox, a, b = Outbox(), Socket(), Socket()
    outbox.put(sock(a), b"bye")
    outbox.put(sock(b), b"stay")
    outbox.flush(sock(a))  # as close() does before the close frame
    assert a.writes == [[b"bye"]] and b.writes == []
    await asyncio.sleep(0)
    assert b.writes == [[b"stay"]] and a.writes == [[b"bye"]]
