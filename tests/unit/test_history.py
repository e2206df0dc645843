"""The history contract, checked on the in-memory store (tests/integration runs it on Redis)."""

from __future__ import annotations

import pytest

from chatserver.envelope import Envelope
from chatserver.history import History, HistoryError, MemoryHistory, Retention, new_epoch


def public(i: int, ts: int = 1_000) -> Envelope:
    return Envelope("public", f"id{i}", "alice", f"m{i}", ts)


def private(i: int, sender: str = "alice", to: str = "bob") -> Envelope:
    return Envelope("private", f"p{i}", sender, f"t{i}", 1_000, to=to, recipients=(to, sender))


async def check_offsets_grow_by_one_per_channel(history: History) -> None:
    assert (await history.store(public(1), None)).offsets == (("public", 1),)
    assert (await history.store(public(2), None)).offsets == (("public", 2),)
    stored = await history.store(private(1), None)
    assert stored.offsets == (("user:bob", 1), ("user:alice", 1))
    assert (await history.store(private(2, "carol", "alice"), None)).offsets == (("user:alice", 2), ("user:carol", 1))
    assert await history.latest(["public", "user:alice", "user:zed"]) == {"public": 2, "user:alice": 2, "user:zed": 0}


async def check_reads_page_in_offset_order(history: History) -> None:
    for i in range(1, 8):
        await history.store(public(i), None)
    older = await history.before("public", None, 3)
    assert [m["offset"] for m in older] == [5, 6, 7]
    assert older[0] == {
        "type": "message",
        "id": "id5",
        "channel": "public",
        "offset": 5,
        "kind": "public",
        "from": "alice",
        "text": "m5",
        "ts": 1000,
    }
    assert [m["offset"] for m in await history.before("public", 5, 3)] == [2, 3, 4]
    assert [m["offset"] for m in await history.before("public", 2, 3)] == [1]
    newer, first = await history.after("public", 4, 2)
    assert ([m["offset"] for m in newer], first) == ([5, 6], 1)
    assert await history.after("public", 7, 10) == ([], 1)
    assert await history.after("room:none", 0, 10) == ([], 0)


async def check_a_retry_is_stored_once(history: History) -> None:
    first = await history.store(private(1), "fp-1")
    again = await history.store(
        Envelope("private", "other-id", "alice", "t1", 2_000, to="bob", recipients=("bob", "alice")), "fp-1"
    )
    assert again.duplicate and (again.id, again.ts, again.offsets) == (first.id, first.ts, first.offsets)
    other = await history.store(private(2), "fp-2")
    assert not other.duplicate and other.offsets == (("user:bob", 2), ("user:alice", 2))


async def check_retention_keeps_the_newest(history: History) -> None:
    for i in range(1, 13):
        await history.store(public(i, ts=0), None)  # all old: only min_keep survive
    kept, first = await history.after("public", 0, 100)
    assert [m["offset"] for m in kept] == [8, 9, 10, 11, 12] and first == 8


CHECKS = [
    check_offsets_grow_by_one_per_channel,
    check_reads_page_in_offset_order,
    check_a_retry_is_stored_once,
]


@pytest.mark.gen_test
@pytest.mark.parametrize("sharded", [False, True], ids=["one-store", "sharded"])
@pytest.mark.parametrize("check", CHECKS)
async def test_memory_history(check, sharded: bool) -> None:  # type: ignore[no-untyped-def]
    await check(MemoryHistory(sharded=sharded))


async def check_each_channel_has_the_message_once(history: History, message_id: str) -> None:
    for channel in ("user:alice", "user:bob"):
        stored = await history.after(channel, 0, 100)
        assert [m["id"] for m in stored[0]] == [message_id], f"{channel} holds {stored[0]}"


@pytest.mark.gen_test
@pytest.mark.parametrize("failing", ["user:alice", "user:bob"])
async def test_a_retry_after_a_failure_between_the_two_channels_fills_the_gap_and_doubles_nothing(failing: str) -> None:
    history = MemoryHistory(sharded=True)
    history.fail_in = {failing}
    with pytest.raises(HistoryError):
        await history.store(private(1), "fp-1")
    retry = Envelope("private", "second-id", "alice", "t1", 2_000, to="bob", recipients=("bob", "alice"))
    stored = await history.store(retry, "fp-1")
    # The first channel in sorted order (user:alice) gave the id: the first attempt's when it was
    # stored there before the failure, the retry's when the failure came first.
    expected = "p1" if failing == "user:bob" else "second-id"
    assert stored.id == expected and stored.offsets == (("user:bob", 1), ("user:alice", 1))
    await check_each_channel_has_the_message_once(history, expected)
    again = await history.store(
        Envelope("private", "third-id", "alice", "t1", 3_000, to="bob", recipients=("bob", "alice")), "fp-1"
    )
    assert again.duplicate and (again.id, again.offsets) == (expected, stored.offsets)
    await check_each_channel_has_the_message_once(history, expected)


@pytest.mark.gen_test
async def test_memory_history_retention() -> None:
    await check_retention_keeps_the_newest(MemoryHistory(Retention(min_keep=5, max_keep=100, keep_s=60)))


# ------------------------------------------------------------------------------ epochs sort in the order made


FROZEN = 1_800_000_000.0  # every epoch below is made in the same microsecond


def test_an_epoch_made_after_another_sorts_above_it_even_in_the_same_microsecond() -> None:
    first = new_epoch(lambda: FROZEN)
    for _ in range(200):  # random bits alone would put about half of them below
        assert new_epoch(lambda: FROZEN, after=first) > first


def test_a_renewal_by_a_server_whose_clock_is_behind_still_sorts_above_the_stale_epoch() -> None:
    made_ahead = new_epoch(lambda: FROZEN + 3600)  # by a server an hour ahead
    assert new_epoch(lambda: FROZEN, after=made_ahead) > made_ahead


def test_an_epoch_of_the_earlier_format_is_passed_by_any_new_one() -> None:
    earlier = "019ad8ecf8003c1f9a2e"  # milliseconds and 32 random bits, as made before 2026-12-02
    assert new_epoch(lambda: 1_764_600_000.0) > earlier
    assert len(new_epoch()) == len(earlier)


@pytest.mark.gen_test
async def test_a_renewed_epoch_sorts_above_the_one_it_replaces() -> None:
    h = MemoryHistory(clock=lambda: FROZEN)
    for _ in range(50):
        stale = (await h.heads(["public"]))["public"].epoch
        assert await h.renew_epoch("public", stale) > stale


@pytest.mark.gen_test
async def test_a_store_that_lost_everything_makes_its_next_epochs_above_the_old_ones() -> None:
    h = MemoryHistory(clock=lambda: FROZEN)
    for i in range(50):
        old = (await h.store(Envelope(kind="public", id=f"id-{i}", sender="ann", text="t", ts=1), None)).epochs
        h.lose_everything()  # Redis restarted empty within the microsecond: its clock still moved on
        new = (await h.store(Envelope(kind="public", id=f"id-{i}b", sender="ann", text="t", ts=1), None)).epochs
        assert dict(new)["public"] > dict(old)["public"]
