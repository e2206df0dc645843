"""RedisBatch against a real Redis: one pipeline per loop turn, each caller its own reply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.history import Retention
from chatserver.hub import Hub
from chatserver.limits import RedisUserLimiter
from chatserver.metrics import Metrics
from chatserver.names import Names
from chatserver.redisbatch import RedisBatch
from chatserver.redisclient import redis_client
from chatserver.redishistory import RedisHistory
from chatserver.redisregistry import RedisRegistry
from chatserver.router import Router
from tests.fakes import FakeSession, settle
from tests.integration.conftest import REDIS_URL, _delete_names

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@asynccontextmanager
async def client_and_key() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client of the test Redis and a fresh key, both cleaned up afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    key = f"test:batch:{uuid.uuid4().hex}"
    try:
        yield client, key
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.gen_test
async def test_commands_of_one_turn_share_a_pipeline_and_keep_their_order() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        replies = await asyncio.gather(*(batch.execute("RPUSH", key, str(i)) for i in range(50)))
        assert replies == list(range(1, 51))
        assert batch.pipelines == 1 and batch.commands == 50
        assert await client.lrange(key, 0, -1) == [str(i).encode() for i in range(50)]


@pytest.mark.gen_test
async def test_a_failing_command_fails_alone() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        await client.set(key, "text")
        good, bad = batch.execute("GET", key), batch.execute("INCR", key)
        assert await good == b"text"
        with pytest.raises(ResponseError):
            await bad


@pytest.mark.gen_test
async def test_scripts_run_even_after_redis_forgot_them() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        await client.script_flush()  # as after a Redis restart without persistence of scripts
        assert await batch.eval(SCRIPT, [key], [5]) == 5
        await client.script_flush()
        assert await batch.eval(SCRIPT, [key], [2]) == 7
        assert batch.pipelines == 2, "no extra round trip to load a script"


@pytest.mark.gen_test
async def test_every_caller_hears_of_a_connection_that_cannot_be_made() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    batch = RedisBatch(client)
    try:
        results = await asyncio.gather(batch.execute("GET", "a"), batch.execute("GET", "b"), return_exceptions=True)
        assert all(isinstance(r, aioredis.ConnectionError) for r in results), results
    finally:
        await client.aclose()


@pytest.mark.gen_test
async def test_a_private_message_is_stored_and_routed_in_one_round_trip() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    client = aioredis.Redis.from_url(REDIS_URL)
    batch = RedisBatch(client)
    names = Names(prefix)
    registry = RedisRegistry(client, names, 30, batch=batch)
    history = RedisHistory(client, names, Retention(), batch=batch)
    broker = MemoryBroker()
    routers = [
        Router(
            f"ws-{n}", Hub(), registry, history, MemoryBus(broker, f"ws-{n}"), Metrics(), store_and_route_together=True
        )
        for n in (1, 2)
    ]
    try:
        for router in routers:
            await router.parts.bus.start(router.on_bus_message)
        ann, ben = FakeSession("ann", "ws-1"), FakeSession("ben", "ws-2")
        await routers[0].connect(ann)
        await routers[1].connect(ben)
        await settle()
        before = batch.pipelines
        await routers[0].handle(ann, '{"type": "private", "to": "ben", "text": "one trip", "cid": "c"}')
        await settle()
        assert batch.pipelines - before == 1, "the store and the route look-up share one pipeline"
        [msg] = ben.of_type("message")
        assert msg["text"] == "one trip" and msg["offset"] == 1
        assert ann.of_type("ack")[0]["offset"] == 1
    finally:
        await client.aclose()
        _delete_names(prefix)


@pytest.mark.gen_test
async def test_thousands_of_sessions_closing_at_once_need_few_connections() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    client = aioredis.Redis.from_url(REDIS_URL, max_connections=10)  # the default pool holds 100
    registry = RedisRegistry(client, Names(prefix), 30)
    users = [f"u{i}" for i in range(3000)]
    try:
        await asyncio.gather(*(registry.add(u, "ws-1") for u in users))
        assert await registry.online_count() == 3000
        await asyncio.gather(*(registry.remove(u, "ws-1") for u in users))  # a proxy restart
        gone = await asyncio.gather(*(registry.went_offline(u) for u in users))
        assert all(gone) and await registry.online_count() == 0
    finally:
        await client.aclose()
        _delete_names(prefix)


@pytest.mark.gen_test
async def test_the_per_user_limit_in_redis_counts_every_session_and_shares_the_pipeline() -> None:
    names = Names(f"t{uuid.uuid4().hex[:8]}-")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        batch = RedisBatch(client)
        limiter = RedisUserLimiter(client, names, per_second=3, clock=lambda: 1000.5, batch=batch)
        allowed = await asyncio.gather(*(limiter.allow("ann") for _ in range(5)), limiter.allow("bob"))
        assert allowed == [True, True, True, False, False, True], "3 per second for ann, bob unaffected"
        assert batch.pipelines == 1, "six checks of one loop turn: one round trip"
        assert 0 < await client.pttl(names.user_rate("ann", 1000)) <= 2000, "the window expires"
        later = RedisUserLimiter(client, names, per_second=3, clock=lambda: 1001.0, batch=batch)
        assert await later.allow("ann"), "a new second, a new window"
    finally:
        await client.delete(names.user_rate("ann", 1000), names.user_rate("ann", 1001), names.user_rate("bob", 1000))
        await client.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_commands_of_one_turn_never_travel_in_two_pipelines_that_can_overtake_each_other() -> None:
    async with client_and_key() as (client, key):
        filler = key + ":filler"
        batch = RedisBatch(client, max_batch=2)
        try:
            # One loop turn: another caller's large write, then a caller's store and its look-up.
            # Split after two commands, the look-up went in a second pipeline, on a second
            # connection, and Redis ran it while it was still reading the first.
            large = batch.execute("SET", filler, b"x" * (32 << 20))
            store = batch.execute("RPUSH", key, "stored")
            lookup = batch.execute("LRANGE", key, 0, -1)
            assert await lookup == [b"stored"], "the look-up ran before the store queued ahead of it"
            assert await store == 1 and await large is True
        finally:
            await client.delete(filler)


class ReplyHoldingProxy:
    """A TCP proxy in front of Redis. The first request that contains ``marker`` is forwarded,
    so Redis runs it, but its reply is held: lost (the connection closes) when ``lose``, else
    kept for ``hold_s`` seconds, longer than the client waits. Everything else passes."""

    def __init__(self, marker: bytes, lose: bool = True, hold_s: float = 0.0) -> None:
        self.marker, self.lose, self.hold_s = marker, lose, hold_s
        self.armed = True
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/{urlparse(REDIS_URL).path.strip('/') or 0}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        target = urlparse(REDIS_URL)
        redis_in, redis_out = await asyncio.open_connection(target.hostname, target.port or 6379)
        held = asyncio.Event()  # set once this connection carried the marked request

        async def upstream() -> None:
            while data := await client_in.read(1 << 16):
                if self.armed and self.marker in data:
                    self.armed = False
                    held.set()
                redis_out.write(data)
                await redis_out.drain()
            redis_out.close()

        async def downstream() -> None:
            while data := await redis_in.read(1 << 16):
                if held.is_set():
                    if not self.lose:
                        await asyncio.sleep(self.hold_s)  # Redis answered; the client has given up
                    client_out.close()  # the reply never reaches the client
                    return
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        for coro in (upstream(), downstream()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@asynccontextmanager
async def behind_proxy(key: str, lose: bool = True, hold_s: float = 0.0) -> AsyncIterator[aioredis.Redis]:
    """A client configured as the server configures its own, whose first request naming ``key``
    is run by Redis but never answered in time."""
    proxy = ReplyHoldingProxy(key.encode(), lose=lose, hold_s=hold_s)
    client = redis_client(await proxy.start())
    assert isinstance(client, aioredis.Redis)
    try:
        yield client
    finally:
        await client.aclose()
        await proxy.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_pipeline_whose_reply_was_lost_is_not_run_again() -> None:
    async with client_and_key() as (direct, key), behind_proxy(key) as client:
        batch = RedisBatch(client)
        with pytest.raises(aioredis.ConnectionError):  # the caller's error path decides
            await batch.execute("RPUSH", key, "a message without a cid")
        assert await direct.llen(key) == 1, "Redis ran it once; sending it again would store it twice"


@pytest.mark.gen_test(timeout=30)
async def test_a_pipeline_slower_than_the_socket_timeout_is_not_run_again() -> None:
    async with client_and_key() as (direct, key), behind_proxy(key, lose=False, hold_s=3.0) as client:
        batch = RedisBatch(client)
        with pytest.raises(aioredis.TimeoutError):
            await batch.execute("RPUSH", key, "a message without a cid")
        assert await direct.llen(key) == 1, "Redis ran it once; sending it again would store it twice"


@pytest.mark.gen_test(timeout=30)
async def test_the_servers_client_does_not_repeat_a_command_that_timed_out() -> None:
    # Not only the batch: the client's own retry covered timeouts too (redis-py's default
    # Retry retries TimeoutError; retry_on_error only adds to it), so a write slower than the
    # socket timeout ran again while the first one was still under way.
    async with client_and_key() as (direct, key), behind_proxy(key, lose=False, hold_s=3.0) as client:
        with pytest.raises(aioredis.TimeoutError):
            await client.rpush(key, "once")
        assert await direct.llen(key) == 1


GET_OR_NONE = "return redis.call('GET', KEYS[1]) or 'none'"


@pytest.mark.gen_test
async def test_grouped_calls_of_one_turn_are_one_script_call_each_with_its_reply() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        replies = await asyncio.gather(*(batch.group("incr", SCRIPT, [key], [i]) for i in range(1, 21)))
        assert replies == [sum(range(1, i + 1)) for i in range(1, 21)]  # each its own running total
        assert batch.pipelines == 1 and batch.commands == 1, "twenty calls, one EVAL"


@pytest.mark.gen_test
async def test_a_connection_loads_a_grouped_script_once_and_again_when_redis_forgot_it() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        assert await batch.group("incr", SCRIPT, [key], [1]) == 1
        assert await batch.group("incr", SCRIPT, [key], [1]) == 2
        assert batch.scripts_loaded == 1, "the second turn calls it by digest"
        await client.script_flush()  # an operator flushed the scripts under a live connection
        with pytest.raises(NoScriptError):
            await batch.group("incr", SCRIPT, [key], [1])  # failed before running: the caller retries
        assert await batch.group("incr", SCRIPT, [key], [1]) == 3, "loaded again, counted once"
        assert batch.scripts_loaded == 2


@pytest.mark.gen_test
async def test_a_grouped_script_runs_after_a_restart_of_redis_without_an_error() -> None:
    """A restarted Redis has no scripts, and every connection to it is new: the first call
    on each new connection loads them, in the same pipeline, ahead of the call."""
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        assert await batch.group("incr", SCRIPT, [key], [5]) == 5
        await client.script_flush()
        await client.connection_pool.disconnect()  # as a restart closes them
        assert await batch.group("incr", SCRIPT, [key], [2]) == 7
        assert batch.pipelines == 2, "no extra round trip to load it"


@pytest.mark.gen_test
async def test_a_grouped_call_runs_at_the_place_of_its_groups_first_call() -> None:
    """Calls only ever move earlier: the second read runs with the first, before the SET queued
    between them (a message's store may join an earlier store, never pass its route look-up)."""
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        first = batch.group("read", GET_OR_NONE, [key], [])
        written = batch.execute("SET", key, "written")
        second = batch.group("read", GET_OR_NONE, [key], [])
        assert (await first, await written, await second) == (b"none", True, b"none")
        assert await batch.group("read", GET_OR_NONE, [key], []) == b"written"  # a later turn


@pytest.mark.gen_test
async def test_a_failing_grouped_script_fails_each_of_its_calls() -> None:
    async with client_and_key() as (client, key):
        batch = RedisBatch(client)
        await client.set(key, "text")
        calls = [batch.group("incr", SCRIPT, [key], [1]) for _ in range(3)]
        other = batch.execute("GET", key)
        for call in calls:
            with pytest.raises(ResponseError):
                await call
        assert await other == b"text"
