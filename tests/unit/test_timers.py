"""The timers every socket shares: token deadlines from one timer, in order, replaced and dropped."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from chatserver.web.timers import COMPACT_AFTER, Deadlines
from tests.fakes import until


class Session:
    def __init__(self, user: str, log: list[str], fail: bool = False) -> None:
        self.user = user
        self._log = log
        self._fail = fail

    def keepalive(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def expire(self) -> None:
        self._log.append(self.user)
        if self._fail:
            raise RuntimeError("a bug in one connection")


@pytest.mark.gen_test(timeout=10)
async def test_sessions_expire_in_the_order_of_their_deadlines() -> None:
    deadlines, log = Deadlines(), list[str]()
    now = time.time()
    for user, after in (("late", 0.15), ("early", 0.02), ("middle", 0.08)):
        deadlines.set(Session(user, log), now + after)
    await until(lambda: len(log) == 3, f"only {log} expired")
    assert log == ["early", "middle", "late"]
    assert len(deadlines) == 0


@pytest.mark.gen_test(timeout=10)
async def test_a_renewed_deadline_replaces_the_old_one_and_a_discarded_one_never_comes() -> None:
    deadlines, log = Deadlines(), list[str]()
    now = time.time()
    renewed, gone, witness = Session("renewed", log), Session("gone", log), Session("witness", log)
    deadlines.set(renewed, now + 0.02)
    deadlines.set(gone, now + 0.02)
    deadlines.set(witness, now + 0.1)
    deadlines.set(renewed, now + 3600)  # a refresh frame moved it an hour on
    deadlines.discard(gone)  # closed
    await until(lambda: log, "the witness never expired")
    assert log == ["witness"]
    assert len(deadlines) == 1, "the renewed one still waits"


@pytest.mark.gen_test(timeout=10)
async def test_one_timer_serves_every_session_and_a_dropped_session_is_not_kept_alive() -> None:
    deadlines, log = Deadlines(), list[str]()
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]  # the loop's heap of timers
    sessions = [Session(f"u{i}", log) for i in range(1000)]
    for i, session in enumerate(sessions):
        deadlines.set(session, time.time() + 600 + i)
    assert len(loop._scheduled) - before == 1, "one timer, not one per session"  # type: ignore[attr-defined]
    ref = weakref.ref(sessions[0])
    deadlines.discard(sessions[0])
    del sessions[0]
    gc.collect()
    assert ref() is None, "its entry waits in the heap; the session does not"
    for session in sessions:
        deadlines.discard(session)


@pytest.mark.gen_test(timeout=10)
async def test_a_session_failing_to_close_does_not_stop_the_others() -> None:
    deadlines, log = Deadlines(), list[str]()
    now = time.time()
    deadlines.set(Session("bad", log, fail=True), now + 0.01)
    deadlines.set(Session("good", log), now + 0.03)
    await until(lambda: len(log) == 2, f"only {log} expired")
    assert log == ["bad", "good"]


@pytest.mark.gen_test(timeout=10)
async def test_sessions_that_come_and_go_within_their_tokens_do_not_grow_the_heap() -> None:
    deadlines, log = Deadlines(), list[str]()
    staying = Session("staying", log)
    deadlines.set(staying, time.time() + 3600)
    for i in range(10_000):  # each connects with an hour-long token and leaves a moment later
        session = Session(f"u{i}", log)
        deadlines.set(session, time.time() + 3600)
        deadlines.set(session, time.time() + 7200)  # and renews it once
        deadlines.discard(session)
    assert len(deadlines._heap) <= 2 * COMPACT_AFTER + 2, "dropped entries are swept, not kept for an hour"
    assert len(deadlines) == 1
    deadlines.set(staying, time.time() + 0.01)
    await until(lambda: log, "the staying session never expired")
    assert log == ["staying"]
