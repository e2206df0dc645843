"""Redis commands of many coroutines sent together: one pipeline per IOLoop turn.

Under load, one turn of the loop reads frames from many sockets, and each frame needs the
same few commands (store the message, look up its route). Sent one by one, every command
costs a connection checkout, a write and a read; here, the commands queued during a turn go
out as one pipeline on the next, and each caller gets its own reply (or its own error).

Order: commands of one caller run in the order it awaits them; commands queued in one turn
run in the order they were queued. Nothing is retried here beyond what the client's own
retry policy does for a connection that broke before the pipeline was sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class RedisBatch:
    def __init__(self, client: aioredis.Redis, max_batch: int = 1000, max_in_flight: int = 8) -> None:
        self._client = client
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight  # pipelines sent and not answered; more waits (and grows)
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # sent so far (for tests and metrics)
        self.commands = 0

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the RedisError it caused."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
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
        while self._queue and len(self._in_flight) < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            task = asyncio.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._queue and not self._scheduled:  # what queued up meanwhile goes next
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
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
