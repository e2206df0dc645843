"""Faults under traffic: a server killed with SIGKILL, Kafka restarted, Redis restarted, SIGTERM.

Every stream here is bounded (a fixed count of messages at a fixed pace) and every wait has
a deadline. Each test prints its figures (sent, acked, delivered, duplicates, recovery).
Kafka and Redis are restarted on instances of their own (scripts/lib.sh on free ports),
never the shared ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from chatserver.names import Names
from chatserver.parts import CLOSE_RESET
from tests.chatclient import ChatClient, ConnectionClosed
from tests.conftest import free_port
from tests.integration.conftest import ROOT, RealCluster, new_cluster


@dataclass
class Receiver:
    """A user who keeps a connection open and, when it drops, reconnects elsewhere and resumes."""

    cluster: RealCluster
    user: str
    servers: list[int]  # where to connect, in order of preference
    got: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    recover_s: list[float] = field(default_factory=list)
    recovered: list[bool] = field(default_factory=list)
    last: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        client = await self._connect(resume=False)
        while not stop.is_set():
            try:
                frame = await client.recv(timeout=0.1)
            except TimeoutError:
                continue
            except ConnectionClosed:
                lost_at = time.monotonic()
                client = await self._connect(resume=True)
                self.reconnects += 1
                frame = await client.recv_type("resumed", timeout=15)
                self.recover_s.append(time.monotonic() - lost_at)
                self.recovered.append(frame["recovered"])
                continue
            if frame["type"] == "message":
                self.got.append(frame)
                self.last = frame["offset"]
        client.close()

    async def _connect(self, resume: bool) -> ChatClient:
        deadline = time.monotonic() + 20
        while True:
            for n in self.servers:
                if n not in self.cluster.servers:
                    continue
                try:
                    client = await ChatClient.connect(self.cluster.url(n), self.cluster.token(self.user))
                    welcome = await client.recv_type("welcome")
                except (OSError, ConnectionClosed, TimeoutError, Exception):
                    continue
                if resume:
                    await client.send({"type": "resume", "positions": {f"user:{self.user}": self.last}})
                else:
                    self.last = welcome["positions"][f"user:{self.user}"]
                return client
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user} could not reconnect to any of {self.servers}")
            await asyncio.sleep(0.2)


@dataclass
class Sender:
    """Sends ``count`` private messages to one receiver at a fixed pace; retries on errors."""

    client: ChatClient
    to: str
    count: int
    interval_s: float
    acked: dict[str, str] = field(default_factory=dict)  # cid -> message id
    errors: int = 0
    _retries: set[asyncio.Future[None]] = field(default_factory=set)

    async def run(self) -> None:
        frames = {
            f"{self.to}-{k}": {"type": "private", "to": self.to, "text": f"#{k}", "cid": f"{self.to}-{k}"}
            for k in range(self.count)
        }
        reader = asyncio.ensure_future(self._read(frames))
        for frame in frames.values():
            await self.client.send(frame)
            await asyncio.sleep(self.interval_s)
        deadline = time.monotonic() + 60
        while len(self.acked) < self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()

    async def _read(self, frames: dict[str, dict[str, Any]]) -> None:
        while True:
            try:
                frame = await self.client.recv(timeout=1)
            except TimeoutError:
                continue
            if frame["type"] == "ack":
                self.acked[frame["cid"]] = frame["id"]
            elif frame["type"] == "error" and frame.get("cid") in frames:
                self.errors += 1  # e.g. Kafka unavailable: the same frame again, a little later
                self._retries.add(asyncio.ensure_future(self._retry(frames[frame["cid"]])))

    async def _retry(self, frame: dict[str, Any]) -> None:
        await asyncio.sleep(0.5)
        await self.client.send(frame)


def check_exactly_once_in_order(receiver: Receiver, sender: Sender) -> tuple[int, int]:
    """Every acked message arrived once, in offset order; returns (delivered, duplicates)."""
    ids = [m["id"] for m in receiver.got]
    duplicates = len(ids) - len(set(ids))
    missing = set(sender.acked.values()) - set(ids)
    assert not missing, f"{receiver.user}: {len(missing)} acked messages never arrived"
    offsets = [m["offset"] for m in receiver.got]
    assert offsets == sorted(set(offsets)), f"{receiver.user}: out of order or repeated: {offsets}"
    return len(ids), duplicates


@pytest.fixture
def three_servers() -> Iterator[RealCluster]:
    c = new_cluster()
    try:
        c.start_all(1, 2, 3)
        yield c
    finally:
        c.close()


@pytest.mark.gen_test(timeout=120)
async def test_kill_9_under_traffic_loses_and_doubles_nothing(three_servers: RealCluster) -> None:
    c = three_servers
    pairs, count, interval = 4, 80, 0.02  # 320 messages over ~1.6 s
    receivers = [Receiver(c, f"rcv{i}", servers=[3, 2]) for i in range(pairs)]  # on the victim
    stop = asyncio.Event()
    receiving = [asyncio.ensure_future(r.run(stop)) for r in receivers]
    await asyncio.sleep(0.5)
    senders = []
    for i in range(pairs):
        client = await ChatClient.connect(c.url(1), c.token(f"snd{i}"))
        await client.recv_type("welcome")
        senders.append(Sender(client, f"rcv{i}", count, interval))
    sending = asyncio.gather(*(s.run() for s in senders))
    await asyncio.sleep(0.6)
    c.stop(3, signal.SIGKILL)
    killed_at = time.monotonic()
    await sending
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        set(s.acked.values()) - {m["id"] for m in r.got} for r, s in zip(receivers, senders, strict=True)
    ):
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*receiving)

    sent = pairs * count
    acked = sum(len(s.acked) for s in senders)
    delivered = duplicates = 0
    for r, s in zip(receivers, senders, strict=True):
        d, dup = check_exactly_once_in_order(r, s)
        delivered, duplicates = delivered + d, duplicates + dup
        assert r.reconnects == 1 and r.recovered == [True]
    recover = max(x for r in receivers for x in r.recover_s)
    print(
        f"\nkill -9: sent={sent} acked={acked} delivered={delivered} duplicates={duplicates} "
        f"errors={sum(s.errors for s in senders)} recover_max={recover:.2f}s "
        f"(traffic ran {time.monotonic() - killed_at:.1f}s past the kill)"
    )
    assert acked == sent and duplicates == 0


class OwnKafka:
    """A Kafka broker of the test's own, started and stopped with scripts/lib.sh."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            "CHAT_RUN_DIR": str(run_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _lib(self, command: str) -> None:
        subprocess.run(
            ["bash", "-c", f"source {ROOT}/scripts/lib.sh && {command}"],
            env=self.env,
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._lib("start_kafka")

    def stop(self) -> None:
        self._lib("stop_pid kafka TERM 60")


@pytest.mark.gen_test(timeout=240)
async def test_kafka_restart_under_traffic_loses_no_acked_message(tmp_path: Path) -> None:
    kafka = OwnKafka(tmp_path)
    kafka.start()
    c = new_cluster(KAFKA_BOOTSTRAP=kafka.bootstrap, CHAT_KAFKA_SEND_TIMEOUT_S="5")
    try:
        c.start_all(1, 2)
        receiver = Receiver(c, "kr", servers=[2, 1])
        stop = asyncio.Event()
        receiving = asyncio.ensure_future(receiver.run(stop))
        await asyncio.sleep(0.5)
        client = await ChatClient.connect(c.url(1), c.token("ks"))
        await client.recv_type("welcome")
        sender = Sender(client, "kr", count=120, interval_s=0.05)  # 6 s of traffic
        sending = asyncio.ensure_future(sender.run())
        await asyncio.sleep(1.0)
        outage = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, kafka.stop)
        await asyncio.sleep(2.0)
        await asyncio.get_running_loop().run_in_executor(None, kafka.start)
        back = time.monotonic()
        ready_after = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(c.servers[n].status("/readyz") == 200 for n in (1, 2)):
                ready_after = time.monotonic() - back
                break
            await asyncio.sleep(0.2)
        await sending
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(sender.acked.values()) - {m["id"] for m in receiver.got}:
            await asyncio.sleep(0.1)
        stop.set()
        await receiving
        ids = [m["id"] for m in receiver.got]
        missing = set(sender.acked.values()) - set(ids)
        unacked = sorted(set(f"kr-{k}" for k in range(120)) - set(sender.acked), key=lambda s: int(s[3:]))
        if unacked:
            print(f"\nnever acked: {unacked}; last frames seen by the sender: {client.seen[-6:]}")
        print(
            f"\nkafka restart: sent=120 acked={len(sender.acked)} errors_retried={sender.errors} "
            f"delivered={len(ids)} unique={len(set(ids))} outage={back - outage:.1f}s "
            f"ready_again_after={ready_after}s"
        )
        assert len(sender.acked) == 120, "every message is acked in the end (after retries)"
        assert not missing, f"{len(missing)} acked messages were lost"
        assert ready_after is not None, "servers became ready again by themselves"
    finally:
        for n in list(c.servers):
            c.stop(n)
        kafka.stop()
        c.close()


class ShippedRedis:
    """A Redis of its own with the persistence scripts/lib.sh and docker-compose.yml ship
    (append-only file, fsync every second), that a test can restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        self.args = [*args, "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.log = (directory / "redis.log").open("ab")
        self.store = redis.Redis(port=self.port)
        self.server = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> subprocess.Popen[bytes]:
        server = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        _wait(lambda: _pings(self.store))
        return server

    def restart(self, sig: int) -> None:
        self.server.send_signal(sig)
        self.server.wait()
        self.server = self._start()

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(10)


@pytest.mark.gen_test(timeout=120)
async def test_redis_restart_sessions_reregister_and_history_survives(tmp_path: Path) -> None:
    redis_server = ShippedRedis(tmp_path)
    store = redis_server.store
    c = new_cluster(REDIS_URL=redis_server.url)
    try:
        c.start_all(1, 2)
        alice = await ChatClient.connect(c.url(1), c.token("ra"))
        await alice.recv_type("welcome")
        bob = await ChatClient.connect(c.url(2), c.token("rb"))
        await bob.recv_type("welcome")
        await alice.send({"type": "private", "to": "rb", "text": "before", "cid": "1"})
        await bob.recv_type("message")

        redis_server.restart(signal.SIGTERM)  # a restart: Redis writes its append-only file out first
        names = Names(c.prefix)
        store.delete(names.user_servers("rb"), names.live_servers())  # as if they had expired
        restarted = time.monotonic()
        _wait(lambda: store.zcard(names.user_servers("rb")) > 0, timeout=10)
        reregistered = time.monotonic() - restarted

        for _attempt in range(5):  # as a client does: an internal error right after a restart is retried
            await alice.send({"type": "private", "to": "rb", "text": "after", "cid": "2"})
            answer = await alice.recv_until(lambda f: f.get("cid") == "2", timeout=10)
            if answer["type"] == "ack":
                break
            await asyncio.sleep(0.5)
        assert answer["type"] == "ack", answer
        got = await bob.recv_until(lambda f: f["type"] == "message" and f["text"] == "after", timeout=10)
        assert (got["text"], got["offset"]) == ("after", 2), "offsets continue: history survived"
        await bob.send({"type": "history", "channel": "user:rb", "cid": "h"})
        page = await bob.recv_until(lambda f: f.get("cid") == "h", timeout=10)
        assert page["type"] == "history", page
        assert [m["text"] for m in page["messages"]] == ["before", "after"]
        print(f"\nredis restart: sessions re-registered {reregistered:.1f}s after their keys vanished")
    finally:
        c.close()
        redis_server.stop()


@pytest.mark.gen_test(timeout=120)
async def test_a_redis_crash_that_lost_its_last_writes_is_never_passed_over_in_silence(tmp_path: Path) -> None:
    """kill -9 of Redis right after a burst. Redis writes its append-only file before it answers,
    so a killed process loses nothing: only a crash of the machine loses what was not yet
    fsynced (up to a second), and hands those offsets out again. Either way a session gets the
    next message as usual (offsets go on) or is closed with 4002 and, resuming, told which
    channel has a gap: it never drops the next message as one it has already seen (the unit test
    ``test_offsets_handed_out_again_after_a_crash_give_the_channel_a_new_epoch`` loses writes)."""
    redis_server = ShippedRedis(tmp_path)
    c = new_cluster(REDIS_URL=redis_server.url)
    try:
        c.start_all(1, 2)
        alice, _ = await c.connect(1, "ka")
        bob, welcome = await c.connect(2, "kb")
        await bob.send({"type": "resume", "positions": {}})
        for i in range(20):
            await alice.send({"type": "private", "to": "kb", "text": f"burst {i}", "cid": f"b{i}"})
        seen = [await bob.recv_type("message", timeout=10) for _ in range(20)]
        redis_server.restart(signal.SIGKILL)  # at once, right after the burst
        for _attempt in range(10):  # as a client does: an internal error right after a restart is retried
            await alice.send({"type": "private", "to": "kb", "text": "after", "cid": "after"})
            answer = await alice.recv_until(lambda f: f.get("cid") == "after", timeout=10)
            if answer["type"] == "ack":
                break
            await asyncio.sleep(0.5)
        assert answer["type"] == "ack", answer
        try:
            got = await bob.recv_until(lambda f: f["type"] == "message" and f["text"] == "after", timeout=10)
            assert got["offset"] == seen[-1]["offset"] + 1, "nothing lost: offsets go on"
            print("\nredis kill -9: nothing was lost")
        except ConnectionClosed as closed:
            assert closed.code == CLOSE_RESET, closed
            again, _ = await c.connect(1, "kb")
            resume = {"positions": {"user:kb": seen[-1]["offset"]}, "epochs": welcome["epochs"]}
            await again.send({"type": "resume", **resume, "cid": "r"})
            resumed = await again.recv_type("resumed", timeout=10)
            assert (resumed["recovered"], resumed["gaps"]) == (False, ["user:kb"]), resumed
            print(f"\nredis kill -9: lost writes; resumed {resumed}")
    finally:
        c.close()
        redis_server.stop()


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_closes_sessions_with_1001_and_withdraws_the_server() -> None:
    c = new_cluster()
    try:
        c.start(1)
        store = redis.Redis.from_url(c.env["REDIS_URL"])
        names = Names(c.prefix)
        client = await ChatClient.connect(c.url(1), c.token("leaver"))
        await client.recv_type("welcome")
        assert c.server_id(1).encode() in store.zrange(names.live_servers(), 0, -1)
        c.servers[1].proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv(timeout=10)
        assert closed.value.code == 1001
        assert c.stop(1) == 0, "a graceful stop exits 0"
        assert store.zrange(names.live_servers(), 0, -1) == []
        assert store.zcard(names.user_servers("leaver")) == 0
    finally:
        c.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _wait(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.gen_test(timeout=180)
async def test_a_stalled_kafka_makes_the_server_refuse_new_messages_at_once_until_it_catches_up(
    tmp_path: Path,
) -> None:
    kafka = OwnKafka(tmp_path)
    kafka.start()
    c = new_cluster(KAFKA_BOOTSTRAP=kafka.bootstrap, CHAT_SHED_AFTER_MS="1000")
    kafka_pid = int((tmp_path / "pids" / "kafka.pid").read_text())
    try:
        c.start_all(1)
        alice = await ChatClient.connect(c.url(1), c.token("shed-a"))
        bob = await ChatClient.connect(c.url(1), c.token("shed-b"))
        await alice.recv_type("welcome")
        await bob.recv_type("welcome")

        def private(text: str) -> dict[str, Any]:
            return {"type": "private", "to": "shed-b", "text": text, "cid": text}

        await alice.send(private("before"))
        assert (await alice.recv_until(lambda f: f.get("cid") == "before"))["type"] == "ack"

        os.kill(kafka_pid, signal.SIGSTOP)  # the broker is alive but answers nothing
        try:
            await alice.send(private("waiting"))
            with pytest.raises(TimeoutError):  # accepted, stored, waiting for Kafka's ack
                await alice.recv_until(lambda f: f.get("cid") == "waiting", timeout=1.5)
            asked = time.monotonic()
            await alice.send(private("refused"))
            refused = await alice.recv_until(lambda f: f.get("cid") == "refused", timeout=2.0)
            answered_in = time.monotonic() - asked
        finally:
            os.kill(kafka_pid, signal.SIGCONT)
        print(f"\nstalled kafka: refused in {answered_in * 1000:.0f} ms: {refused}")
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        assert "overloaded" in refused["message"]

        # Kafka resumes: what was accepted is acked and delivered, and new messages go through.
        assert (await alice.recv_until(lambda f: f.get("cid") == "waiting", timeout=60))["type"] == "ack"
        await alice.send(private("after"))
        assert (await alice.recv_until(lambda f: f.get("cid") == "after", timeout=10))["type"] == "ack"
        texts = []
        while "after" not in texts:
            texts.append((await bob.recv_type("message", timeout=10))["text"])
        assert texts == ["before", "waiting", "after"], "the refused message was neither stored nor sent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kafka_pid, signal.SIGCONT)
        c.stop(1)
        kafka.stop()
        c.close()
