"""One load worker process: its share of the users, stepped by the parent through commands
(``run`` a step, ``stop``), reporting progress ticks and each step's figures on a result queue.

Sends follow an absolute schedule (``time.perf_counter``): message k of a worker is due at
``start + (k + offset) / rate``, so the pace neither bursts nor drifts; if the worker falls
behind it catches up and reports how late its sends were (``lag``).
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
from typing import Any

import msgpack

from .client import ConnectionClosed
from .scenarios import Script
from .stats import StepStats, Tally
from .users import Conn, close_all, connect_all, join_room

TICK_S = 0.5  # how often workers report progress to the parent


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # if refused, keep the soft limit; many connections may then fail with "Too many open files"
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Worker:
    def __init__(self, plan: dict[str, Any], commands: Any, results: Any) -> None:
        self.plan = plan
        self.index: int = plan["worker"]
        self.parent = os.getppid()
        self.commands = commands
        self.results = results
        self.scenario: str = plan["scenario"]
        self.script = Script(self.scenario, plan["run"], plan["text_bytes"], plan["room"], plan["msgpack"])
        self.conns = [Conn(spec) for spec in plan["users"]]
        self.senders: list[Conn] = []
        self.tally = Tally(private=self.scenario == "private")
        self.stopping = False
        self.expect_all = plan["procs"] == 1  # public: this worker sees every sender's acks
        self.changed = asyncio.Event()  # set whenever a frame arrives

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
        self.put({"type": "bye", "cpu": cpu_seconds()})

    async def setup(self) -> None:
        connected = await connect_all(self.plan, self.conns, self.script)
        for conn in self.conns:
            if conn.connected:
                conn.reader = asyncio.create_task(self.read(conn))
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

    async def read(self, conn: Conn) -> None:
        """Handle every frame of ``conn`` as it is parsed (a callback: no coroutine switch per
        frame), until the connection closes."""
        assert conn.ws is not None
        closed = asyncio.get_running_loop().create_future()
        tally, script = self.tally, self.script

        def on_frame(raw: str | bytes) -> None:
            try:
                frame = script.decode(raw)
                kind = frame.get("type")
            except (ValueError, AttributeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                tally.error("undecodable_frame")
                return
            self.changed.set()
            if kind == "message":
                self.on_message(conn, frame)
            elif kind == "ack":
                tally.ack(conn, frame.get("cid"), time.time_ns())
            elif kind == "error":
                tally.refused(conn, str(frame.get("code", "unknown")), frame.get("cid"))
            elif kind == "pong":
                tally.stats.pongs += 1

        def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        try:
            conn.ws.handle_with(on_frame, on_closed)
            await closed
        finally:
            conn.connected = False
            if not self.stopping:
                code = conn.ws.close_code if conn.ws is not None else None
                tally.error(f"disconnected:{code}")

    def on_message(self, conn: Conn, frame: dict[str, Any]) -> None:
        text = frame.get("text")
        if conn.rid < 0 or not isinstance(text, str) or not self.script.ours(text):
            return  # somebody else's traffic
        now = time.time_ns()
        try:
            gid, step, seq, phase, t_ns = self.script.read_text(text)
        except ValueError:
            self.tally.error("undecodable_text")
            return
        self.tally.delivery(conn.rid, gid, step, seq, phase == "m", (now - t_ns) / 1e6)

    async def ticker(self) -> None:
        last = (0, 0, 0, 0)
        tally = self.tally
        while True:
            await asyncio.sleep(TICK_S)
            self.exit_if_orphaned()
            now = (tally.c_sent, tally.c_acked, tally.c_delivered, tally.c_errors)
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
            last = now

    # ------------------------------------------------------------------ sending

    async def traffic_step(self, command: dict[str, Any]) -> None:
        self.tally.stats = stats = StepStats(command["step"])
        stats.receivers = [c.rid for c in self.conns if c.rid >= 0 and c.connected]
        for conn in self.senders:
            conn.pending.clear()
        start_perf = time.perf_counter() + (command["start"] - time.time())
        t_measure = start_perf + command["warmup"]
        t_end = t_measure + command["duration"]
        rate: float = command["rate"]
        senders = self.senders
        if rate > 0 and senders:
            await self.send_loop(senders, stats.step, rate, command["offset"], start_perf, t_measure, t_end)
        else:
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        await self.wait_until(self.complete, max(time.perf_counter(), t_end) + command["grace"])
        stats.quiet_s = time.perf_counter() - stats.last_delivery if stats.last_delivery else math.inf
        for conn in senders:
            stats.errors["unacked"] += sum(1 for _, measured in conn.pending.values() if measured)
            conn.pending.clear()
        if not stats.errors["unacked"]:
            del stats.errors["unacked"]

    async def send_loop(
        self, senders: list[Conn], step: int, rate: float, offset: float, start: float, t_measure: float, t_end: float
    ) -> None:
        tally, script = self.tally, self.script
        stats = tally.stats
        n = len(senders)
        k = 0
        burst = 0
        while True:
            due = start + (k + offset) / rate
            if due >= t_end:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
                burst = 0
            elif burst >= 50:  # far behind schedule: let the readers run between sends
                await asyncio.sleep(0)
                burst = 0
            burst += 1
            conn = senders[k % n]
            k += 1
            measured = due >= t_measure
            seq = conn.next_seq
            conn.next_seq += 1
            t_ns = time.time_ns()
            frame = script.message(conn.gid, conn.peer, step, seq, measured, t_ns)
            conn.pending[seq] = (t_ns, measured)
            ws = conn.ws
            if ws is None or not conn.connected:
                conn.pending.pop(seq, None)
                tally.error("send_failed")
                continue
            try:
                await ws.send(frame)
            except ConnectionClosed:
                conn.pending.pop(seq, None)
                tally.error("send_failed")
                continue
            tally.c_sent += 1
            if measured:
                stats.sent += 1
                stats.lag.append((now - due) * 1000)
            else:
                stats.sent_warmup += 1
        for conn in senders:  # the next step starts its sequence numbers again
            conn.next_seq = 0

    async def wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Until ``done()`` (checked whenever a frame arrived) or ``deadline`` (perf_counter)."""
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
        live = [c for c in self.conns if c.connected and c.ws is not None]
        ping = self.script.encode({"type": "ping", "cid": "idle"})
        for conn in live:
            assert conn.ws is not None
            with contextlib.suppress(ConnectionClosed):  # the reader records the disconnect
                await conn.ws.send(ping)
        await self.wait_until(lambda: stats.pongs >= len(live), sent_at + command["grace"] + 3.0)
        stats.ping_ms.append((time.perf_counter() - sent_at) * 1000)


def worker_main(plan: dict[str, Any], commands: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(Worker(plan, commands, results).main())
    except BaseException as exc:
        results.put({"type": "fatal", "w": plan["worker"], "error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None
