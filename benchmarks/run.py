#!/usr/bin/env python3
"""The benchmark: one command that runs a fixed matrix against a chat cluster and prints a table.

    python benchmarks/run.py            # starts its own 2-server cluster, runs the full matrix, stops it
    python benchmarks/run.py --short    # the small, bounded matrix CI runs (about a minute)
    python benchmarks/run.py --url http://127.0.0.1:8081 --url http://127.0.0.1:8082   # a running cluster

Each scenario is one run of ``scripts/loadtest.py --json`` (the operator's tool, unchanged).
Around it the harness reads, from ``/proc``, the CPU time of every process of the cluster (the chat
servers, Redis, Kafka, nginx: found by the port they listen on) and of the load generator, and the
servers' resident memory, so each row also says what a delivered message costs:

- ``server µs/msg``: CPU microseconds of all chat servers together per delivered message;
- ``all µs/msg``: the same for servers + Redis + Kafka + generator (everything on the machine);
- ``gen µs/msg``: the load generator's own share of that;
- idle rows: resident memory per connection (growth of the servers' RSS while the connections
  are held, divided by the connections) and the connect rate.

Without ``--url`` the cluster is started with ``scripts/up.sh`` in a run folder of its own
(``.run/bench``, ports 8280+), with the per-connection and per-user rate limits off (a benchmark
is one IP sending as fast as it is told), and stopped with ``scripts/down.sh`` at the end. Redis and
Kafka already running are used, never stopped. ``--json FILE`` keeps every figure.

Two rows bound what any tuning of the chat server can reach on the machine:

- ``kafka-rtt``: the broker's produce round trip with the servers' settings, at a low rate;
- ``ceiling-*``: the same private traffic against ``benchmarks/ceiling.py``, a bare Tornado
  relay with no Redis, Kafka, history or limits, run after the cluster is stopped.

Every row also says whether it can be trusted (``benchmarks/trust.py``): before it, with the
cluster settled, a short CPU-bound calibration is compared with ``benchmarks/reference.json``
and the CPU of everything outside the run (others) and the steal are read for 2 s; during it
(its measured window) others and steal again. Beyond ``--max-others``, ``--max-steal``,
``--max-slowdown``, ``--max-generator-us`` or ``--max-jit`` (Kafka's JIT compiler threads) the
row is marked untrustworthy, with the reasons, in the table and the JSON; the idle row waits
first for Kafka's own CPU to settle, and the first row with traffic for its JIT (``warm-up``). The run
begins by printing the machine's facts and a warning when it is not quiet. An untrustworthy row
is reported, never an error (CI's machine is shared), unless ``--strict``. ``--repeat N`` runs
each row N times and reports the median and range of its figures.

A ramp row starts a little below the last good rate known for it (its previous run, else
``last_good_rates`` in the reference file, else the matrix's rate; ``--ramp-start``) and raises
the rate by the matrix's factor until a step fails; then it ramps again from that last good rate
in steps of the factor's fourth root (x1.057 for x1.25), so it finds the ceiling to a few
percent in a few steps. ``--record-rates`` keeps trusted ramps' results in the reference file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trust  # benchmarks/trust.py: whether a row can be trusted, and the /proc reader

ROOT = Path(__file__).resolve().parents[1]
LOADTEST = ROOT / "scripts" / "loadtest.py"
# The load tool's package (scripts/loadlib), for what a row shares with it: the meaning of its
# options, its percentiles, which figures of its report a row bills. A script in benchmarks/ sees
# only its own folder, and scripts/ is not an installed package.
sys.path.insert(0, str(ROOT / "scripts"))
from loadlib import options as loadoptions  # noqa: E402
from loadlib import report as loadreport  # noqa: E402
from loadlib.stats import percentiles  # noqa: E402

PROC = trust.Proc()
#: Samples (0.2 s apart) between two readings of every thread's wake-ups: about once a second.
WAKEUP_EVERY = 5
# Redis and Kafka of the cluster: those scripts/lib.sh starts or finds (REDIS_PORT, KAFKA_PORT)
REDIS_URL = os.environ.get("REDIS_URL", f"redis://127.0.0.1:{os.environ.get('REDIS_PORT', '6379')}/0")
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")

#: What the benchmark's own cluster runs with: no rate limits (one IP, a paced generator) and
#: room for 10,000 connections per server from one address.
BENCH_ENV = {
    "CHAT_CONN_RATE_PER_S": "0",
    "CHAT_USER_RATE_PER_S": "0",
    "CHAT_MAX_CONNS_PER_IP": "100000",
    "CHAT_MAX_SESSIONS_PER_USER": "100",
    "CHAT_LOG_LEVEL": "warning",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line for the table
    args: tuple[str, ...]  # loadtest arguments besides --url/--secret/--json
    timeout_s: float
    target: str = "cluster"  # or "ceiling": the bare relay of benchmarks/ceiling.py, not the chat server


def matrix(short: bool) -> list[Scenario]:
    """The fixed matrix; ``short`` is the CI size: every kind of row, small and quick.

    Idle connections come first: resident memory per connection is the servers' growth, and
    Python keeps memory it once used, so it is only true on servers that have not yet held
    as many connections. Overload rows come last: their backlog outlives them."""
    if short:
        return [
            Scenario("idle", "idle 200 connections", ("--scenario", "idle", "--users", "200", "--duration", "2"), 60),
            Scenario("private", "private 20 users, 200/s", ("--users", "20", "--rate", "200", "--duration", "2"), 60),
            Scenario(
                "private-ramp",
                "private ramp from 100/s x2, p99 <= 50 ms",
                ("--users", "20", "--rate", "100", "--ramp", "--ramp-factor", "2", "--duration", "1"),
                180,
            ),
            Scenario(
                "public",
                "public fan-out to 50 users, 10/s",
                ("--scenario", "public", "--users", "50", "--rate", "10", "--duration", "2"),
                60,
            ),
            Scenario(
                "ceiling",
                "bare Tornado relay, private 20 users, 200/s",
                ("--users", "20", "--rate", "200", "--duration", "2"),
                60,
                target="ceiling",
            ),
        ]
    # 100 pairs, the target's shape. 3 s of warmup: users connecting announce themselves to each
    # other (presence, N² frames), and that storm is not message traffic.
    pairs = ("--users", "200", "--warmup", "3")
    overload = ("--users", "200", "--warmup", "1")
    fan_out = (
        "--scenario",
        "public",
        "--users",
        "1000",
        "--duration",
        "10",
        "--warmup",
        "3",
        "--procs",
        "2",
    )  # a long warmup only queues more ahead of the window
    return [
        Scenario(
            "idle-10k",
            "idle 10,000 connections per server",
            ("--scenario", "idle", "--users", "20000", "--duration", "10", "--procs", "2"),
            600,
        ),
        Scenario("private-1k", "private 100 pairs, 1,000/s", (*pairs, "--rate", "1000", "--duration", "10"), 120),
        Scenario(
            "private-ramp",
            "private ramp from 250/s x1.25, p99 <= 50 ms",
            (*pairs, "--rate", "250", "--ramp", "--ramp-factor", "1.25", "--duration", "5", "--procs", "2"),
            900,
        ),
        Scenario(
            "public-1000",
            "public fan-out to 1,000 users, 20/s",
            (*fan_out, "--rate", "20"),
            300,
        ),
        Scenario(
            "public-1000-fast",
            "public fan-out to 1,000 users, 100/s",
            (*fan_out, "--rate", "100"),
            300,
        ),
        Scenario(
            "private-3k",
            "private 100 pairs, 3,000/s",
            (*overload, "--rate", "3000", "--duration", "5", "--procs", "2"),
            180,
        ),
        Scenario(
            "private-10k",
            "private 100 pairs, 10,000/s",
            (*overload, "--rate", "10000", "--duration", "5", "--procs", "2"),
            240,
        ),
        # The same private traffic against a bare Tornado relay (no Redis, Kafka, history or
        # limits), with nothing else running: the most any Tornado server can carry here, and
        # at the private rows' rates, the least CPU per message its frames alone cost.
        Scenario(
            "ceiling-1k",
            "bare Tornado relay, private 100 pairs, 1,000/s",
            (*pairs, "--rate", "1000", "--duration", "10"),
            120,
            target="ceiling",
        ),
        Scenario(
            "ceiling-3k",
            "bare Tornado relay, private 100 pairs, 3,000/s",
            (*overload, "--rate", "3000", "--duration", "5", "--procs", "2"),
            180,
            target="ceiling",
        ),
        Scenario(
            "ceiling-ramp",
            "bare Tornado relay, private ramp from 1,000/s x1.25, p99 <= 50 ms",
            (*pairs, "--rate", "1000", "--ramp", "--ramp-factor", "1.25", "--duration", "5", "--procs", "2"),
            900,
            target="ceiling",
        ),
        Scenario(
            "ceiling-10k",
            "bare Tornado relay, private 100 pairs, 10,000/s",
            (*overload, "--rate", "10000", "--duration", "5", "--procs", "2"),
            240,
            target="ceiling",
        ),
    ]


# Not a result: a Kafka that has just started compiles its hot paths in its first minute of
# traffic (its JIT threads took a quarter of a core, and the first private-1k row after a start
# measured Kafka at 767 µs per message instead of 262-317 and p50 10.3 ms instead of 5.0-5.2).
# This traffic runs in rounds before the first row that sends messages, until a round finds the
# JIT below the trust limit (warm_up).
WARM_UP = Scenario(
    "warm-up",
    "private 100 pairs, 1,000/s, in 10 s rounds until Kafka's JIT has settled (not a result)",
    ("--users", "200", "--warmup", "3", "--rate", "1000", "--duration", "10"),
    120,
)
WARM_UP_LIMIT_S = 180.0  # at most this long; the rows after it are then marked as compiling


# ------------------------------------------------------------------------------ /proc


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:``port`` (ours, so ``ss -p`` may show it)."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


@dataclasses.dataclass
class Cluster:
    urls: list[str]  # chat servers, each pinned directly
    secret: str | None
    pids: dict[str, int]  # role ("ws-1", "redis", "kafka") -> pid: their CPU is billed to the messages
    helpers: dict[str, int] = dataclasses.field(default_factory=dict)  # take part, not billed (nginx)

    def servers(self) -> list[int]:
        return [pid for role, pid in self.pids.items() if role.startswith("ws-")]

    def cpu(self) -> dict[str, float]:
        return {role: PROC.cpu_seconds(pid) for role, pid in self.pids.items()}

    def participants(self) -> list[int]:
        """The roots of every process tree that is part of the run: the cluster's, and the
        harness's own (the load generator and the ceiling relay are its children)."""
        return [os.getpid(), *self.pids.values(), *self.helpers.values()]


def discover(urls: list[str], secret: str | None, nginx_port: int | None = None) -> Cluster:
    pids: dict[str, int] = {}
    for i, url in enumerate(urls, 1):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        pid = listening_pid(port)
        if pid is not None:
            pids[f"ws-{i}"] = pid
    for role, port in (
        ("redis", int(os.environ.get("REDIS_PORT", "6379"))),
        ("kafka", int(os.environ.get("KAFKA_PORT", "9092"))),
    ):
        pid = listening_pid(port)
        if pid is not None:
            pids[role] = pid
    helpers: dict[str, int] = {}
    nginx = listening_pid(nginx_port) if nginx_port else None
    if nginx is not None:
        helpers["nginx"] = nginx
    return Cluster(urls, secret, pids, helpers)


# ------------------------------------------------------------------------------ running


class Sampler(threading.Thread):
    """Every 0.2 s while a scenario runs: the CPU seconds of each role so far (wall-clock
    stamped), the servers' total RSS (its peak is kept), and the machine's counters (what the
    run's processes, everything else and the hypervisor took: benchmarks/trust.py)."""

    def __init__(self, cluster: Cluster, generator: int) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.generator = generator
        self.generator_cpu: dict[int, float] = {}  # last reading of each generator process
        self.generator_woken: dict[int, int] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.wakeups: list[tuple[float, dict[str, float]]] = []  # each second: (time, role -> count)
        self.compiling: list[tuple[float, dict[str, float]]] = []  # each second: (time, role -> JIT CPU s)
        self.machine: list[trust.Sample] = []
        self.proc = trust.Proc()
        self.kernel_threads = self.proc.kernel_threads()
        self.names: tuple[float, trust.Snapshot] = (0.0, {})  # every process, to name the others
        self.names_at_end: tuple[float, trust.Snapshot] = (0.0, {})
        self.participants_at_end: set[int] = set()
        self.peak_rss = 0
        self.done = threading.Event()

    def sample(self) -> None:
        for pid in self.proc.tree([self.generator]):  # the load tool and its worker processes
            self.generator_cpu[pid] = max(self.generator_cpu.get(pid, 0.0), self.proc.cpu_seconds(pid))
        cpu = self.cluster.cpu()
        cpu["generator"] = sum(self.generator_cpu.values())
        self.samples.append((time.time(), cpu))
        if len(self.samples) % WAKEUP_EVERY == 1:
            woken = {role: float(self.proc.wakeups(pid)) for role, pid in self.cluster.pids.items()}
            for pid in self.generator_cpu:  # a worker that ended keeps its last reading
                self.generator_woken[pid] = max(self.generator_woken.get(pid, 0), self.proc.wakeups(pid))
            woken["generator"] = float(sum(self.generator_woken.values()))
            self.wakeups.append((time.time(), woken))
            jit = {role: self.proc.compiling_seconds(pid) for role, pid in self.cluster.pids.items()}
            self.compiling.append((time.time(), jit))
        self.machine.append(trust.sample(self.proc, self.cluster.participants(), self.kernel_threads))
        self.peak_rss = max(self.peak_rss, sum(self.proc.rss_kib(pid) for pid in self.cluster.servers()))

    def run(self) -> None:
        self.names = trust.snapshot(self.proc)
        self.sample()
        while not self.done.wait(0.2):
            self.sample()
        self.sample()
        self.names_at_end = trust.snapshot(self.proc)
        self.participants_at_end = self.proc.tree(self.cluster.participants())

    def machine_between(self, start: float, end: float) -> trust.Usage:
        """What the machine did from ``start`` to ``end``; the busiest others are those of the
        whole run of the scenario."""
        during = trust.window(self.machine, start, end)
        named = trust.top_others(self.names, self.names_at_end, self.participants_at_end)
        return dataclasses.replace(during, top_others=named)

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each role from ``start`` to ``end`` (unix times), interpolated."""
        return between(self.samples, start, end)

    def wakeups_between(self, start: float, end: float) -> dict[str, float]:
        """Wake-ups of each role's threads from ``start`` to ``end``, interpolated."""
        return between(self.wakeups, start, end) if len(self.wakeups) > 1 else {}

    def compiling_between(self, start: float, end: float) -> dict[str, float]:
        """The roles whose JIT compiled from ``start`` to ``end``: % of one core each."""
        if len(self.compiling) < 2 or end <= start:
            return {}
        spent = between(self.compiling, start, end)
        return {role: round(100 * s / (end - start), 1) for role, s in spent.items() if s > 0}


def between(samples: list[tuple[float, dict[str, float]]], start: float, end: float) -> dict[str, float]:
    """How much each counter of the stamped ``samples`` grew from ``start`` to ``end``
    (unix times), interpolated between the samples around them."""

    def at(when: float) -> dict[str, float]:
        before = [s for s in samples if s[0] <= when] or samples[:1]
        after = [s for s in samples if s[0] >= when] or samples[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        share = 0.0 if t1 == t0 else (when - t0) / (t1 - t0)
        return {role: c0.get(role, 0.0) + share * (c1.get(role, 0.0) - c0.get(role, 0.0)) for role in c1}

    first, last = at(start), at(end)
    return {role: round(last[role] - first.get(role, 0.0), 3) for role in last}


def idle_cost(cluster: Cluster, seconds: float = 3.0) -> tuple[dict[str, Any], trust.Usage]:
    """What the cluster burns with no traffic (the consumer's poll callback, heartbeats): the
    floor under every per-message figure at low rates; and what the machine did meanwhile."""
    span = trust.Span(trust.Proc(), cluster.participants())
    before = cluster.cpu()
    time.sleep(seconds)
    after = cluster.cpu()
    during = span.end()
    share = {role: round(100 * (after[role] - before.get(role, 0.0)) / seconds, 1) for role in after}
    return {"name": "idle-cpu", "what": f"no traffic for {seconds:g} s", "cpu_percent_of_one_core": share}, during


def settle_broker(cluster: Cluster, below_pct: float, for_s: int, limit_s: float) -> dict[str, Any] | None:
    """Wait until Kafka's own CPU has stayed below ``below_pct`` of a core for ``for_s``
    consecutive seconds, at most ``limit_s``: a broker that has just started, or just carried
    traffic, compiles and compacts for a while, and an idle row taken then measures that."""
    pid = cluster.pids.get("kafka")
    if pid is None:
        return None
    started = time.monotonic()
    quiet, pct = 0, 0.0
    while True:
        cpu0, t0 = PROC.cpu_seconds(pid), time.monotonic()
        time.sleep(1.0)
        pct = 100 * (PROC.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        quiet = quiet + 1 if pct < below_pct else 0
        waited = time.monotonic() - started
        if quiet >= for_s or waited >= limit_s:
            break
    return {
        "settled": quiet >= for_s,
        "waited_s": round(waited, 1),
        "kafka_percent_of_one_core": round(pct, 1),
        "below_percent": below_pct,
        "for_s": for_s,
        "limit_s": limit_s,
    }


def brokers(cluster: Cluster) -> list[str]:
    """The cluster's Kafka brokers, by role: ``kafka``, or ``kafka-1``... of ``up.sh --ha``."""
    return [role for role in cluster.pids if role == "kafka" or role.startswith("kafka-")]


def warm_up(
    cluster: Cluster, limit_pct: float, before_round: Callable[[], object] = lambda: None
) -> dict[str, Any] | None:
    """``WARM_UP`` rounds until one finds every broker's JIT at or below ``limit_pct`` of a core,
    at most ``WARM_UP_LIMIT_S``: the rows after it measure brokers as they run for hours, not
    as they start. The warm-up row, with the busiest broker's JIT per round; None without a
    local broker."""
    names = brokers(cluster)
    if not names:
        return None
    print(f"warming up: {WARM_UP.what}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    seen: list[float] = []
    while not seen or (seen[-1] > limit_pct and time.monotonic() - started < WARM_UP_LIMIT_S):
        before_round()
        row, _ = run_scenario(cluster, WARM_UP)
        if "failed" in row:
            return row
        jit = row["compiling_percent_of_one_core"]
        seen.append(max(jit.get(name, 0.0) for name in names))
    waited = round(time.monotonic() - started, 1)
    settled = seen[-1] <= limit_pct
    return {
        "name": WARM_UP.name,
        "what": WARM_UP.what,
        "warm_up": {"rounds": len(seen), "seconds": waited, "kafka_jit_percent_of_one_core": seen},
        "trusted": settled,
        "untrusted_because": [] if settled else [f"kafka still compiling after {waited:g} s of traffic"],
    }


def settle(cluster: Cluster, idle: dict[str, float], limit_s: float = 120.0) -> float:
    """Wait until the servers are back near their idle CPU (an overloaded row leaves a backlog
    that would otherwise be billed to the next one); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cluster.cpu()
        time.sleep(1.0)
        after = cluster.cpu()
        busy = [100 * (after[r] - before.get(r, 0.0)) > 2 * idle.get(r, 0.0) + 10 for r in after]
        if not any(busy):
            break
    return round(time.monotonic() - started, 1)


def run_scenario(cluster: Cluster, scenario: Scenario) -> tuple[dict[str, Any], trust.Usage | None]:
    """One loadtest run with the cluster's CPU and memory read around it, and what the machine
    did over its measured window."""
    command = [sys.executable, str(LOADTEST), "--json", "--quiet", *scenario.args]
    for url in cluster.urls:
        command += ["--url", url]
    if cluster.secret:
        command += ["--secret", cluster.secret]
    rss_before = sum(PROC.rss_kib(pid) for pid in cluster.servers())
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(cluster, proc.pid)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=scenario.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        failed = f"no result within {scenario.timeout_s:g} s"
        return {"name": scenario.name, "what": scenario.what, "failed": failed}, None
    finally:
        sampler.done.set()
        sampler.join()
    try:
        report: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        failed = f"exit {proc.returncode}: {' | '.join(tail)}"
        return {"name": scenario.name, "what": scenario.what, "failed": failed}, None
    row: dict[str, Any] = {
        "name": scenario.name,
        "what": scenario.what,
        "exit_code": proc.returncode,
        "elapsed_s": round(time.monotonic() - started, 1),
        "report": report,
    }
    if report["scenario"] == "idle":
        held = report["still_connected"]
        row["connections_per_server"] = round(held / max(1, len(cluster.servers())))
        row["rss_kib_per_connection"] = round((sampler.peak_rss - rss_before) / held, 1) if held else None
        return row, sampler.machine_between(*report["window_unix"])
    row["measured"] = measured = loadreport.measured(report)  # a ramp's: at its last good rate
    # Cost per message over the measured window only: connecting users (and the presence
    # every connection announces to everyone) is not message traffic.
    cpu = sampler.cpu_between(*measured["window_unix"])
    row["cpu_seconds_in_window"] = cpu
    delivered = measured["delivered"]
    servers_cpu = sum(v for k, v in cpu.items() if k.startswith("ws-"))
    row["server_us_per_delivery"] = round(1e6 * servers_cpu / delivered, 1) if delivered else None
    row["all_us_per_delivery"] = round(1e6 * sum(cpu.values()) / delivered, 1) if delivered else None
    # The generator's own cost: beyond about 50 µs per message it, not the servers, sets the pace.
    row["generator_us_per_delivery"] = round(1e6 * cpu.get("generator", 0.0) / delivered, 1) if delivered else None
    # What a message costs is mostly how many times it wakes a thread (each wake-up finds the
    # caches cold on a shared machine): each role's wake-ups per delivered message.
    woken = sampler.wakeups_between(*measured["window_unix"])
    if delivered and woken:
        row["wakeups_per_delivery"] = {role: round(n / delivered, 2) for role, n in woken.items()}
    # A JVM still compiling takes a core's share from everything else: the row says how much.
    row["compiling_percent_of_one_core"] = sampler.compiling_between(*measured["window_unix"])
    return row, sampler.machine_between(*measured["window_unix"])


def kafka_round_trip(bootstrap: str, topic: str, count: int = 300, rate: float = 100.0) -> dict[str, Any]:
    """The broker's share of every message's latency, at ``rate``/s with the servers' settings:
    produce (acks=all, idempotence, linger 1 ms) until the delivery report (what an ack waits
    for), and until a consumer (fetch.min.bytes 1) has the message (what a delivery waits for),
    both polled without pause. The topic is deleted afterwards."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 1})
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False, "fetch.min.bytes": 1}
    )
    acked: list[float] = []
    consumed: list[float] = []
    try:
        for i in range(count + 20):  # the first 20 find the leader and the consumer's position: not counted
            if i == 0:
                producer.produce(topic, b"create")
                producer.flush(10)
                consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
            reported: list[float] = []
            seen = 0.0
            started = time.perf_counter()
            on_delivery = lambda _e, _m, out=reported: out.append(time.perf_counter())  # noqa: E731
            producer.produce(topic, str(i).encode(), on_delivery=on_delivery)
            while (not reported or not seen) and time.perf_counter() - started < 10:
                producer.poll(0)
                for msg in consumer.consume(10, 0):
                    if msg.error() is None and msg.value() == str(i).encode():
                        seen = time.perf_counter()
            if not reported:
                return {"name": "kafka-rtt", "what": "Kafka round trip", "failed": "no delivery report in 10 s"}
            if i >= 20 and seen:
                acked.append(1000 * (reported[0] - started))
                consumed.append(1000 * (seen - started))
            time.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    finally:
        consumer.close()
        producer.flush(5)
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic], operation_timeout=10)
    if len(consumed) < count / 2:
        return {"name": "kafka-rtt", "what": "Kafka round trip", "failed": f"consumed only {len(consumed)} of {count}"}

    def pick(values: list[float]) -> dict[str, float]:
        found = percentiles(values, points=(50, 90, 99), digits=2)
        return {k: v for k, v in found.items() if k != "mean" and v is not None}

    ack, got = pick(acked), pick(consumed)
    return {
        "name": "kafka-rtt",
        "what": f"Kafka alone, {len(acked)} messages at {rate:g}/s, ms: produced to acked p50 {ack['p50']}, "
        f"p99 {ack['p99']}; produced to consumed p50 {got['p50']}, p99 {got['p99']}",
        "kafka_round_trip_ms": ack,
        "kafka_produce_to_consume_ms": got,
    }


class Ceiling:
    """``benchmarks/ceiling.py`` (the bare Tornado relay) on ``port`` for the ceiling rows."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.secret = os.urandom(24).hex()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Cluster:
        secret = ("--secret", self.secret)
        if listening_pid(self.port) is not None:
            sys.exit(f"port {self.port} is taken: the ceiling relay needs it (choose another --port-base)")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "ceiling.py"), *("--port", str(self.port)), *secret],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while listening_pid(self.port) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"benchmarks/ceiling.py did not start on port {self.port}")
            time.sleep(0.1)
        return Cluster([url], self.secret, {"ws-relay": self.proc.pid})

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


# ------------------------------------------------------------------------------ the table


def figures(row: dict[str, Any]) -> dict[str, float | None]:
    """The key figures of one run of a row, by name: what --repeat gives the median and range of."""
    out: dict[str, float | None] = {}
    if "failed" in row:
        return out
    for role, pct in row.get("cpu_percent_of_one_core", {}).items():
        out[f"cpu:{role}"] = pct
    for key, short in (("kafka_round_trip_ms", "ack"), ("kafka_produce_to_consume_ms", "consumed")):
        if key in row:
            out[f"{short}_p50"], out[f"{short}_p99"] = row[key]["p50"], row[key]["p99"]
    report = row.get("report")
    if report is not None and report["scenario"] == "idle":
        out["held"] = report["still_connected"]
        out["conn_rate"] = report["connect"]["rate_per_s"]
        out["rss_kib_per_connection"] = row["rss_kib_per_connection"]
    if "measured" in row:
        m = row["measured"]
        out.update(
            target=m["target_rate"],
            sent=m["sent"],
            delivered=m["delivered"],
            lost=m["lost"],
            rate=m["achieved_rate"],
            p50=m["latency_ms"]["p50"],
            p99=m["latency_ms"]["p99"],
            max=m["latency_ms"]["max"],
            server_us=row["server_us_per_delivery"],
            all_us=row["all_us_per_delivery"],
            generator_us=row["generator_us_per_delivery"],
        )
        if "ramp" in row["report"]:
            out["last_good_rate"] = row["report"]["ramp"]["last_good_rate"]
        for role, pct in row.get("compiling_percent_of_one_core", {}).items():
            out[f"jit:{role}"] = pct
    seen = row.get("machine")
    if seen:
        for when in ("before", "during"):
            if seen[when]:
                out[f"others_{when}"] = seen[when]["others_pct"]
                out[f"steal_{when}"] = seen[when]["steal_pct"]
        calibration = seen["calibration"]
        out["slowdown"] = calibration["slowdown"]
        out["waited"] = round(calibration["wall_s"] / calibration["cpu_s"], 2) if calibration["cpu_s"] else None
    return out


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from ``--repeat`` runs: every run kept, each key figure's median and range."""
    if len(runs) == 1:
        return runs[0]
    keys = dict.fromkeys(k for run in runs for k in figures(run))
    spreads = {k: trust.spread([figures(run).get(k) for run in runs]) for k in keys}
    judged = [run for run in runs if "trusted" in run]
    because = [f"run {i}: {why}" for i, run in enumerate(runs, 1) for why in run.get("untrusted_because", ())]
    row: dict[str, Any] = {
        "name": runs[0]["name"],
        "what": runs[0]["what"],
        "runs": len(runs),
        "spread": {k: v for k, v in spreads.items() if v is not None},
        "trusted": bool(judged) and all(run["trusted"] for run in judged),
        "untrusted_runs": sum(1 for run in judged if not run["trusted"]),
        "untrusted_because": because,
        "repeats": runs,
    }
    if any("failed" in run for run in runs):
        row["failed_runs"] = sum(1 for run in runs if "failed" in run)
    return row


def _num(value: float | None, digits: int | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if digits is None else f"{value:.{digits}f}"


def _cell(row: dict[str, Any], key: str, digits: int | None = 1) -> str:
    """One figure: its value, or over repeated runs its median (min-max)."""
    if "repeats" not in row:
        return _num(figures(row).get(key), digits)
    spread = row["spread"].get(key)
    if spread is None:
        return "-"
    median, low, high = (_num(spread[k], digits) for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}-{high})"


def _worst(row: dict[str, Any], key: str) -> float | None:
    if "repeats" in row:
        spread = row["spread"].get(key)
        return spread["max"] if spread else None
    return figures(row).get(key)


def _machine_cells(row: dict[str, Any]) -> list[str]:
    """others % (before/during), steal % (before/during), calibration (its time against the
    reference's, and its wall time against its CPU time when that shows a wait): the worst over runs."""

    def pair(a: float | None, b: float | None) -> str:
        return "-" if a is None and b is None else f"{_num(a, 0)}/{_num(b, 0)}"

    others = pair(_worst(row, "others_before"), _worst(row, "others_during"))
    steal = pair(_worst(row, "steal_before"), _worst(row, "steal_during"))
    slow, waited = _worst(row, "slowdown"), _worst(row, "waited")
    calibration = "-" if slow is None else f"{slow:.2f}x"
    if waited is not None and waited >= 1.1:
        calibration += f" (wall {waited:.1f}x)"
    return [others, steal, calibration]


def _trust_cell(row: dict[str, Any]) -> str:
    if "trusted" not in row:
        return "-"
    if row["trusted"]:
        return "ok"
    if "repeats" in row:
        return f"NO ({row['untrusted_runs']} of {row['runs']} runs): " + "; ".join(
            _worst_reasons(r for run in row["repeats"] for r in run.get("untrusted_because", ()))
        )
    return "NO: " + "; ".join(row["untrusted_because"])


def _worst_reasons(reasons: Any) -> list[str]:
    """Of reasons from several runs, each kind once ("others N% of a core before the row"),
    the one with the highest figure, without the names of the busiest others."""
    worst: dict[str, tuple[float, str]] = {}
    for reason in reasons:
        bare = re.sub(r" \([^()]*%[^()]*\)$", "", reason)
        kind = re.sub(r"\d+(\.\d+)?", "#", bare)
        figure = float(re.findall(r"\d+(?:\.\d+)?", bare)[0]) if re.search(r"\d", bare) else 0.0
        if kind not in worst or figure > worst[kind][0]:
            worst[kind] = (figure, bare)
    return [text for _, text in worst.values()]


def _notes(row: dict[str, Any]) -> str:
    """What the row's last run says besides its figures."""
    sample = row["repeats"][-1] if "repeats" in row else row
    if "failed" in sample:
        return f"failed: {sample['failed']}"
    if "cpu_percent_of_one_core" in sample:
        roles = sample["cpu_percent_of_one_core"]
        share = ", ".join(f"{role} {_cell(row, f'cpu:{role}', None)}%" for role in roles)
        notes = f"CPU with no traffic (% of one core): {share}"
        settled = sample.get("kafka_settle")
        if settled:
            notes += (
                f"; kafka settled in {settled['waited_s']:g} s"
                if settled["settled"]
                else f"; kafka NOT settled after {settled['waited_s']:g} s ({settled['kafka_percent_of_one_core']:g}%)"
            )
        return notes
    if "warm_up" in sample:
        warm = sample["warm_up"]
        jit = ", ".join(f"{pct:g}%" for pct in warm["kafka_jit_percent_of_one_core"])
        return (
            f"{sample['what']}: {warm['rounds']} rounds in {warm['seconds']:g} s; Kafka's JIT per round "
            f"(% of a core): {jit}"
        )
    if "kafka_round_trip_ms" in sample:
        if "repeats" not in row:
            return str(sample["what"])
        return (
            f"Kafka alone, ms: produced to acked p50 {_cell(row, 'ack_p50', 2)}, p99 {_cell(row, 'ack_p99', 2)}; "
            f"produced to consumed p50 {_cell(row, 'consumed_p50', 2)}, p99 {_cell(row, 'consumed_p99', 2)}"
        )
    report = sample["report"]
    if report["scenario"] == "idle":
        c = report["connect"]
        held = _cell(row, "held", 0)
        first = row["repeats"][0] if "repeats" in row else row  # Python keeps memory: later runs grow less
        return (
            f"{held} held ({sample['connections_per_server']}/server), {_cell(row, 'conn_rate', 0)} conn/s, "
            f"RSS {_num(first['rss_kib_per_connection'], 1)} KiB/conn{' (first run)' if 'repeats' in row else ''}, "
            f"{c['failed']} failed"
        )
    notes = str(sample["what"])
    if "ramp" in report:
        ramp = report["ramp"]
        good = _cell(row, "last_good_rate", None)
        notes = f"last good rate {good}/s" if good != "-" else "no step met the bound (figures: the first)"
        notes += f"; stopped: {ramp['stopped_because']}"
        phases = sample.get("ramp_phases", [])
        if len(phases) > 1:
            notes += "; steps " + ", then ".join(
                f"x{p['factor']:g} from {p['start']:g}/s (good to {_num(p['last_good_rate'], None)})" for p in phases
            )
    elif not report["ok"]:
        notes += f"; not clean: {', '.join(report['hints'][:1]) or 'see JSON'}"
    if sample.get("wakeups_per_delivery"):
        notes += "; wake-ups/msg: " + ", ".join(f"{r} {n:g}" for r, n in sample["wakeups_per_delivery"].items())
        if sample.get("wakeup_floor_us_per_delivery") is not None:
            wakeup_us = sample["machine"]["calibration"]["wakeup_us"]
            notes += f" (at {wakeup_us:g} µs each: {sample['wakeup_floor_us_per_delivery']:g} µs/msg)"
    compiling = {role: _cell(row, f"jit:{role}", None) for role in sample.get("compiling_percent_of_one_core", {})}
    if compiling:
        notes += "; JIT (% of a core): " + ", ".join(f"{r} {pct}" for r, pct in compiling.items())
    if report.get("errors"):
        notes += "; errors: " + ", ".join(f"{code} {n}" for code, n in sorted(report["errors"].items()))
    return notes


COLUMNS = (
    "scenario",
    "target/s",
    "sent",
    "delivered",
    "lost",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "server µs/msg",
    "all µs/msg",
    "gen µs/msg",
    "others % before/during",
    "steal % before/during",
    "calibration",
    "trust",
    "notes",
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        sample = row["repeats"][-1] if "repeats" in row else row
        if "measured" in sample:
            figures_cells = [
                _cell(row, "target", None),
                _cell(row, "sent", 0),
                _cell(row, "delivered", 0),
                _cell(row, "lost", 0),
                _cell(row, "rate", 0),
                _cell(row, "p50"),
                _cell(row, "p99"),
                _cell(row, "max"),
                _cell(row, "server_us"),
                _cell(row, "all_us"),
                _cell(row, "generator_us"),
            ]
        else:
            figures_cells = [""] * 11
        cells = [row["name"], *figures_cells, *_machine_cells(row), _trust_cell(row), _notes(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = found.group(1) if found else ""
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "commit": commit.strip(),
    }


# ------------------------------------------------------------------------------ own cluster


class OwnCluster:
    """A cluster started with scripts/up.sh in a run folder of its own, stopped by down.sh."""

    def __init__(self, servers: int, port_base: int, nginx_port: int, run_dir: Path, prefix: str) -> None:
        self.servers = servers
        self.port_base = port_base
        self.run_dir = run_dir
        self.env = {
            **os.environ,
            **BENCH_ENV,
            "CHAT_RUN_DIR": str(run_dir),
            "NGINX_PORT": str(nginx_port),
            "CHAT_PORT_BASE": str(port_base),
            "CHAT_PREFIX": prefix,
        }

    def __enter__(self) -> Cluster:
        print(f"starting {self.servers} servers with scripts/up.sh (run folder {self.run_dir})...", file=sys.stderr)
        proc = subprocess.run(
            [str(ROOT / "scripts" / "up.sh"), str(self.servers)],
            env=self.env,
            stdout=subprocess.DEVNULL,  # the table alone goes to stdout
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            self._down()
            sys.exit(f"scripts/up.sh failed:\n{proc.stderr}")
        urls = [f"http://127.0.0.1:{self.port_base + n}" for n in range(1, self.servers + 1)]
        secret = (self.run_dir / "secret").read_text().strip()
        return discover(urls, secret, int(self.env["NGINX_PORT"]))

    def __exit__(self, *exc: object) -> None:
        try:
            self._forget()  # while Redis and Kafka still run: down.sh stops those it started
        except Exception as error:  # the figures matter more than the clean-up
            print(f"warning: could not delete the run's keys and topics ({error})", file=sys.stderr)
        self._down()

    def _forget(self) -> None:
        """Delete what the run left in Redis and Kafka (all under its prefix): a benchmark stores
        every message like real traffic, and a Redis that grows by hundreds of megabytes rewrites
        its append-only file in a forked process that takes CPU from the next run."""
        import redis
        from confluent_kafka.admin import AdminClient

        prefix = self.env["CHAT_PREFIX"]
        client = redis.Redis.from_url(self.env.get("REDIS_URL", REDIS_URL))
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.close()
        admin = AdminClient({"bootstrap.servers": self.env.get("KAFKA_BOOTSTRAP", KAFKA_BOOTSTRAP)})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in admin.delete_topics(topics, operation_timeout=10).values() if topics else ():
            future.result()

    def _down(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "down.sh")], env=self.env, capture_output=True, check=False)


# ------------------------------------------------------------------------------ trust and repeats

PRECHECK_S = 2.0  # the machine's usage measured before each row (after the calibration)
RAMP_START_SHARE = 0.8  # a ramp from a known good rate starts this much below it


def options(scenario: Scenario) -> argparse.Namespace:
    """The load tool's options as the scenario sets them (its defaults for the others)."""
    found: argparse.Namespace = loadoptions.parse_args(list(scenario.args))
    return found


def with_args(scenario: Scenario, **values: float) -> Scenario:
    """The scenario with loadtest options replaced: ``rate=…``, ``ramp_factor=…``."""
    flags = {f"--{k.replace('_', '-')}": f"{v:g}" for k, v in values.items()}
    kept: list[str] = []
    skip = False
    for a in scenario.args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            kept.append(a)
    for flag, value in flags.items():
        kept += [flag, value]
    return dataclasses.replace(scenario, args=tuple(kept))


def _last_good(row: dict[str, Any]) -> float | None:
    good: float | None = row.get("report", {}).get("ramp", {}).get("last_good_rate")
    return good


class Bench:
    """Runs rows on a cluster: each after the cluster has settled, with the machine checked
    before (calibration, others, steal) and during (others, steal), ``--repeat`` times."""

    def __init__(self, args: argparse.Namespace, limits: trust.Limits, reference: dict[str, Any]) -> None:
        self.args = args
        self.limits = limits
        self.reference = reference
        self.proc = trust.Proc()
        self.idle: dict[str, float] = {}
        self.known_good: dict[str, float] = {}  # a ramp's last good rate, for its next run

    # one run ---------------------------------------------------------------

    def precheck(self, cluster: Cluster) -> dict[str, Any]:
        """Before a row, with nothing of the run busy: the machine's speed, then who uses it."""
        calibration = trust.calibrate()
        calibration["slowdown"] = trust.slowdown(calibration, self.reference)
        calibration["wakeup_us"] = trust.wakeup_cost_us()
        before = trust.measure(self.proc, cluster.participants(), PRECHECK_S)
        return {"calibration": calibration, "before": before}

    def judge(
        self, row: dict[str, Any], pre: dict[str, Any], during: trust.Usage | None, extra: list[str] | None = None
    ) -> dict[str, Any]:
        if "failed" in row:
            return row
        found = [*(extra or [])]
        found += trust.reasons(
            self.limits,
            before=pre["before"],
            during=during,
            calibration=pre["calibration"],
            reference=self.reference,
            generator_us=row.get("generator_us_per_delivery"),
            compiling=row.get("compiling_percent_of_one_core"),
        )
        floor = trust.wakeup_floor_us(row.get("wakeups_per_delivery", {}), pre["calibration"].get("wakeup_us"))
        if floor is not None:
            row["wakeup_floor_us_per_delivery"] = floor
        row["machine"] = {
            "before": pre["before"].to_dict(),
            "during": during.to_dict() if during else None,
            "calibration": pre["calibration"],
        }
        row["trusted"] = not found
        row["untrusted_because"] = found
        if found:
            print(f"  {row['name']}: untrustworthy: {'; '.join(found)}", file=sys.stderr, flush=True)
        return row

    def once(self, cluster: Cluster, scenario: Scenario) -> dict[str, Any]:
        waited = settle(cluster, self.idle)
        pre = self.precheck(cluster)
        print(f"running {scenario.name}: {scenario.what}...", file=sys.stderr, flush=True)
        row, during = run_scenario(cluster, scenario)
        row["settled_s"] = waited
        return self.judge(row, pre, during)

    def idle_row(self, cluster: Cluster) -> dict[str, Any]:
        """The CPU with no traffic, once Kafka has settled (its JIT, its housekeeping)."""
        a = self.args
        if "kafka" in cluster.pids:
            print(
                f"waiting for Kafka to settle (below {a.kafka_settle_pct:g}% of a core for {a.kafka_settle_s} s, "
                f"at most {a.kafka_settle_limit:g} s)...",
                file=sys.stderr,
                flush=True,
            )
        settled = settle_broker(cluster, a.kafka_settle_pct, a.kafka_settle_s, a.kafka_settle_limit)
        pre = self.precheck(cluster)
        row, during = idle_cost(cluster)
        extra = []
        if settled is not None:
            row["kafka_settle"] = settled
            if not settled["settled"]:
                extra.append(
                    f"kafka not settled: {settled['kafka_percent_of_one_core']:g}% of a core "
                    f"after {settled['waited_s']:g} s"
                )
        return self.judge(row, pre, during, extra)

    def warm_up(self, cluster: Cluster) -> dict[str, Any] | None:
        """``warm_up`` with this bench's limit, the cluster settled before each round; not with
        --short (CI's few seconds of traffic are not worth a minute of warming; its rows say
        when Kafka compiled)."""
        if self.args.short:
            return None
        return warm_up(cluster, self.limits.compiling_pct, lambda: settle(cluster, self.idle))

    def kafka_rtt(self, cluster: Cluster, bootstrap: str, topic: str) -> dict[str, Any]:
        pre = self.precheck(cluster)
        span = trust.Span(self.proc, cluster.participants())
        row = kafka_round_trip(bootstrap, topic)
        return self.judge(row, pre, span.end())

    # ramps -----------------------------------------------------------------

    def ramp_start(self, scenario: Scenario) -> float | None:
        """Where a ramp starts: --ramp-start, else a little below this scenario's last good rate
        (its previous run, else benchmarks/reference.json for the full matrix), else the matrix's."""
        if self.args.rate:
            return None  # an explicit --rate is where every scenario starts
        given = self.args.ramp_start.get(scenario.name, self.args.ramp_start.get("*"))
        if given:
            return float(given)
        known = self.known_good.get(scenario.name)
        if known is None and not self.args.short:
            known = self.reference.get("last_good_rates", {}).get(scenario.name)
        return round(known * RAMP_START_SHARE, 3) if known else None

    def ramp(self, cluster: Cluster, scenario: Scenario) -> dict[str, Any]:
        """A coarse ramp from near the last known good rate until a step fails, then a fine one
        (the coarse factor's fourth root, x1.057 for x1.25) from that last good rate: the
        ceiling to within a few percent, in a few steps."""
        factor: float = options(scenario).ramp_factor
        start = self.ramp_start(scenario)
        phases: list[dict[str, Any]] = []

        def phase(plan: Scenario, note: str) -> dict[str, Any]:
            row = self.once(cluster, plan)
            phases.append(
                {
                    "start": options(plan).rate,
                    "factor": options(plan).ramp_factor,
                    "last_good_rate": _last_good(row),
                    "stopped_because": row.get("report", {}).get("ramp", {}).get("stopped_because", row.get("failed")),
                    "why": note,
                }
            )
            return row

        plan = scenario if start is None else with_args(scenario, rate=start)
        best = phase(plan, "coarse" if start is None else "coarse, from below the last known good rate")
        if start is not None and "failed" not in best and _last_good(best) is None:
            # Not even the known good rate is good now: once more from half of it.
            best = phase(with_args(scenario, rate=round(start / 2, 3)), "coarse, from half: the start was not good")
        good = _last_good(best)
        if good is not None and best["report"]["ramp"]["stopped_because"] != "reached the step limit":
            fine_factor = self.args.ramp_fine_factor or round(factor**0.25, 3)
            fine = phase(
                with_args(scenario, rate=round(good * fine_factor, 3), ramp_factor=fine_factor), "fine, from the edge"
            )
            if _last_good(fine) is not None:
                best = fine
        good = _last_good(best)
        if good is not None:
            self.known_good[scenario.name] = good
        best["ramp_phases"] = phases
        return best

    # rows --------------------------------------------------------------------

    def repeat(self, run: Any) -> dict[str, Any]:
        runs = []
        for i in range(self.args.repeat):
            if self.args.repeat > 1:
                print(f"  (run {i + 1} of {self.args.repeat})", file=sys.stderr, flush=True)
            runs.append(run(i))
        return combine(runs)

    def rows(self, cluster: Cluster, scenarios: list[Scenario], idle_row: bool = True) -> list[dict[str, Any]]:
        """The idle row (``idle_row=False``: only measured, as the floor ``settle`` waits for),
        then each scenario's."""
        if len(cluster.servers()) < len(cluster.urls):
            print(
                f"note: not every one of {cluster.urls} is a local process: only {len(cluster.servers())} "
                "servers' CPU is counted",
                file=sys.stderr,
            )
        rows = []
        if idle_row:
            rows.append(self.repeat(lambda _i: self.idle_row(cluster)))
            first = rows[0]["repeats"][0] if "repeats" in rows[0] else rows[0]
            self.idle = first["cpu_percent_of_one_core"]
        else:
            self.idle = idle_cost(cluster)[0]["cpu_percent_of_one_core"]
        warmed = False
        for scenario in scenarios:
            if not warmed and options(scenario).scenario != "idle":
                warmed = True
                warm = self.warm_up(cluster)
                if warm is not None:
                    rows.append(warm)
            if "--ramp" in scenario.args:
                rows.append(self.repeat(lambda _i, s=scenario: self.ramp(cluster, s)))
            else:
                rows.append(self.repeat(lambda _i, s=scenario: self.once(cluster, s)))
        return rows


# ------------------------------------------------------------------------------ the machine's facts


def facts(bench: Bench, roots: list[int]) -> dict[str, Any]:
    """The machine before anything of the run starts: cores, model, load, others, speed."""
    info = machine()
    info["loadavg"] = bench.proc.loadavg()
    calibration = trust.calibrate()
    calibration["slowdown"] = trust.slowdown(calibration, bench.reference)
    calibration["wakeup_us"] = trust.wakeup_cost_us()
    used = trust.measure(bench.proc, roots, PRECHECK_S)
    info["at_start"] = {**used.to_dict(), "calibration": calibration}
    found = trust.reasons(
        bench.limits, before=used, calibration=calibration, reference=bench.reference, when=("at the start", "")
    )
    info["quiet"] = not found
    info["not_quiet_because"] = found
    return info


def facts_lines(info: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    start = info["at_start"]
    recorded = reference.get("recorded", {})
    slowdown = start["calibration"]["slowdown"]
    speed = (
        f"calibration {slowdown:.2f}x the reference (recorded {recorded.get('date', '?')}"
        f"{'' if recorded.get('quiet') else ', on a machine that was not quiet'})"
        if slowdown is not None
        else "no reference calibration (python benchmarks/run.py --record-reference)"
    )
    if recorded and (recorded.get("python") != info["python"] or recorded.get("cpu_model") != info["cpu_model"]):
        speed += f"; the reference is from {recorded.get('cpu_model')}, Python {recorded.get('python')}"
    lines = [
        f"{info['date']} · {info['cpus']} CPUs ({info['cpu_model']}) · {info['memory_gib']} GiB · "
        f"Python {info['python']} · commit {info['commit']}",
        f"machine at the start: load average {' '.join(f'{v:g}' for v in info['loadavg'])} · others "
        f"{start['others_pct']:.0f}% of a core · steal {start['steal_pct']:.1f}% · {speed} · a wake-up "
        f"(sleep {trust.WAKEUP_SLEEP_S * 1000:g} ms) costs {start['calibration']['wakeup_us']:g} µs of CPU",
    ]
    if not info["quiet"]:
        lines.append(
            f"warning: this machine is not quiet ({'; '.join(info['not_quiet_because'])}): rows are likely "
            "to be marked untrustworthy, and figures taken now are not fit for BENCHMARKS.md"
        )
    return lines


def record_reference(path: Path, limits: trust.Limits, note: str | None) -> int:
    """Measure the calibration (9 rounds, the best) and write it, with how, when and where it
    was recorded and whether the machine was quiet meanwhile, to ``path``; unless ``path`` holds
    a faster one, which it keeps."""
    proc = trust.Proc()
    span = trust.Span(proc, [os.getpid()])
    calibration = trust.calibrate(rounds=9)
    used = span.end()
    quiet = used.others_pct <= limits.others_pct and used.steal_pct <= limits.steal_pct
    info = machine()
    reference = trust.load_reference(path)
    kept = reference.get("calibration", {}).get("cpu_s")
    if isinstance(kept, (int, float)) and kept < calibration["cpu_s"]:
        # Others, the host or a lower clock can slow a machine, nothing speeds it up: the fastest
        # calibration seen is its speed, and a slower reference would let slow rows pass as ok.
        print(
            f"kept {path}: its calibration ({kept} s CPU) is faster than this one ({calibration['cpu_s']} s), "
            "so this machine is slower than it can be right now; to start over on another kind of machine, "
            "remove the file's calibration first"
        )
        return 0
    reference["calibration"] = {**calibration, "work": trust.CALIBRATION_WORK}
    reference["recorded"] = {
        "how": "python benchmarks/run.py --record-reference",
        "date": info["date"],
        "commit": info["commit"],
        "cpus": info["cpus"],
        "cpu_model": info["cpu_model"],
        "python": info["python"],
        "loadavg": proc.loadavg(),
        "others_percent_of_one_core": round(used.others_pct, 1),
        "steal_percent": round(used.steal_pct, 1),
        "busiest_others": used.to_dict()["top_others"],
        "quiet": quiet,
    }
    default_note = (
        "recorded on a quiet machine"
        if quiet
        else f"recorded while others used {used.others_pct:.0f}% of a core: re-record on a quiet machine"
    )
    reference["note"] = note or default_note
    reference.setdefault("last_good_rates", {})
    path.write_text(json.dumps(reference, indent=2, ensure_ascii=False) + "\n")
    print(
        f"recorded {path}: calibration {calibration['cpu_s']} s CPU, {calibration['wall_s']} s wall; "
        f"others {used.others_pct:.0f}% of a core, steal {used.steal_pct:.1f}%; {reference['note']}"
    )
    return 0


def record_rates(path: Path, rows: list[dict[str, Any]]) -> None:
    """Keep the trusted ramps' last good rates in ``path``: the next run's ramps start there."""
    reference = trust.load_reference(path)
    rates = reference.setdefault("last_good_rates", {})
    for row in rows:
        good = _cell(row, "last_good_rate", None) if "repeats" in row else _last_good(row)
        if good in (None, "-") or not row.get("trusted"):
            continue
        rates[row["name"]] = float(row["spread"]["last_good_rate"]["median"]) if "repeats" in row else good
    reference["last_good_rates_recorded"] = machine()["date"]
    path.write_text(json.dumps(reference, indent=2, ensure_ascii=False) + "\n")
    print(f"recorded the trusted ramps' last good rates in {path}: {rates}", file=sys.stderr)


def _ramp_starts(values: list[str]) -> dict[str, float]:
    starts: dict[str, float] = {}
    for value in values:
        name, _, rate = value.rpartition("=")
        starts[name or "*"] = float(rate)
    return starts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See BENCHMARKS.md for the figures recorded on the reference machine.",
    )
    parser.add_argument("--short", action="store_true", help="the small matrix CI runs")
    parser.add_argument(
        "--url", action="append", default=[], help="a running chat server (repeat); default: start a cluster"
    )
    parser.add_argument("--secret", help="CHAT_SECRET of a running cluster (default: the generator logs in)")
    parser.add_argument("--servers", type=int, default=2, help="servers of the cluster started here (default 2)")
    parser.add_argument("--port-base", type=int, default=8280, help="ws-N listens on base+N (default 8280)")
    parser.add_argument("--nginx-port", type=int, help="nginx of the cluster started here (default: --port-base)")
    parser.add_argument("--ceiling-port", type=int, help="port of the ceiling rows' relay (default: --port-base + 19)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "bench", help="(default .run/bench)")
    parser.add_argument("--prefix", default=f"bench{int(time.time())}-", help="Redis key and topic prefix")
    parser.add_argument("--only", help="comma-separated scenario names to run (default all)")
    parser.add_argument("--rate", help="override the rate of the scenarios run (to explore; not the matrix)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row: median and min-max (default 1)")
    trusting = parser.add_argument_group("trust: when a row is marked untrustworthy")
    trusting.add_argument(
        "--max-others",
        type=float,
        default=5.0,
        metavar="PCT",
        help="CPU of processes outside the run, %% of one core (default 5)",
    )
    trusting.add_argument(
        "--max-steal", type=float, default=2.0, metavar="PCT", help="CPU steal, %% of all CPU time (default 2)"
    )
    trusting.add_argument(
        "--max-slowdown",
        type=float,
        default=1.3,
        metavar="X",
        help="calibration this many times slower than the reference (default 1.3)",
    )
    trusting.add_argument(
        "--max-generator-us",
        type=float,
        default=50.0,
        metavar="US",
        help="the load generator's CPU per delivered message (µs) beyond which it limits the measurement (default 50)",
    )
    trusting.add_argument(
        "--max-jit",
        type=float,
        default=5.0,
        metavar="PCT",
        help="CPU of Kafka's JIT compiler threads, %% of one core: a broker still compiling (default 5); "
        "also when the warm-up stops",
    )
    trusting.add_argument(
        "--kafka-settle-pct",
        type=float,
        default=5.0,
        metavar="PCT",
        help="the idle row waits for Kafka below this (default 5)",
    )
    trusting.add_argument(
        "--kafka-settle-s", type=int, default=3, metavar="S", help="... for this many seconds (default 3)"
    )
    trusting.add_argument(
        "--kafka-settle-limit", type=float, metavar="S", help="... at most this long (default 180, --short 30)"
    )
    trusting.add_argument(
        "--strict", action="store_true", help="exit 3 when a row is untrustworthy (default: only say so)"
    )
    trusting.add_argument(
        "--reference",
        type=Path,
        default=trust.REFERENCE,
        help="reference calibration (default benchmarks/reference.json)",
    )
    trusting.add_argument(
        "--record-reference", action="store_true", help="record this machine's calibration as the reference, and exit"
    )
    trusting.add_argument("--reference-note", help="with --record-reference: the note kept with it")
    trusting.add_argument(
        "--record-rates", action="store_true", help="keep the trusted ramps' last good rates in the reference file"
    )
    ramping = parser.add_argument_group("ramps: the highest good rate")
    ramping.add_argument(
        "--ramp-start",
        action="append",
        default=[],
        metavar="[NAME=]RATE",
        help="where a ramp starts (default: 0.8 x its last good rate in reference.json or its previous run)",
    )
    ramping.add_argument(
        "--ramp-fine-factor", type=float, help="the step near the edge (default: the fourth root of the coarse step)"
    )
    args = parser.parse_args()
    limits = trust.Limits(args.max_others, args.max_steal, args.max_slowdown, args.max_generator_us, args.max_jit)
    if args.record_reference:
        return record_reference(args.reference, limits, args.reference_note)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.kafka_settle_limit is None:
        args.kafka_settle_limit = 30.0 if args.short else 180.0
    args.ramp_start = _ramp_starts(args.ramp_start)
    scenarios = matrix(args.short)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in scenarios}
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}: choose from {[s.name for s in scenarios]}")
        scenarios = [s for s in scenarios if s.name in wanted]
    if args.rate:
        scenarios = [
            dataclasses.replace(s, args=(*s.args, "--rate", args.rate), what=f"{s.what} (rate {args.rate}/s)")
            for s in scenarios
        ]

    reference = trust.load_reference(args.reference)
    bench = Bench(args, limits, reference)
    info = facts(bench, discover(args.url, None).participants())
    header = facts_lines(info, reference)
    for line in header[1:]:
        print(line, file=sys.stderr, flush=True)

    on_cluster = [s for s in scenarios if s.target == "cluster"]
    on_ceiling = [s for s in scenarios if s.target == "ceiling"]
    rtt_topic = f"{args.prefix}rtt-probe"
    bootstrap = KAFKA_BOOTSTRAP
    rows: list[dict[str, Any]] = []

    def on(cluster: Cluster) -> list[dict[str, Any]]:
        found = bench.rows(cluster, on_cluster)
        found.append(bench.repeat(lambda i: bench.kafka_rtt(cluster, bootstrap, f"{rtt_topic}-{i}")))
        return found

    if on_cluster and args.url:
        rows = on(discover(args.url, args.secret))
    elif on_cluster:
        nginx_port = args.nginx_port or args.port_base
        with OwnCluster(args.servers, args.port_base, nginx_port, args.run_dir, args.prefix) as cluster:
            rows = on(cluster)
    if on_ceiling:  # after the cluster is stopped: the relay alone with the generator
        print("starting the bare relay (benchmarks/ceiling.py)...", file=sys.stderr)
        with Ceiling(args.ceiling_port or args.port_base + 19) as relay:
            rows += bench.rows(relay, on_ceiling, idle_row=False)
    untrusted = [row["name"] for row in rows if row.get("trusted") is False]
    print("\n".join(header))
    print(table(rows))
    if untrusted:
        print(
            f"\n{len(untrusted)} of {len(rows)} rows are untrustworthy ({', '.join(untrusted)}): see the trust column"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "limits": dataclasses.asdict(limits), "rows": rows}, indent=1)
        )
    if args.record_rates and not args.short:
        record_rates(args.reference, rows)
    if any("failed" in row or row.get("failed_runs") for row in rows):
        return 1
    return 3 if args.strict and untrusted else 0


if __name__ == "__main__":
    sys.exit(main())
