"""The sequencer on its own: live messages in offset order, holes read from history."""

from __future__ import annotations

import pytest

from chatserver.sequencer import Sequencer
from tests.fakes import settle


class Recorder:
    """What the sequencer handed on, and what it asked history for."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.fills: list[tuple[int, int]] = []

    def deliver(self, offset: int):  # type: ignore[no-untyped-def]
        return lambda: self.delivered.append(offset)

    async def fill(self, channel: str, after: int, upto: int) -> list:  # type: ignore[type-arg]
        self.fills.append((after, upto))
        return [(o, f"m{o}", self.deliver(o)) for o in range(after + 1, upto + 1)]


@pytest.mark.gen_test
async def test_a_hole_that_fills_itself_as_its_timer_fires_leaves_later_holes_fillable() -> None:
    """At 2,000 msg/s a hole's timer fired, and the missing message arrived live before the
    task that reads history ran: that task found nothing waiting, failed, and left the channel
    marked as filling, so no later hole of it was ever read from history and its messages were
    held for good."""
    r = Recorder()
    seq = Sequencer(r.fill, on_reset=lambda c: None, on_reuse=lambda c, e: None, gap_wait_s=0)
    seq.expect("c")
    seq.start("c", "e1", 0)
    seq.offer("c", "e1", 2, "m2", r.deliver(2))  # 1 is late: the hole's timer starts
    for _ in range(50):  # loop turns (no clock): until the timer has fired and made its task
        if seq._tasks:
            break
        await settle(1)
    assert seq._tasks, "the hole's timer made a task to read history"
    seq.offer("c", "e1", 1, "m1", r.deliver(1))  # ...and then 1 arrives, before that task runs
    await settle()
    assert r.delivered == [1, 2]
    seq.offer("c", "e1", 4, "m4", r.deliver(4))  # 3 was stored and never published
    await settle(50)
    assert r.fills[-1:] == [(2, 3)], "the next hole is read from history"
    assert r.delivered == [1, 2, 3, 4]
