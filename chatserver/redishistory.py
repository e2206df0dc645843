"""History in Redis: Lua scripts that store, find and page through a channel's messages.

Contract: ``history.History``. Each script touches the keys of one channel, or the keys of a
message's channels in one atomic step; the calls of one loop turn travel together
(``RedisBatch``). On a Redis Cluster (a sharded batch) every script touches one channel: a
private message is stored in each of its channels on its own (``history.store_each``), its
``sent`` key in the channel's hash slot (``chat:chan:{channel}:sent:{user}:{fingerprint}``).

Redis layout (names from ``Names``): ``chat:chan:{channel}:seq`` (counter),
``chat:chan:{channel}:epoch`` (string), ``chat:chan:{channel}:log`` (sorted set scored by
offset; member ``"{ts}|{json}"``), ``chat:sent:{user}:{fingerprint}``
(``"{id}|{ts}|{o1},{o2}|{e1},{e2}"``, expiring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from chatserver.envelope import Envelope
from chatserver.history import (
    FIND_DEPTH,
    RERUN_WINDOW_MS,
    Clock,
    Head,
    HistoryError,
    Message,
    Retention,
    Stored,
    epoch_bits,
    store_each,
)
from chatserver.names import Names
from chatserver.redisbatch import RedisBatch, replies_of
from chatserver.redisroute import Client

# KEYS: a channel's log. ARGV: '"id":"<id>"', depth. Answers {member, offset} or {} (not found).
_FIND_LUA = """
local found = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 1, #found, 2 do
  if string.find(found[i], ARGV[1], 1, true) then return {found[i], found[i + 1]} end
end
return {}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _member(envelope: Envelope, channel: str) -> str:
    return f"{envelope.ts}|" + orjson.dumps(envelope.message_body(channel)).decode()


def _message(member: bytes | str, offset: float) -> Message:
    text = member.decode() if isinstance(member, bytes) else member
    body: Message = orjson.loads(text.split("|", 1)[1])
    body["offset"] = int(offset)
    return body


def _parse_stored(value: bytes | str, channels: Sequence[str], duplicate: bool) -> Stored:
    """``"{id}|{ts}|{o1},{o2}|{e1},{e2}"`` as the store script answers and keeps for retries."""
    text = value.decode() if isinstance(value, bytes) else value
    message_id, ts, offsets, epochs = text.split("|")
    return Stored(
        message_id,
        int(ts),
        tuple(zip(channels, (int(o) for o in offsets.split(",")), strict=True)),
        duplicate,
        tuple(zip(channels, epochs.split(","), strict=True)),
    )


# Epochs are made here, on Redis's clock, not on each server's (``history.new_epoch`` in Lua):
# the microsecond (TIME) as 13 hex digits, then the random part a server sent; above ``after``,
# the epoch it replaces, when there is one. ``epoch_of``: the epoch of ``key``, made if it has none.
_EPOCH_LUA = """
local function new_epoch(random, after)
  local now = redis.call('TIME')
  local made = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local prior = after and tonumber(string.sub(after, 1, 13), 16)
  if prior and prior >= made then made = prior + 1 end
  return string.format('%013x', made) .. random
end
local function epoch_of(key, random, idle_ms)
  local epoch = redis.call('GET', key)
  if not epoch then
    epoch = new_epoch(random)
    redis.call('SET', key, epoch, 'PX', idle_ms)
  end
  return epoch
end
"""

# KEYS: sent key, then (seq, log, epoch) per channel. ARGV: dedupe ttl ms, now ms, min keep,
# max keep, keep ms, "id|ts", an epoch's random part, idle ms, then one member per channel. The sent key
# is always written: a retry (same cid) or a re-run of the same call (same id) finds the first
# attempt and changes nothing. Each message gives its channels' keys another ``idle_s`` to live.
_STORE_LUA = (
    _EPOCH_LUA
    + """
local n = (#KEYS - 1) / 3
local prior = redis.call('GET', KEYS[1])
if prior then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])  -- a write: a WAIT after it covers the first attempt too
  return {1, prior}
end
local now = tonumber(ARGV[2])
local min_keep, max_keep, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local offsets, epochs = {}, {}
for i = 1, n do
  local seq, log = KEYS[3 * i - 1], KEYS[3 * i]
  epochs[i] = epoch_of(KEYS[3 * i + 1], ARGV[7], ARGV[8])
  local offset = redis.call('INCR', seq)
  redis.call('ZADD', log, offset, ARGV[8 + i])
  for _, key in ipairs({seq, log, KEYS[3 * i + 1]}) do redis.call('PEXPIRE', key, ARGV[8]) end
  local card = redis.call('ZCARD', log)
  if card > max_keep then
    redis.call('ZREMRANGEBYRANK', log, 0, card - max_keep - 1)
    card = max_keep
  end
  local budget = 100
  while card > min_keep and budget > 0 do
    local oldest = redis.call('ZRANGE', log, 0, 0)[1]
    local ts = tonumber(string.match(oldest, '^(%d+)|'))
    if ts == nil or ts >= now - keep_ms then break end
    redis.call('ZREMRANGEBYRANK', log, 0, 0)
    card = card - 1
    budget = budget - 1
  end
  offsets[i] = offset
end
local stored = ARGV[6] .. '|' .. table.concat(offsets, ',') .. '|' .. table.concat(epochs, ',')
redis.call('SET', KEYS[1], stored, 'PX', ARGV[1])
return {0, stored}
"""
)

# KEYS: the epoch. ARGV: the stale epoch, an epoch's random part, idle ms. Answers the epoch it
# has now: a new one, above the stale one, if it still had the stale one (or none).
_RENEW_LUA = (
    _EPOCH_LUA
    + """
local epoch = redis.call('GET', KEYS[1])
if epoch == false or epoch == ARGV[1] then
  epoch = new_epoch(ARGV[2], ARGV[1])
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[3])
end
return epoch
"""
)

# KEYS: (seq, epoch) per channel. ARGV: an epoch's random part, idle ms. Answers offset, epoch, offset, epoch...
_HEADS_LUA = (
    _EPOCH_LUA
    + """
local heads = {}
for i = 1, #KEYS / 2 do
  heads[2 * i - 1] = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  heads[2 * i] = epoch_of(KEYS[2 * i], ARGV[1], ARGV[2])
end
return heads
"""
)


class RedisHistory:
    def __init__(
        self,
        client: Client,
        names: Names,
        retention: Retention,
        clock: Clock = time.time,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = client
        self._names = names
        self._retention = retention
        self._clock = clock
        self._batch = batch or RedisBatch(client)  # stores of one loop turn share a round trip

    def store(self, envelope: Envelope, fingerprint: str | None) -> Coroutine[Any, Any, Stored]:
        """Without a ``fingerprint`` the message's id is the key that recognises a second run.
        On one Redis the script call is queued now (see ``History.store``); on a cluster, one
        channel after the other once awaited."""
        if self._batch.sharded:

            async def one(envelope: Envelope, channel: str) -> Stored:
                key = self._names.channel_sent(channel, envelope.sender, fingerprint or "id-" + envelope.id)
                return await self._stored(self._store(envelope, fingerprint, (channel,), key), (channel,))

            return store_each(envelope, one)
        key = self._names.sent(envelope.sender, fingerprint or "id-" + envelope.id)
        channels = envelope.channels()
        return self._stored(self._store(envelope, fingerprint, channels, key), channels)

    def _store(
        self, envelope: Envelope, fingerprint: str | None, channels: Sequence[str], sent: str
    ) -> asyncio.Future[Any]:
        """Queue one script: ``channels`` at once, or the earlier attempt that the ``sent`` key names."""
        keys = [sent]
        for channel in channels:
            names = self._names
            keys += [names.channel_seq(channel), names.channel_log(channel), names.channel_epoch(channel)]
        r = self._retention
        args: list[str | int] = [
            int(r.dedupe_s * 1000) if fingerprint else RERUN_WINDOW_MS,
            int(self._clock() * 1000),
            r.min_keep,
            r.max_keep,
            int(r.keep_s * 1000),
            f"{envelope.id}|{envelope.ts}",
            epoch_bits(),
            int(r.idle_s * 1000),
            *(_member(envelope, c) for c in channels),
        ]
        return self._batch.group("store", _STORE_LUA, keys, args, durable=True)

    @staticmethod
    async def _stored(reply: asyncio.Future[Any], channels: Sequence[str]) -> Stored:
        try:
            flag, value = await reply
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return _parse_stored(value, channels, duplicate=flag == 1)

    async def heads(self, channels: Sequence[str]) -> dict[str, Head]:
        if not channels:
            return {}
        idle_ms = int(self._retention.idle_s * 1000)
        names = self._names

        def call(of: Sequence[str]) -> asyncio.Future[Any]:
            keys = [key for c in of for key in (names.channel_seq(c), names.channel_epoch(c))]
            return self._batch.group("heads", _HEADS_LUA, keys, [epoch_bits(), idle_ms])

        try:
            if self._batch.sharded:  # one call per channel, each in its own hash slot
                found = [value for values in await replies_of([call([c]) for c in channels]) for value in values]
            else:
                found = await call(channels)
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return {c: Head(int(found[2 * i]), _text(found[2 * i + 1])) for i, c in enumerate(channels)}

    async def latest(self, channels: Sequence[str]) -> dict[str, int]:
        if not channels:
            return {}
        keys = [self._names.channel_seq(c) for c in channels]
        try:
            if self._batch.sharded:
                values = await replies_of([self._batch.execute("GET", key) for key in keys])
            else:
                values = await self._redis.mget(keys)
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return {c: int(v) if v is not None else 0 for c, v in zip(channels, values, strict=True)}

    async def renew_epoch(self, channel: str, stale: str) -> str:
        try:
            keys, idle_ms = [self._names.channel_epoch(channel)], int(self._retention.idle_s * 1000)
            epoch = await self._batch.eval(_RENEW_LUA, keys, [stale, epoch_bits(), idle_ms])
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return _text(epoch)

    async def after(self, channel: str, offset: int, limit: int) -> tuple[list[Message], int]:
        log = self._names.channel_log(channel)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(log, f"({offset}", "+inf", start=0, num=limit, withscores=True)
                pipe.zrange(log, 0, 0, withscores=True)
                found, oldest = await pipe.execute()
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        first = int(oldest[0][1]) if oldest else 0
        return [_message(m, s) for m, s in cast(list[tuple[bytes, float]], found)], first

    async def before(self, channel: str, before: int | None, limit: int) -> list[Message]:
        top = "+inf" if before is None else f"({before}"
        try:
            found = await self._redis.zrevrangebyscore(
                self._names.channel_log(channel), top, "-inf", start=0, num=limit, withscores=True
            )
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return [_message(m, s) for m, s in reversed(cast(list[tuple[bytes, float]], found))]

    async def find(self, channel: str, message_id: str) -> Message | None:
        pattern = orjson.dumps({"id": message_id}).decode()[1:-1]  # '"id":"..."', as stored
        try:
            found = await self._batch.eval(_FIND_LUA, [self._names.channel_log(channel)], [pattern, FIND_DEPTH])
        except aioredis.RedisError as exc:
            raise HistoryError(f"redis: {exc}") from exc
        return _message(found[0], float(found[1])) if found else None

    async def close(self) -> None:
        return None  # the client belongs to whoever created it
