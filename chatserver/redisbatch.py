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

Grouped calls: ``group(name, script, keys, args)`` queues one call of a Lua script; the calls of
one name queued in one turn run as *one* EVAL, at the place of the first of them (so a call only
ever moves earlier, never behind a command queued after it). Under load a turn holds tens of
messages: their stores are one script call, not tens, which is most of what Redis and redis-py
cost per message. A group's script never returns nil (Redis would cut the list of replies there);
an error fails every call of the group. On one Redis a group travels as ``EVALSHA``: each
connection loads the scripts it has not run yet (``SCRIPT LOAD``) at the head of the pipeline
that first needs them, so a script is never missing when its call runs, and no second round
trip can put a call behind commands queued after it. Redis forgets its scripts only with its
process (the connection is new then) or on ``SCRIPT FLUSH``: the calls that meet ``NOSCRIPT``
fail (the client retries with its ``cid``) and the connection loads them again.

Exactly once: a pipeline is never sent twice. The client's retry policy re-sends a whole
pipeline after a connection error or a timeout, but by then Redis may have run it (the
reply was lost, or is merely late): a message stored twice, a counter counted twice, and
the second run comes after pipelines sent meanwhile. So the pipeline is written here
directly on a pooled connection: what fails before anything was written (checking out or
connecting; the pool replaces a connection that Redis closed, and the connection's health
check, a PING before the write when it was idle for a while, is retried on its own) is
tried again on a fresh connection; what fails after the write fails every caller of the
pipeline, whose own error path decides (a send is retried by the client with its ``cid``).

On a Redis Cluster (``redisroute``) a pipeline is split by node: each node gets its share in
one pipeline, in the order queued; shares of different nodes run in no order between them. A
group is then one EVAL per hash slot (Redis refuses a script whose keys span slots), and the
keys of one grouped call must share a slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatserver.redisroute import Client, ClusterPipelines

log = logging.getLogger(__name__)

#: A command in RESP, packed in C (hiredis's stub types it as a tuple of one element).
pack_command = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)

# KEYS and ARGV of the group's calls one after another; ARGV starts with the number of calls,
# then each call's number of keys and of arguments.
_GROUP_HEAD = "local function one(KEYS, ARGV)\n"
_GROUP_TAIL = """
end
local calls = tonumber(ARGV[1])
local results = {}
local k, a = 0, 1 + 2 * calls
for c = 1, calls do
  local nk, na = tonumber(ARGV[2 * c]), tonumber(ARGV[2 * c + 1])
  local keys, argv = {}, {}
  for i = 1, nk do keys[i] = KEYS[k + i] end
  for i = 1, na do argv[i] = ARGV[a + i] end
  k, a = k + nk, a + na
  results[c] = one(keys, argv)
end
return results
"""


class _Group:
    """The calls of one script queued in one turn, sent as one EVAL."""

    __slots__ = ("args", "digest", "durable", "futures", "keys", "script", "sizes")

    def __init__(self, script: str, digest: str, durable: bool) -> None:
        self.script = script
        self.digest = digest
        self.durable = durable
        self.keys: list[Any] = []
        self.args: list[Any] = []
        self.sizes: list[int] = []
        self.futures: list[asyncio.Future[Any]] = []

    def command(self) -> tuple[Any, ...]:
        return ("EVAL", self.script, *self._operands())

    def by_digest(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.digest, *self._operands())

    def _operands(self) -> tuple[Any, ...]:
        return (len(self.keys), *self.keys, len(self.futures), *self.sizes, *self.args)

    def answer(self, future: asyncio.Future[Any]) -> None:
        """The EVAL's reply (or error) to each call."""
        if future.cancelled():
            for call in self.futures:
                call.cancel()
            return
        exc = future.exception()
        replies = future.result() if exc is None else []
        for i, call in enumerate(self.futures):
            if call.done():
                continue
            if exc is not None:
                call.set_exception(exc)
            elif i < len(replies):
                call.set_result(replies[i])
            else:
                call.set_exception(ResponseError(f"grouped script call {i + 1} returned nothing"))


Command = tuple[tuple[Any, ...] | _Group, asyncio.Future[Any]]


async def replies_of(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The replies of several queued calls, in order; the first error if any failed (every
    error is retrieved: a failover that fails many calls logs none of them twice)."""
    replies = await asyncio.gather(*futures, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


#: Attempts to check out a connection (nothing has been sent yet), and the pause after each failure.
_CHECKOUT_BACKOFF_S = (0.05, 0.2, 0.5)


class RedisBatch:
    def __init__(
        self, client: Client, max_batch: int = 1000, max_in_flight: int = 8, wait_replicas: int = 0, wait_ms: int = 200
    ) -> None:
        """``wait_replicas``, ``wait_ms``: on a cluster, what a durable group waits for (``redisroute``)."""
        self._client = client
        self._cluster = None
        if isinstance(client, RedisCluster):
            self._cluster = ClusterPipelines(client, wait_replicas=wait_replicas, wait_ms=wait_ms)
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight  # pipelines sent and not answered; more waits (and grows)
        self._turns: list[list[Command]] = []  # commands waiting to be sent, one list per loop turn
        self._open: list[Command] | None = None  # the turn being queued now (not flushed yet)
        self._groups: dict[str, _Group] = {}  # grouped calls of the open turn, by name
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scripts: dict[str, tuple[str, str]] = {}  # a group's Lua body -> its script and digest
        self._loaded: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()
        self.pipelines = 0  # sent so far (for tests and metrics)
        self.commands = 0
        self.scripts_loaded = 0

    @property
    def sharded(self) -> bool:
        """On a Redis Cluster: the keys of one grouped call must share a hash slot."""
        return self._cluster is not None

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the RedisError it caused."""
        return self._queue(args)

    def _queue(self, command: tuple[Any, ...] | _Group) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._open is None:
            self._open = []
            self._turns.append(self._open)
        self._open.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def group(
        self, name: str, script: str, keys: list[Any], args: list[Any], durable: bool = False
    ) -> asyncio.Future[Any]:
        """Queue one call of ``script`` (a Lua body that ends in ``return``, reading ``KEYS`` and
        ``ARGV``); the calls of ``name`` in this turn run as one EVAL (see the module docstring).
        ``durable``: on a cluster, done only once the shard's replicas have it (``redisroute``)."""
        if self._cluster is not None:
            name = f"{name}\0{self._cluster.slot(keys)}"  # one EVAL per hash slot
        group = self._groups.get(name) if self._open is not None else None
        if group is None:
            whole = self._scripts.get(script)
            if whole is None:
                text = _GROUP_HEAD + script + _GROUP_TAIL
                whole = self._scripts[script] = (text, hashlib.sha1(text.encode()).hexdigest())
            group = self._groups[name] = _Group(*whole, durable)
            self._queue(group).add_done_callback(group.answer)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.keys += keys
        group.args += args
        group.sizes += (len(keys), len(args))
        group.futures.append(future)
        return future

    def eval(self, source: str, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a Lua script. EVAL with the source, not EVALSHA: Redis caches it by digest all
        the same, and a script Redis forgot (a restart) never needs a second round trip, which
        would also run it after commands queued behind it."""
        return self.execute("EVAL", source, len(keys), *keys, *args)

    def _flush(self) -> None:
        self._scheduled = False
        self._open = None  # this turn is complete: what is queued from now on is the next one
        self._groups = {}
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
            if self._cluster is None:
                replies = await self._run_one([c for c, _ in batch])
            else:
                commands = [c.command() if isinstance(c, _Group) else c for c, _ in batch]
                durable = frozenset(i for i, (c, _) in enumerate(batch) if isinstance(c, _Group) and c.durable)
                replies = await self._cluster.run(commands, durable)
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

    async def _run_one(self, batch: list[tuple[Any, ...] | _Group]) -> list[Any]:
        """Write ``batch`` once, as one pipeline to the one Redis, and read every reply (a
        command's error reply in its place). Groups go by digest, after loading the scripts this
        connection has not run. Not retried once written: see the module docstring."""
        assert not isinstance(self._client, RedisCluster)
        pool = self._client.connection_pool
        conn = await self._checkout()
        loaded = self._loaded.get(conn)
        if loaded is None:
            loaded = self._loaded[conn] = set()
            conn.register_connect_callback(self._forget_scripts)  # type: ignore[no-untyped-call]  # a new socket: maybe a new Redis
        loads: dict[str, str] = {}
        commands: list[tuple[Any, ...]] = []
        for c in batch:
            if isinstance(c, _Group):
                if c.digest not in loaded:
                    loads[c.digest] = c.script
                commands.append(c.by_digest())
            else:
                commands.append(c)
        packed = [pack_command(("SCRIPT", "LOAD", script)) for script in loads.values()]
        self.scripts_loaded += len(loads)
        packed += [pack_command(c) for c in commands]
        try:
            try:
                await conn.send_packed_command(packed)
                for digest in loads:
                    try:
                        await self._client.parse_response(conn, "SCRIPT")
                        loaded.add(digest)
                    except ResponseError as exc:  # its calls fail with NOSCRIPT below
                        log.error("redis refused a script: %s", exc)
                replies: list[Any] = []
                for args in commands:
                    try:
                        replies.append(await self._client.parse_response(conn, args[0]))
                    except ResponseError as exc:  # this command's own error; the others go on
                        if isinstance(exc, NoScriptError):
                            loaded.clear()  # SCRIPT FLUSH: load them again
                        replies.append(exc)
                return replies
            except BaseException:
                # What is on the wire is unknown: this connection is never used again as it is.
                await conn.disconnect(nowait=True)
                raise
        finally:
            await pool.release(conn)

    def _forget_scripts(self, conn: Connection) -> None:
        """``conn`` (re)connected: the Redis behind it may be another one (or restarted)."""
        self._loaded[conn] = set()

    async def _checkout(self) -> Connection:
        """A connected connection from the client's pool; nothing has been sent when this fails."""
        assert not isinstance(self._client, RedisCluster)
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
