"""Stored messages: per-channel offsets and history, the source of recovery.

``store`` gives a message its offset in each of its channels and appends it to their logs
in one atomic step, so offsets grow by exactly one per message and channel, cluster-wide,
and every offset ever handed out up to the latest one is in the log (until trimmed). A log
keeps at least the newest ``min_keep`` messages or everything younger than ``keep_s``,
whichever is more, and never more than ``max_keep``.

``store`` also recognises a retry: the same user sending the same message (same ``cid``,
kind, recipient and text) within ``dedupe_s`` gets the first attempt's id and offsets back,
so a client that retries after an error or a lost ack never creates a second message.

Every channel has an *epoch*: a string that changes whenever the channel's offsets start
over because its storage lost them (a Redis that restarted empty). An offset means something
only together with its epoch; a client that resumes with an old epoch is told its channel has a
gap instead of being replayed the wrong messages. Epochs sort in the order they were made: the
store makes them on its own clock (Redis's, not each server's), and an epoch that replaces
another sorts above it, whatever the clocks say.

On a sharded store (a Redis Cluster) the channels of a message live on different shards, and
no step is atomic across them: ``store_each`` stores a private message in each of its two
channels on its own, with the same id. Each channel's store recognises its own retry, so a
retry after a failure between the two fills in the missing one and never doubles the other.

The Redis implementation is ``redishistory.RedisHistory``; ``MemoryHistory`` here is its
in-process twin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatserver.envelope import Envelope

Clock = Callable[[], float]
Message = dict[str, Any]


class HistoryError(Exception):
    """The store could not be reached or answered badly."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a message was stored; ``duplicate`` when it is a retry of an earlier one."""

    id: str
    ts: int
    offsets: tuple[tuple[str, int], ...]
    duplicate: bool = False
    epochs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Head:
    """A channel's newest offset (0 before its first message) and its epoch."""

    offset: int
    epoch: str


#: How long a message's id alone (no ``cid``) recognises a second run of its store: long enough
#: for a client library's retry of a command whose reply was lost, short enough to cost no memory.
RERUN_WINDOW_MS = 10_000


#: An epoch: 13 hex digits of the microsecond it was made, then 7 of random bits (20 in all, as
#: the earlier milliseconds + 32 bits were; any new epoch sorts above one of those).
EPOCH_TIME_DIGITS, EPOCH_RANDOM_BITS = 13, 28


def epoch_bits() -> str:
    """An epoch's random part (the store adds its time)."""
    return f"{random.getrandbits(EPOCH_RANDOM_BITS):07x}"


def new_epoch(clock: Clock = time.time, after: str = "") -> str:
    """A fresh epoch: the microsecond it was made, then random bits. Later epochs sort higher;
    one made ``after`` another sorts above it even in the same microsecond, or on a clock
    behind the one that made it."""
    made = int(clock() * 1_000_000)
    with contextlib.suppress(ValueError):  # unless there is no earlier epoch ("") or not one of ours
        made = max(made, int(after[:EPOCH_TIME_DIGITS], 16) + 1)
    return f"{made:013x}{epoch_bits()}"


@dataclass(frozen=True, slots=True)
class Retention:
    min_keep: int = 1000
    max_keep: int = 10_000
    keep_s: float = 24 * 3600
    dedupe_s: float = 300
    idle_s: float = 30 * 24 * 3600  # a channel with no new message for this long is deleted (Redis)


class History(Protocol):
    async def store(self, envelope: Envelope, fingerprint: str | None) -> Stored:
        """Assign offsets in ``envelope.channels()`` and append; or find the earlier attempt.
        On one Redis the store is queued when this is called, not when awaited: a look-up
        called right after it travels behind it in the same round trip (``Messages``)."""
        ...

    async def latest(self, channels: Sequence[str]) -> dict[str, int]:
        """The newest offset of each channel (0 for a channel with no message yet)."""
        ...

    async def heads(self, channels: Sequence[str]) -> dict[str, Head]:
        """The newest offset and the epoch of each channel (an epoch is made if it has none)."""
        ...

    async def renew_epoch(self, channel: str, stale: str) -> str:
        """Give ``channel`` a new epoch if it still has ``stale`` (its offsets were handed out
        twice); the epoch it has now."""
        ...

    async def after(self, channel: str, offset: int, limit: int) -> tuple[list[Message], int]:
        """Up to ``limit`` messages with offsets above ``offset``, oldest first, and the oldest
        offset still stored (0 when the log is empty)."""
        ...

    async def before(self, channel: str, before: int | None, limit: int) -> list[Message]:
        """The newest ``limit`` messages below offset ``before`` (all when None), oldest first."""
        ...

    async def find(self, channel: str, message_id: str) -> Message | None:
        """Message ``message_id`` of ``channel``, if it is among its newest ``FIND_DEPTH``."""
        ...

    async def close(self) -> None: ...


#: How far back ``find`` looks (from the newest message of a channel): what can be edited.
FIND_DEPTH = 1000


#: Stores a message in one of its channels (alone): what that channel's store answered.
StoreOne = Callable[[Envelope, str], Awaitable[Stored]]


async def store_each(envelope: Envelope, store_one: StoreOne) -> Stored:
    """Store ``envelope`` in each of its channels, one after the other (see the module
    docstring). The first channel, in sorted order (the same on every retry), gives the message
    its id and time: a retry gets the first attempt's; the other channels are stored with them."""
    channels = envelope.channels()
    order = sorted(channels)
    first = await store_one(envelope, order[0])
    envelope = dataclasses.replace(envelope, id=first.id, ts=first.ts)
    found = {order[0]: first}
    for channel in order[1:]:
        found[channel] = await store_one(envelope, channel)
    offsets = tuple((c, dict(found[c].offsets)[c]) for c in channels)
    epochs = tuple((c, dict(found[c].epochs).get(c, "")) for c in channels)
    return Stored(first.id, first.ts, offsets, first.duplicate, epochs)


class MemoryHistory:
    """History in this process: the single-node default and the test fake. ``sharded``: stored
    as on a Redis Cluster, one channel at a time (``store_each``); ``fail_in`` makes the next
    store in those channels fail (for tests)."""

    def __init__(self, retention: Retention = Retention(), clock: Clock = time.time, sharded: bool = False) -> None:
        self._retention = retention
        self._clock = clock
        self._sharded = sharded
        self.fail_in: set[str] = set()
        self._seq: dict[str, int] = {}
        self._epochs: dict[str, str] = {}
        self._newest_epoch = ""
        self._logs: dict[str, list[tuple[int, int, Message]]] = {}  # (offset, ts, body)
        self._sent: dict[tuple[str, ...], tuple[float, Stored]] = {}

    async def store(self, envelope: Envelope, fingerprint: str | None) -> Stored:
        if not self._sharded:
            return self._store(envelope, envelope.channels(), (envelope.sender, fingerprint) if fingerprint else None)

        async def one(envelope: Envelope, channel: str) -> Stored:
            if channel in self.fail_in:
                self.fail_in.discard(channel)
                raise HistoryError(f"{channel}: its shard failed (as told)")
            return self._store(envelope, (channel,), (channel, envelope.sender, fingerprint or "id-" + envelope.id))

        return await store_each(envelope, one)

    def _store(self, envelope: Envelope, channels: Sequence[str], sent: tuple[str, ...] | None) -> Stored:
        """Store in ``channels`` at once, or answer the attempt that ``sent`` recognises."""
        now = self._clock()
        if sent is not None:
            prior = self._sent.get(sent)
            if prior is not None and prior[0] > now:
                s = prior[1]
                return Stored(s.id, s.ts, s.offsets, duplicate=True, epochs=s.epochs if self._sharded else ())
        offsets, epochs = [], []
        for channel in channels:
            offset = self._seq[channel] = self._seq.get(channel, 0) + 1
            log = self._logs.setdefault(channel, [])
            log.append((offset, envelope.ts, envelope.message_body(channel)))
            self._trim(log, now)
            offsets.append((channel, offset))
            epochs.append((channel, self._epoch(channel)))
        stored = Stored(envelope.id, envelope.ts, tuple(offsets), epochs=tuple(epochs))
        if sent is not None:
            self._sent[sent] = (now + self._retention.dedupe_s, stored)
        return stored

    def _epoch(self, channel: str) -> str:
        epoch = self._epochs.get(channel)
        if epoch is None:
            epoch = self._epochs[channel] = self._new_epoch()
        return epoch

    def _new_epoch(self, after: str = "") -> str:
        """Above every epoch this store made, even those it lost: its clock moved on."""
        self._newest_epoch = new_epoch(self._clock, max(after, self._newest_epoch))
        return self._newest_epoch

    def lose_newest(self, channel: str, count: int) -> None:
        """Forget the newest ``count`` messages of ``channel`` but not its epoch, as a Redis that
        crashed before its last writes reached the disk (for tests)."""
        self._seq[channel] = self._seq.get(channel, 0) - count
        self._logs[channel] = [entry for entry in self._logs.get(channel, []) if entry[0] <= self._seq[channel]]

    async def renew_epoch(self, channel: str, stale: str) -> str:
        if self._epochs.get(channel, stale) == stale:
            self._epochs[channel] = self._new_epoch(after=stale)
        return self._epochs[channel]

    def lose_everything(self) -> None:
        """Forget every message, offset and epoch, as a Redis that restarted empty (for tests)."""
        self._seq.clear()
        self._epochs.clear()
        self._logs.clear()
        self._sent.clear()

    def _trim(self, log: list[tuple[int, int, Message]], now: float) -> None:
        r = self._retention
        if len(log) > r.max_keep:
            del log[: len(log) - r.max_keep]
        cutoff_ms = (now - r.keep_s) * 1000
        while len(log) > r.min_keep and log[0][1] < cutoff_ms:
            del log[0]

    async def latest(self, channels: Sequence[str]) -> dict[str, int]:
        return {c: self._seq.get(c, 0) for c in channels}

    async def heads(self, channels: Sequence[str]) -> dict[str, Head]:
        return {c: Head(self._seq.get(c, 0), self._epoch(c)) for c in channels}

    async def after(self, channel: str, offset: int, limit: int) -> tuple[list[Message], int]:
        log = self._logs.get(channel, [])
        found = [{**body, "offset": o} for o, _, body in log if o > offset][:limit]
        return found, log[0][0] if log else 0

    async def before(self, channel: str, before: int | None, limit: int) -> list[Message]:
        log = self._logs.get(channel, [])
        older = [{**body, "offset": o} for o, _, body in log if before is None or o < before]
        return older[-limit:]

    async def find(self, channel: str, message_id: str) -> Message | None:
        for offset, _, body in reversed(self._logs.get(channel, [])[-FIND_DEPTH:]):
            if body["id"] == message_id:
                return {**body, "offset": offset}
        return None

    async def close(self) -> None:
        return None
