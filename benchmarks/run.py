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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOADTEST = ROOT / "scripts" / "loadtest.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

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
        # Not a result: a Kafka that has just started compiles its hot paths for a minute or two
        # (the JIT took a quarter of a core), and the rows after this one should not pay for it.
        Scenario(
            "warm-up",
            "private 1,000/s for 30 s to bring Kafka's JIT to steady state (not a result)",
            (*pairs, "--rate", "1000", "--duration", "30"),
            120,
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
        # limits), with nothing else running: the most any Tornado server can carry here.
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_kib(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


@dataclasses.dataclass
class Cluster:
    urls: list[str]  # chat servers, each pinned directly
    secret: str | None
    pids: dict[str, int]  # role ("ws-1", "redis", "kafka", "nginx") -> pid

    def servers(self) -> list[int]:
        return [pid for role, pid in self.pids.items() if role.startswith("ws-")]

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(pid) for role, pid in self.pids.items()}


def discover(urls: list[str], secret: str | None) -> Cluster:
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
    return Cluster(urls, secret, pids)


# ------------------------------------------------------------------------------ running


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the load generator and its worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


class Sampler(threading.Thread):
    """Every 0.2 s while a scenario runs: the CPU seconds of each role so far (wall-clock
    stamped) and the servers' total RSS (its peak is kept)."""

    def __init__(self, cluster: Cluster, generator: int) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.generator = generator
        self.generator_cpu: dict[int, float] = {}  # last reading of each generator process
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.peak_rss = 0
        self.done = threading.Event()

    def sample(self) -> None:
        for pid in process_tree(self.generator):
            self.generator_cpu[pid] = max(self.generator_cpu.get(pid, 0.0), cpu_seconds(pid))
        cpu = self.cluster.cpu()
        cpu["generator"] = sum(self.generator_cpu.values())
        self.samples.append((time.time(), cpu))
        self.peak_rss = max(self.peak_rss, sum(rss_kib(pid) for pid in self.cluster.servers()))

    def run(self) -> None:
        self.sample()
        while not self.done.wait(0.2):
            self.sample()
        self.sample()

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each role from ``start`` to ``end`` (unix times), interpolated."""

        def at(when: float) -> dict[str, float]:
            before = [s for s in self.samples if s[0] <= when] or self.samples[:1]
            after = [s for s in self.samples if s[0] >= when] or self.samples[-1:]
            (t0, c0), (t1, c1) = before[-1], after[0]
            share = 0.0 if t1 == t0 else (when - t0) / (t1 - t0)
            return {role: c0.get(role, 0.0) + share * (c1.get(role, 0.0) - c0.get(role, 0.0)) for role in c1}

        first, last = at(start), at(end)
        return {role: round(last[role] - first.get(role, 0.0), 3) for role in last}


def idle_cost(cluster: Cluster, seconds: float = 3.0) -> dict[str, Any]:
    """What the cluster burns with no traffic (the consumer's poll callback, heartbeats): the
    floor under every per-message figure at low rates."""
    before = cluster.cpu()
    time.sleep(seconds)
    after = cluster.cpu()
    share = {role: round(100 * (after[role] - before.get(role, 0.0)) / seconds, 1) for role in after}
    return {"name": "idle-cpu", "what": f"no traffic for {seconds:g} s", "cpu_percent_of_one_core": share}


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


def run_scenario(cluster: Cluster, scenario: Scenario) -> dict[str, Any]:
    """One loadtest run with the cluster's CPU and memory read around it."""
    command = [sys.executable, str(LOADTEST), "--json", "--quiet", *scenario.args]
    for url in cluster.urls:
        command += ["--url", url]
    if cluster.secret:
        command += ["--secret", cluster.secret]
    rss_before = sum(rss_kib(pid) for pid in cluster.servers())
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(cluster, proc.pid)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=scenario.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"name": scenario.name, "what": scenario.what, "failed": f"no result within {scenario.timeout_s:g} s"}
    finally:
        sampler.done.set()
        sampler.join()
    try:
        report: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"name": scenario.name, "what": scenario.what, "failed": f"exit {proc.returncode}: {' | '.join(tail)}"}
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
        return row
    measured = report
    if "ramp" in report and report["ramp"]["last_good_step"] is not None:
        measured = report["ramp"]["last_good_step"]  # the figures at the last good rate
    row["measured"] = {
        k: measured[k]
        for k in ("target_rate", "sent", "acked", "delivered", "lost", "latency_ms", "achieved_rate", "window_unix")
    }
    # Cost per message over the measured window only: connecting users (and the presence
    # every connection announces to everyone) is not message traffic.
    cpu = sampler.cpu_between(*measured["window_unix"])
    row["cpu_seconds_in_window"] = cpu
    delivered = measured["delivered"]
    servers_cpu = sum(v for k, v in cpu.items() if k.startswith("ws-"))
    row["server_us_per_delivery"] = round(1e6 * servers_cpu / delivered, 1) if delivered else None
    row["all_us_per_delivery"] = round(1e6 * sum(cpu.values()) / delivered, 1) if delivered else None
    return row


def kafka_round_trip(bootstrap: str, topic: str, count: int = 300, rate: float = 100.0) -> dict[str, Any]:
    """The broker's share of every message's latency, at ``rate``/s with the servers' settings:
    produce (acks=all, idempotence, linger 1 ms) until the delivery report (what an ack waits
    for), and until a consumer (fetch.min.bytes 1) has the message (what a delivery waits for),
    both polled without pause. The topic is deleted afterwards."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

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
        values.sort()
        at = {f"p{q}": round(values[min(len(values) - 1, int(q / 100 * len(values)))], 2) for q in (50, 90, 99)}
        return {**at, "max": round(values[-1], 2)}

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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | target/s | sent | delivered | lost | deliveries/s | p50 ms | p99 ms | max ms "
        "| server µs/msg | all µs/msg | notes |"
    )
    lines = [head, "|" + "---|" * 12]
    for row in rows:
        if "cpu_percent_of_one_core" in row:
            share = ", ".join(f"{role} {pct:g}%" for role, pct in row["cpu_percent_of_one_core"].items())
            lines.append(f"| {row['name']} | | | | | | | | | | | CPU with no traffic (% of one core): {share} |")
            continue
        if "kafka_round_trip_ms" in row:
            lines.append(f"| {row['name']} | | | | | | | | | | | {row['what']} |")
            continue
        if "failed" in row:
            lines.append(f"| {row['name']} | | | | | | | | | | | failed: {row['failed']} |")
            continue
        report = row["report"]
        if report["scenario"] == "idle":
            c = report["connect"]
            notes = (
                f"{report['still_connected']} held ({row['connections_per_server']}/server), "
                f"{c['rate_per_s']:.0f} conn/s, RSS {row['rss_kib_per_connection']} KiB/conn, "
                f"{c['failed']} failed"
            )
            lines.append(f"| {row['name']} | | | | | | | | | | | {notes} |")
            continue
        m = row["measured"]
        lat = m["latency_ms"]
        notes = row["what"]
        if "ramp" in report:
            ramp = report["ramp"]
            good = ramp["last_good_rate"]
            notes = f"last good rate {good:g}/s" if good is not None else "no step met the bound (figures: the first)"
            notes += f"; stopped: {ramp['stopped_because']}"
        elif not report["ok"]:
            notes += f"; not clean: {', '.join(report['hints'][:1]) or 'see JSON'}"
        if report.get("errors"):
            notes += "; errors: " + ", ".join(f"{code} {n}" for code, n in sorted(report["errors"].items()))
        lines.append(
            f"| {row['name']} | {m['target_rate']:g} | {m['sent']} | {m['delivered']} | {m['lost']} "
            f"| {m['achieved_rate']:.0f} | {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} "
            f"| {row.get('server_us_per_delivery', '-')} | {row.get('all_us_per_delivery', '-')} | {notes} |"
        )
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
        return discover(urls, secret)

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
        from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

        prefix = self.env["CHAT_PREFIX"]
        client = redis.Redis.from_url(self.env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.close()
        admin = AdminClient({"bootstrap.servers": self.env.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in admin.delete_topics(topics, operation_timeout=10).values() if topics else ():
            future.result()

    def _down(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "down.sh")], env=self.env, capture_output=True, check=False)


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
    args = parser.parse_args()
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

    def bench(cluster: Cluster, scenarios: list[Scenario]) -> list[dict[str, Any]]:
        if len(cluster.servers()) < len(cluster.urls):
            print(
                f"note: not every one of {cluster.urls} is a local process: only {len(cluster.servers())} "
                "servers' CPU is counted",
                file=sys.stderr,
            )
        rows = [idle_cost(cluster)]
        idle = rows[0]["cpu_percent_of_one_core"]
        for scenario in scenarios:
            waited = settle(cluster, idle)
            print(f"running {scenario.name}: {scenario.what}...", file=sys.stderr, flush=True)
            rows.append({**run_scenario(cluster, scenario), "settled_s": waited})
        return rows

    on_cluster = [s for s in scenarios if s.target == "cluster"]
    on_ceiling = [s for s in scenarios if s.target == "ceiling"]
    rtt_topic = f"{args.prefix}rtt-probe"
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    rows: list[dict[str, Any]] = []
    if on_cluster and args.url:
        rows = bench(discover(args.url, args.secret), on_cluster)
        rows.append(kafka_round_trip(bootstrap, rtt_topic))
    elif on_cluster:
        nginx_port = args.nginx_port or args.port_base
        with OwnCluster(args.servers, args.port_base, nginx_port, args.run_dir, args.prefix) as cluster:
            rows = bench(cluster, on_cluster)
            rows.append(kafka_round_trip(bootstrap, rtt_topic))
    if on_ceiling:  # after the cluster is stopped: the relay alone with the generator
        print("starting the bare relay (benchmarks/ceiling.py)...", file=sys.stderr)
        with Ceiling(args.ceiling_port or args.port_base + 19) as relay:
            rows += [row for row in bench(relay, on_ceiling) if row["name"] != "idle-cpu"]
    info = machine()
    print(
        f"{info['date']} · {info['cpus']} CPUs ({info['cpu_model']}) · {info['memory_gib']} GiB · "
        f"Python {info['python']} · commit {info['commit']}"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0 if all("failed" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
