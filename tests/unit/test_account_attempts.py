"""The attempt window of the in-memory account store: a minute from the first attempt."""

from __future__ import annotations

import pytest

from chatserver.accounts import ATTEMPT_WINDOW_S, MemoryAccountStore


@pytest.mark.gen_test
async def test_a_window_lasts_a_minute_from_its_first_attempt() -> None:
    now = [1000.0]
    store = MemoryAccountStore(clock=lambda: now[0])
    assert [await store.attempt("ip:a") for _ in range(3)] == [1, 2, 3]
    assert await store.attempt("user:b") == 1, "each key counts alone"
    now[0] += ATTEMPT_WINDOW_S - 1
    assert await store.attempt("ip:a") == 4, "still the first window"
    now[0] += 1
    assert await store.attempt("ip:a") == 1, "a new window"
