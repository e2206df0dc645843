"""One load worker process: its share of the users, stepped by the parent through commands
(``run`` a step, ``stop``), reporting progress ticks and each step's figures on a result queue.

Its connections are read by one ``link.Poller`` and its sends paced by one timer
(``pacing.Pacer``); every frame that arrives is handled here, with the kernel's arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import resource
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import orjson

from .client import ConnectionClosed
from .link import Link, Poller, StreamLink
from .pacing import Pacer
from .scenarios import Script
from .stats import StepStats, Tally
from .users import Conn, close_all, connect_all, join_room

TICK_S = 0.5  # how often workers report progress to the parent
ACK_HEAD = b'{"type":"ack","cid":"'
MESSAGE_HEAD = b'{"type":"message",'


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # if refused, keep the soft limit; many connections may then fail with "Too many open files"
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Owned(Protocol):
    """What reading a frame needs of its link: the user it belongs to."""

    owner: Conn


class Worker:
    def __init__(self, plan: dict[str, Any], commands: Any, results: Any) -> None:
        self.plan = plan
        self.index: int = plan["worker"]
        self.parent = os.getppid()
        self.commands = commands
        self.results = results
        self.scenario: str = plan["scenario"]
        self.script = Script(self.scenario, plan["run"], plan["text_bytes"], plan["room"], plan["msgpack"])
        self.text_field = b'"text":"' + self.script.marker.encode()  # where our texts start
        self.conns = [Conn(spec) for spec in plan["users"]]
        self.senders: list[Conn] = []
        self.tally = Tally(private=self.scenario == "private")
        self.stopping = False
        self.expect_all = plan["procs"] == 1  # public: this worker sees every sender's acks
        self.changed = asyncio.Event()  # set when a pong arrives
        self.poller: Poller | None = None
        self.last_tick = (0, 0, 0, 0)  # progress counters at the last tick

    def put(self, message: dict[str, Any]) -> None:
        message["w"] = self.index
        self.results.put(message)

    async def next_command(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                command: dict[str, Any] = await loop.run_in_executor(None, self.commands.get, True, 1.0)
                return command
            except queue.Empty:
                self.exit_if_orphaned()

    def exit_if_orphaned(self) -> None:
        """The parent died (killed, not interrupted): nobody reads our results, so stop now. A
        normal exit would wait for the result queue to drain, which never happens."""
        if os.getppid() != self.parent:
            self.results.cancel_join_thread()
            os._exit(3)

    async def main(self) -> None:
        raise_fd_limit()
        await self.setup()
        ticker = asyncio.create_task(self.ticker())
        try:
            while True:
                command = await self.next_command()
                if command["cmd"] != "run":
                    break
                cpu = cpu_seconds()
                if self.scenario == "idle":
                    await self.idle_step(command)
                else:
                    await self.traffic_step(command)
                self.put(self.tally.stats.result(cpu_seconds() - cpu))
        finally:
            self.stopping = True
            ticker.cancel()
            await close_all(self.conns)
            if self.poller is not None:
                self.poller.close()
        self.put({"type": "bye", "cpu": cpu_seconds()})

    async def setup(self) -> None:
        self.poller = Poller()
        self.poller.arm()  # until the first step: read what arrives as it arrives
        connected = await connect_all(self.plan, self.conns, self.script, self.attach)
        if self.scenario == "room":
            await join_room(self.conns, self.script)
        by_name = {c.name: c for c in self.conns}
        senders = [c for c in self.conns if c.gid >= 0 and c.connected]
        if self.scenario == "private":  # a pair sends only when both ends are connected
            senders = [c for c in senders if c.peer is not None and by_name[c.peer].connected]
        self.senders = senders
        connected["senders"] = len(senders)
        connected["receivers"] = sum(c.rid >= 0 and c.connected for c in self.conns)
        self.put(connected)

    # ------------------------------------------------------------------ receiving

    def attach(self, conn: Conn) -> None:
        """From now on, handle what ``conn`` receives (called as soon as it is open)."""
        link = conn.link
        assert self.poller is not None
        if isinstance(link, Link):
            self.poller.add(link, self.on_frame, self.on_closed)
        elif isinstance(link, StreamLink):
            link.start(self.on_frame, self.on_closed)

    def on_frame(self, link: Owned, payload: Any, now: int, binary: bool) -> None:
        """One message from the server, arrived at ``now`` (ns, ``time.time_ns``'s clock)."""
        conn: Conn = link.owner
        tally = self.tally
        if not binary and type(payload) is bytes:
            # The server's acks and messages, as it writes them, read without parsing the whole
            # frame; anything else, or written otherwise, takes the full parse below.
            if payload.startswith(ACK_HEAD):
                step_b, dot, seq_b = payload[len(ACK_HEAD) : payload.find(b'"', len(ACK_HEAD))].partition(b".")
                if dot and step_b.isdigit() and seq_b.isdigit():
                    tally.acked(conn, int(step_b), int(seq_b), now)
                    return
            elif payload.startswith(MESSAGE_HEAD) and (at := payload.find(self.text_field)) > 0:
                if conn.rid >= 0:
                    at += len(self.text_field)
                    try:
                        gid_b, step_b, seq_b, phase_b, t_b, _ = payload[at : at + 80].split(b":", 5)
                        sent_ns, measured = int(t_b), phase_b == b"m"
                        tally.delivery(conn.rid, int(gid_b), int(step_b), int(seq_b), measured, (now - sent_ns) / 1e6)
                    except ValueError:
                        tally.error("undecodable_text")
                return
        try:
            frame = msgpack.unpackb(payload, raw=False) if binary else orjson.loads(payload)
            kind = frame.get("type")
        except (ValueError, AttributeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            tally.error("undecodable_frame")
            return
        if kind == "message":
            text = frame.get("text")
            if conn.rid < 0 or not isinstance(text, str) or not text.startswith(self.script.marker):
                return  # somebody else's traffic
            try:
                gid, step, seq, phase, t_ns = self.script.read_text(text)
            except ValueError:
                tally.error("undecodable_text")
                return
            tally.delivery(conn.rid, gid, step, seq, phase == "m", (now - t_ns) / 1e6)
        elif kind == "ack":
            tally.ack(conn, frame.get("cid"), now)
        elif kind == "error":
            tally.refused(conn, str(frame.get("code", "unknown")), frame.get("cid"))
        elif kind == "pong":
            tally.stats.pongs += 1
            self.changed.set()

    def on_closed(self, link: Link | StreamLink) -> None:
        conn: Conn = link.owner
        conn.connected = False
        if not self.stopping:
            self.tally.error(f"disconnected:{link.close_code}")

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    def tick(self) -> None:
        """Progress since the last tick, for the parent's live line and timeline."""
        self.exit_if_orphaned()
        tally = self.tally
        now = (tally.c_sent, tally.c_acked, tally.c_delivered, tally.c_errors)
        last, self.last_tick = self.last_tick, now
        self.put(
            {
                "type": "tick",
                "t": time.time(),
                "sent": now[0] - last[0],
                "acked": now[1] - last[1],
                "delivered": now[2] - last[2],
                "errors": now[3] - last[3],
                "lat": tally.take_samples(),
                "conns": sum(c.connected for c in self.conns),
            }
        )

    # ------------------------------------------------------------------ sending

    async def traffic_step(self, command: dict[str, Any]) -> None:
        self.tally.stats = stats = StepStats(command["step"])
        stats.receivers = [c.rid for c in self.conns if c.rid >= 0 and c.connected]
        for conn in self.senders:
            conn.pending.clear()
        assert self.poller is not None
        pacer = Pacer(self.senders, self.script, self.tally, self.poller, command, self.complete)
        if all(isinstance(c.link, Link) for c in self.conns if c.link is not None):
            pacer.run(self.tick, TICK_S)
        else:  # wss://: asyncio's transports need its loop
            await pacer.run_async()
        stats.quiet_s = time.perf_counter() - stats.last_delivery if stats.last_delivery else math.inf
        for conn in self.senders:
            stats.errors["unacked"] += sum(1 for _, measured in conn.pending.values() if measured)
            conn.pending.clear()
        if not stats.errors["unacked"]:
            del stats.errors["unacked"]

    async def wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Until ``done()`` (checked whenever a pong arrived) or ``deadline`` (perf_counter)."""
        while not done():
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def complete(self) -> bool:
        """Every local send answered and (when this worker can tell) every delivery in."""
        if any(c.pending for c in self.senders):
            return False
        stats = self.tally.stats
        if self.scenario == "private":
            return stats.delivered >= stats.acked
        if not self.expect_all:
            return False  # other workers' messages may still be on their way: wait the grace out
        return stats.delivered >= stats.acked * len(stats.receivers)

    # ------------------------------------------------------------------ idle

    async def idle_step(self, command: dict[str, Any]) -> None:
        self.tally.stats = stats = StepStats(command["step"])
        stats.receivers = [i for i, c in enumerate(self.conns) if c.connected]
        t_end = time.perf_counter() + (command["start"] - time.time()) + command["warmup"] + command["duration"]
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        # still there? one application-level ping on every connection that looks open
        sent_at = time.perf_counter()
        live = [c for c in self.conns if c.connected and c.link is not None]
        ping = self.script.encode({"type": "ping", "cid": "idle"})
        for conn in live:
            assert conn.link is not None
            with contextlib.suppress(ConnectionClosed):  # on_closed records the disconnect
                conn.link.send(ping)
        await self.wait_until(lambda: stats.pongs >= len(live), sent_at + command["grace"] + 3.0)
        stats.ping_ms.append((time.perf_counter() - sent_at) * 1000)


def worker_main(plan: dict[str, Any], commands: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(Worker(plan, commands, results).main())
    except BaseException as exc:
        results.put({"type": "fatal", "w": plan["worker"], "error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None
