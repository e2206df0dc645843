"""Pipelines on a Redis Cluster: a batch's commands split by the node that serves the hash slot
of their key, one pipeline per node, each written once.

``RedisBatch`` writes its pipelines itself (a pipeline is never sent twice); on a cluster it
hands them here. The contract of a command: its key is its first argument (``EVAL``: its first
key), and every key of one command is in one hash slot (Redis refuses anything else).

What was not written is routed again: a node that cannot be reached (a master that died and
whose replica is not promoted yet), or a command the node refused without running it (``MOVED``
after a failover, ``TRYAGAIN``, ``CLUSTERDOWN``). Before routing again the client re-reads the
cluster's slot map. What was written and then failed (the connection broke before the reply)
fails its callers: it may have run. Commands of one node keep their order; commands of
different nodes run in parallel, in no order between them.

Durable commands (a message's store): the pipeline of a node that holds one ends with ``WAIT
replicas timeout``, and a durable command counts as done only when that many replicas have it;
else it fails with ``NotReplicated`` (it ran on the master, and is recognised when the caller
retries). Redis replicates asynchronously: without this, a master that dies right after its
answer takes the last writes with it, and its promoted replica hands their offsets out again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

#: Either kind of client: the parts use only commands of one key (or of one hash slot), which
#: both answer alike; ``RedisBatch`` writes its pipelines per cluster node itself (here).
Client = aioredis.Redis | RedisCluster

#: Pauses between routing attempts of what could not be written: together longer than a
#: failover (``cluster-node-timeout`` of a few seconds, then the election).
ROUTE_BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 3.0)

#: Replies that say the command did not run on this node: safe to send again elsewhere.
_NOT_RUN = (MovedError, AskError, TryAgainError, ClusterDownError)


class NotWritten(RedisConnectionError):
    """The pipeline of a node could not be written (nothing of it reached Redis)."""


class NotReplicated(RedisError):
    """A durable command ran on its master, but too few replicas confirmed it in time."""


def command_key(command: tuple[Any, ...]) -> Any:
    """The key that decides where ``command`` runs (see the module docstring)."""
    if command[0] in ("EVAL", "EVALSHA"):
        if int(command[2]) < 1:
            raise ValueError(f"{command[0]} without keys has no node on a cluster")
        return command[3]
    return command[1]


class ClusterPipelines:
    def __init__(
        self,
        client: RedisCluster,
        backoff_s: tuple[float, ...] = ROUTE_BACKOFF_S,
        wait_replicas: int = 0,
        wait_ms: int = 200,
    ) -> None:
        self._client = client
        self._backoff_s = backoff_s
        self._wait = ("WAIT", wait_replicas, wait_ms) if wait_replicas > 0 else None

    def slot(self, keys: list[Any]) -> int:
        """The one hash slot of ``keys``; ValueError if they span several (a bug: every key of
        a script must share a slot, see ``names.py``)."""
        slots = {self._client.keyslot(key) for key in keys}
        if len(slots) != 1:
            raise ValueError(f"keys {keys!r} are in {len(slots)} hash slots; a cluster needs one")
        return slots.pop()

    async def run(self, commands: list[tuple[Any, ...]], durable: frozenset[int] = frozenset()) -> list[Any]:
        """Each command's reply (or its error, in its place); ``durable``: the indexes of the
        commands that must reach the replicas (see the module docstring)."""
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for pause in (*self._backoff_s, None):
            again: list[int] = []
            last: Exception | None = None
            try:
                await self._client.initialize()  # reads the slot map when it is marked stale
                routes = self._routes(commands, pending)
            except (RedisError, RedisClusterException, KeyError, OSError) as exc:
                # No node answered, or the slot map lacks a slot: nothing was sent.
                routes, again = {}, pending
                last = exc if isinstance(exc, RedisError) else RedisConnectionError(f"redis cluster: {exc!r}")
            nodes = list(routes)
            writes = [self._write(node, [(commands[i], i in durable) for i in routes[node]]) for node in nodes]
            results = await asyncio.gather(*writes, return_exceptions=True)
            for node, result in zip(nodes, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result  # cancelled: the batch fails every caller
                if isinstance(result, NotWritten):
                    again += routes[node]
                    last = result
                    continue
                if isinstance(result, Exception):  # written, then failed: may have run
                    for i in routes[node]:
                        replies[i] = result
                    self._stale()
                    continue
                for i, reply in zip(routes[node], result, strict=True):
                    if isinstance(reply, _NOT_RUN):
                        again.append(i)
                        last = reply
                    else:
                        replies[i] = reply
            if not again:
                return replies
            self._stale()
            if pause is None:
                for i in again:
                    replies[i] = last if last is not None else RedisError("redis cluster: no node for the command")
                return replies
            log.info("redis cluster: %d command(s) not run (%s); routing again in %.2fs", len(again), last, pause)
            await asyncio.sleep(pause)
            pending = sorted(again)
        raise AssertionError("unreachable")

    def _routes(self, commands: list[tuple[Any, ...]], pending: list[int]) -> dict[ClusterNode, list[int]]:
        nodes = self._client.nodes_manager
        routes: dict[ClusterNode, list[int]] = {}
        for i in pending:
            slot = self._client.keyslot(command_key(commands[i]))
            routes.setdefault(nodes.get_node_from_slot(slot), []).append(i)
        return routes

    def _stale(self) -> None:
        """Re-read the slot map before the next command (the client does so on its next use)."""
        self._client._initialize = True  # the flag redis-py itself sets on a connection error

    async def _write(self, node: ClusterNode, share: list[tuple[tuple[Any, ...], bool]]) -> list[Any]:
        """Write the commands of ``share`` (each with its durability) once to ``node`` and read
        every reply; NotWritten if nothing left."""
        commands = [command for command, _ in share]
        if self._wait is None or not any(durable for _, durable in share):
            return await self._exchange(node, commands)
        *replies, confirmed = await self._exchange(node, [*commands, self._wait])
        _, wanted, within_ms = self._wait
        if isinstance(confirmed, int) and confirmed >= wanted:
            return replies
        failure = NotReplicated(
            f"{node.name}: written, but {confirmed} of {wanted} replicas confirmed it in {within_ms} ms"
        )
        return [
            failure if durable and not isinstance(reply, Exception) else reply
            for reply, (_, durable) in zip(replies, share, strict=True)
        ]

    @staticmethod
    async def _ready(conn: Connection) -> None:
        """Connected, and not closed by the node meanwhile (a node killed since this connection
        was last used: what is written to it would fail on the read, as if it might have run),
        as redis-py's pool makes sure of its connections. Writes nothing of ours."""
        if conn.is_connected:
            try:
                if await conn.can_read():
                    raise RedisConnectionError("the connection has unread data")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await conn.disconnect(nowait=True)
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]
        await conn.check_health()  # type: ignore[no-untyped-call]  # a PING when idle for a while

    async def _exchange(self, node: ClusterNode, commands: list[tuple[Any, ...]]) -> list[Any]:
        conn: Connection = node.acquire_connection()
        try:
            try:
                await self._ready(conn)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await conn.disconnect(nowait=True)
                raise NotWritten(f"{node.name}: {exc}") from exc
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies: list[Any] = []
                for args in commands:
                    try:
                        replies.append(await node.parse_response(conn, args[0]))
                    except ResponseError as exc:  # this command's own error; the others go on
                        replies.append(exc)
                return replies
            except BaseException:
                await conn.disconnect(nowait=True)  # what is on the wire is unknown
                raise
        finally:
            node.release(conn)
