"""The chaos workload's clients end when told to, whatever they were waiting for."""

from __future__ import annotations

import asyncio

import pytest
from chaoslib.workload import cancel_and_wait


async def _a_loop_that_swallows_one_cancellation(arrived: asyncio.Future[None]) -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the result instead of raising CancelledError
    when what it waits for completes in the same turn as the cancellation: a loop around it
    then goes on as if nothing happened."""
    try:
        await asyncio.shield(arrived)
    except asyncio.CancelledError:
        if not arrived.done():
            raise
    while True:  # a client's loop: wait for its connection to close, reconnect, ...
        await asyncio.sleep(3600)


@pytest.mark.gen_test
async def test_tasks_that_swallow_a_cancellation_still_end() -> None:
    """A 2,000 msg/s chaos run hung after its traffic: one client's welcome came as the run
    stopped it, its reconnect loop swallowed the cancellation, and the run waited for it forever."""
    arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_a_loop_that_swallows_one_cancellation(arrived))
    await asyncio.sleep(0)  # it waits for its welcome
    arrived.set_result(None)  # which arrives in the same turn as the stop
    ended = asyncio.create_task(cancel_and_wait([task]))
    done, _ = await asyncio.wait([ended], timeout=3)  # a bound that detects a hang, not a wait
    assert ended in done and task.cancelled()
