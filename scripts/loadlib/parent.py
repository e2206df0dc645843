"""The parent process: starts the workers, steps them through the run (one step, or a ramp),
gathers their progress and results, and merges them into the report."""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import secrets
import time
from collections.abc import Callable
from typing import Any

from . import report as reports
from .cluster import Fatal, preflight
from .options import MAX_RAMP_STEPS
from .report import Progress, step_line
from .scenarios import build_plans
from .stats import merge_connect, merge_idle, merge_step
from .worker import cpu_seconds, worker_main

START_DELAY_S = 0.5  # between the parent's "go" and the first scheduled send


class Run:
    """The parent: starts workers, steps them through the plan, merges what they report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.prefix = args.prefix or f"lt-{self.run_id}"
        self.progress = Progress(not args.quiet)
        self.timeline: dict[int, dict[str, Any]] = {}
        self.t_origin = 0.0
        self.procs: list[Any] = []
        self.commands: list[Any] = []
        self.results: Any = None
        self.fatal: str | None = None
        steps = MAX_RAMP_STEPS if args.ramp else 1
        per_step = args.warmup + args.duration + args.grace + 5.0 + START_DELAY_S
        self.deadline = time.monotonic() + 60 + args.users * 0.15 + steps * per_step  # the hard timeout

    # ------------------------------------------------------------------ messages from workers

    def receive(self, timeout: float) -> dict[str, Any] | None:
        if time.monotonic() > self.deadline:
            raise Fatal("hard timeout: the run took far longer than planned; stopped")
        try:
            message: dict[str, Any] = self.results.get(timeout=timeout)
        except queue.Empty:
            for proc in self.procs:
                if proc.exitcode not in (None, 0):
                    raise Fatal(f"a load worker died (exit {proc.exitcode})") from None
            return None
        if message["type"] == "fatal":
            raise Fatal(f"load worker {message['w']} failed: {message['error']}")
        if message["type"] == "tick":
            self.progress.add(message)
            self.record_tick(message)
        return message

    def gather(self, kind: str, count: int, label: Callable[[], str], timeout: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        until = time.monotonic() + timeout
        while len(got) < count:
            if time.monotonic() > until:
                raise Fatal(f"hard timeout while waiting for the load workers ({label})")
            message = self.receive(0.5)  # workers tick every 0.5 s: no need to wake more often
            if message is not None and message["type"] == kind:
                got.append(message)
            self.progress.show(label())
        return got

    def record_tick(self, tick: dict[str, Any]) -> None:
        if not self.t_origin:
            return
        second = int(tick["t"] - self.t_origin)
        slot = self.timeline.setdefault(second, {"sent": 0, "delivered": 0, "errors": 0, "lat": []})
        slot["sent"] += tick["sent"]
        slot["delivered"] += tick["delivered"]
        slot["errors"] += tick["errors"]
        slot["lat"].extend(tick["lat"])

    # ------------------------------------------------------------------ the run

    def start_workers(self, plans: list[dict[str, Any]]) -> None:
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        for plan in plans:
            commands = context.Queue()
            proc = context.Process(target=worker_main, args=(plan, commands, self.results), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.commands.append(commands)

    def kill_workers(self) -> None:
        """After an interrupt or a failure: workers may be mid-step; end them now."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)

    def stop_workers(self) -> list[dict[str, Any]]:
        for commands in self.commands:
            commands.put({"cmd": "stop"})
        byes: list[dict[str, Any]] = []
        until = time.monotonic() + 10
        while len(byes) < len(self.procs) and time.monotonic() < until:
            try:
                message = self.results.get(timeout=0.2)
            except queue.Empty:
                if all(p.exitcode is not None for p in self.procs):
                    break
                continue
            if message["type"] == "bye":
                byes.append(message)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        return byes

    def execute(self) -> tuple[dict[str, Any], int]:
        args = self.args
        preflight(args, self.prefix)
        plans = build_plans(args, self.prefix, self.run_id)
        wall = time.time()
        cpu0 = cpu_seconds()
        self.start_workers(plans)
        finished = False
        try:
            login = "logging in and connecting" if not args.secret else "connecting"
            self.progress.note(f"{login} {args.users} users ({args.scenario}, {len(plans)} process(es)) ...")
            connected = self.gather("connected", len(plans), lambda: "connecting", 60 + args.users * 0.15)
            connect = merge_connect(connected)
            self.progress.note(
                f"connected {connect['ok']}/{connect['ok'] + connect['failed']} in {connect['seconds']:.2f} s "
                f"({connect['rate_per_s']:.0f}/s)"
            )
            if connect["failed"]:
                self.progress.note(
                    f"{connect['failed']} of {connect['ok'] + connect['failed']} connections failed: "
                    f"first error {connect['first_error']}"
                )
            if connect["ok"] == 0:
                raise Fatal(f"all {connect['failed']} connections failed: first error {connect['first_error']}")
            senders = {c["w"]: c["senders"] for c in connected}
            if args.scenario != "idle" and not sum(senders.values()):
                raise Fatal("no sender could run (each needs its connection and, for private, its receiver's)")
            steps = self.steps(senders, connect)
            finished = True
        finally:
            self.progress.done()
            if not finished:
                self.kill_workers()
        byes = self.stop_workers()
        cpu = cpu_seconds() - cpu0 + sum(b["cpu"] for b in byes)
        elapsed = time.time() - wall
        report = reports.build(args, self.prefix, connect, steps, self.timeline, (cpu, elapsed, len(plans)))
        return report, report["exit_code"]

    def steps(self, senders: dict[int, int], connect: dict[str, Any]) -> list[dict[str, Any]]:
        args = self.args
        total = sum(senders.values())
        live = list(range(len(self.procs)))
        results: list[dict[str, Any]] = []
        rate = args.rate
        for step in range(MAX_RAMP_STEPS if args.ramp else 1):
            start = time.time() + START_DELAY_S
            if not self.t_origin:
                self.t_origin = start
            for w in live:
                share = senders.get(w, 0) / total if total else 0.0
                self.commands[w].put(
                    {
                        "cmd": "run",
                        "step": step,
                        "rate": rate * share,
                        "offset": w / len(live),
                        "start": start,
                        "warmup": args.warmup,
                        "duration": args.duration,
                        "grace": args.grace,
                    }
                )
            label = self.step_label(step, rate, start)
            budget = START_DELAY_S + args.warmup + args.duration + args.grace + 30
            parts = self.gather("step", len(live), label, budget)
            self.progress.done()
            if args.scenario == "idle":
                result = merge_idle(step, parts, connect, args.warmup + args.duration)
            else:
                result = merge_step(step, rate, parts, args)
            # The measured window on the wall clock, for tools that read other processes' CPU
            # over exactly that time (benchmarks/run.py).
            result["window_unix"] = [round(start + args.warmup, 3), round(start + args.warmup + args.duration, 3)]
            results.append(result)
            if not args.quiet and args.ramp:
                self.progress.note(step_line(result))
            if not args.ramp or not result["good"]:
                break
            rate = round(rate * args.ramp_factor, 3)
        return results

    def step_label(self, step: int, rate: float, start: float) -> Callable[[], str]:
        args = self.args

        def label() -> str:
            t = time.time() - start
            head = f"step {step + 1} @ {rate:g}/s " if args.ramp else ""
            if args.scenario == "idle":
                return f"{head}holding {min(t, args.warmup + args.duration):.0f}/{args.warmup + args.duration:g} s"
            if t < 0:
                return f"{head}starting"
            if t < args.warmup:
                return f"{head}warmup {t:.0f}/{args.warmup:g} s"
            if t < args.warmup + args.duration:
                return f"{head}measure {t - args.warmup:.0f}/{args.duration:g} s"
            return f"{head}grace"

        return label

    # ------------------------------------------------------------------ merging
