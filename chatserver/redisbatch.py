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

Exactly once: a pipeline is never sent twice. The client's retry policy re-sends a whole
pipeline after a connection error or a timeout, but by then Redis may have run it (the
reply was lost, or is merely late): a message stored twice, a counter counted twice, and
the second run comes after pipelines sent meanwhile. So the pipeline is written here
directly on a pooled connection: what fails before anything was written (checking out or
connecting; the pool replaces a connection that Redis closed, and the connection's health
check, a PING before the write when it was idle for a while, is retried on its own) is
tried again on a fresh connection; what fails after the write fails every caller of the
pipeline, whose own error path decides (a send is retried by the client with its ``cid``).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[tuple[Any, ...], asyncio.Future[Any]]

#: Attempts to check out a connection (nothing has been sent yet), and the pause after each failure.
_CHECKOUT_BACKOFF_S = (0.05, 0.2, 0.5)


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
            replies = await self._run([args for args, _ in batch])
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

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` once, as one pipeline, and read every reply (a command's error
        reply in its place). Not retried once written: see the module docstring."""
        pool = self._client.connection_pool
        conn = await self._checkout()
        try:
            try:
                await conn.send_packed_command(conn.pack_commands(commands))
                replies: list[Any] = []
                for args in commands:
                    try:
                        replies.append(await self._client.parse_response(conn, args[0]))
                    except ResponseError as exc:  # this command's own error; the others go on
                        replies.append(exc)
                return replies
            except BaseException:
                # What is on the wire is unknown: this connection is never used again as it is.
                await conn.disconnect(nowait=True)
                raise
        finally:
            await pool.release(conn)

    async def _checkout(self) -> Connection:
        """A connected connection from the client's pool; nothing has been sent when this fails."""
        pool = self._client.connection_pool
        for pause in (*_CHECKOUT_BACKOFF_S, None):
            try:
                return cast(Connection, await pool.get_connection())  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=2.0)
