"""Redis commands of many coroutines sent together: one pipeline per IOLoop turn.

Under load, one turn of the loop reads frames from many sockets, and each frame needs the
same few commands (store the message, look up its route). Sent one by one, every command
costs a connection checkout, a write and a read; here, the commands queued during a turn go
out as one pipeline on the next, and each caller gets its own reply (or its own error).

Order: commands of one caller run in the order it awaits them; commands queued in one turn
run in the order they were queued, because a turn is never split between pipelines (several
pipelines in flight use several connections, and Redis runs whichever arrives first: a
caller's route look-up could run before the store it was queued after). Whole turns are
packed into pipelines of at most ``max_batch`` commands; a turn larger than that is one
pipeline of its own. A turn is what was queued between two flushes; coroutines started
together (``asyncio.gather``) take their first steps in adjacent callbacks, so what they
queue there is always in one turn.

Nothing is retried here beyond what the client's own retry policy does for a connection that
broke before the pipeline was sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

Command = tuple[tuple[Any, ...], asyncio.Future[Any]]


class RedisBatch:
    def __init__(self, client: aioredis.Redis, max_batch: int = 1000, max_in_flight: int = 8) -> None:
        self._client = client
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight  # pipelines sent and not answered; more waits (and grows)
        self._turns: list[list[Command]] = []  # commands waiting to be sent, one list per loop turn
        self._open: list[Command] | None = None  # the turn being queued now (not flushed yet)
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # sent so far (for tests and metrics)
        self.commands = 0

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the RedisError it caused."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._open is None:
            self._open = []
            self._turns.append(self._open)
        self._open.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def eval(self, source: str, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a Lua script. EVAL with the source, not EVALSHA: Redis caches it by digest all
        the same, and a script Redis forgot (a restart) never needs a second round trip, which
        would also run it after commands queued behind it."""
        return self.execute("EVAL", source, len(keys), *keys, *args)

    def _flush(self) -> None:
        self._scheduled = False
        self._open = None  # this turn is complete: what is queued from now on is the next one
        while self._turns and len(self._in_flight) < self._max_in_flight:
            batch = self._turns.pop(0)  # whole turns only, at least one
            while self._turns and len(batch) + len(self._turns[0]) <= self._max_batch:
                batch += self._turns.pop(0)
            task = asyncio.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._turns and not self._scheduled:  # what queued up meanwhile goes next
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[Command]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed (or we stop): every caller hears of it
            failure = exc if isinstance(exc, Exception) else RedisError("redis batch cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def close(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=2.0)
