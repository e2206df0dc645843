#!/usr/bin/env python3
"""Capacity: what each part of the high-availability topology spends per message, measured, and
what those costs project for 4, 16 and 64 machines (docs/CAPACITY.md says how to read it).

    python benchmarks/capacity.py                        # its own `up.sh --ha 3`, then stops it
    python benchmarks/capacity.py --run-dir .run         # a running `up.sh --ha` cluster
    python benchmarks/capacity.py --rates 200,400 --duration 3 --no-doc   # a quick look

(a) Measured: private messages at a few rates (``--rates``), each one run of the load tool
through nginx (``benchmarks/run.py``'s ``run_scenario``: CPU of every process read from /proc
over the measured window). For each part (every chat server, Redis node, Kafka broker, nginx)
the CPU it used per second is fitted against the rate: the slope is its cost per message, the
intercept what it burns idle. An idle row gives the servers' memory per connection.

(b) Projected (``project``): machines of ``--cores`` cores and ``--mem-gib`` GiB, every core
kept below ``--util``; the parts scale out (servers, Redis shards, brokers) and a message costs
the same however many there are. Written into docs/CAPACITY.md between its markers, with a
plot (docs/capacity.png, matplotlib), unless ``--no-doc``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import run  # benchmarks/run.py: scenarios, the /proc sampler, the benchmark cluster's settings
import trust  # benchmarks/trust.py: the limits a row is judged by

ROOT = run.ROOT
DOC = ROOT / "docs" / "CAPACITY.md"
PLOT = ROOT / "docs" / "capacity.png"
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"
PARTS = ("chat servers", "redis masters", "redis replicas", "kafka brokers", "nginx")
MACHINES = (4, 16, 64)


# ------------------------------------------------------------------------------ the cluster


def pid_of(run_dir: Path, name: str) -> int | None:
    try:
        pid = int((run_dir / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def attach(run_dir: Path) -> run.Cluster:
    """The cluster of a run folder: nginx in front (the load goes through it), every process
    billed by its pid file's name (ws-N, redis-<port>, kafka-N, nginx)."""
    pids = {p.stem: pid for p in sorted((run_dir / "pids").glob("*.pid")) if (pid := pid_of(run_dir, p.stem))}
    if not any(name.startswith("redis-") for name in pids) or "nginx" not in pids:
        sys.exit(f"{run_dir} holds no running `up.sh --ha` cluster (pids/redis-*.pid, pids/nginx.pid)")
    for worker in run.PROC.children(pids["nginx"]):  # the workers carry the frames, not the master
        pids[f"nginx-{worker}"] = worker
    conf = (run_dir / "nginx" / "nginx.conf").read_text()
    port = next(line.split(":")[-1].strip(" ;") for line in conf.splitlines() if "listen 127.0.0.1:" in line)
    return run.Cluster([f"http://127.0.0.1:{port}"], (run_dir / "secret").read_text().strip(), pids)


def part(role: str, masters: set[int]) -> str | None:
    if role.startswith("ws-"):
        return "chat servers"
    if role.startswith("redis-"):
        return "redis masters" if int(role.split("-")[1]) in masters else "redis replicas"
    if role.startswith("kafka-"):
        return "kafka brokers"
    return "nginx" if role.startswith("nginx") else None  # the generator is not part of the cluster


def redis_masters(cluster: run.Cluster) -> set[int]:
    ports = [int(role.split("-")[1]) for role in cluster.pids if role.startswith("redis-")]
    found = set()
    for port in ports:
        out = subprocess.run(["redis-cli", "-p", str(port), "role"], capture_output=True, text=True, check=False)
        if out.stdout.startswith("master"):
            found.add(port)
    return found


class OwnHACluster:
    """``up.sh --ha N`` with the benchmark's settings (no rate limits) in a run folder of its
    own; ports from the environment as for up.sh (defaults: the issue's 7000-7005, 9092-9094)."""

    def __init__(self, servers: int, run_dir: Path) -> None:
        self.servers, self.run_dir = servers, run_dir
        self.env = {**os.environ, **run.BENCH_ENV, "CHAT_RUN_DIR": str(run_dir)}

    def __enter__(self) -> run.Cluster:
        print(f"starting up.sh --ha {self.servers} (run folder {self.run_dir})...", file=sys.stderr)
        up = subprocess.run(
            [str(ROOT / "scripts" / "up.sh"), "--ha", str(self.servers)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        if up.returncode != 0:
            self.__exit__()
            sys.exit(f"scripts/up.sh --ha failed:\n{up.stderr[-3000:]}")
        return attach(self.run_dir)

    def __exit__(self, *exc: object) -> None:
        subprocess.run([str(ROOT / "scripts" / "down.sh")], env=self.env, capture_output=True, check=False)


# ------------------------------------------------------------------------------ (a) measured


def measure(cluster: run.Cluster, rates: list[int], users: int, duration: float) -> dict[str, Any]:
    masters = redis_masters(cluster)
    # Idle first: Python keeps memory it once used, so the servers' growth per connection is only
    # true before they have held that many (as benchmarks/run.py's matrix).
    idle_args = ("--scenario", "idle", "--users", str(10 * users), "--duration", "2")
    idle_row, _ = run.run_scenario(cluster, run.Scenario("idle", "idle connections", idle_args, 120))
    # Brokers that have just started compile their hot paths in their first minute of traffic.
    warm = run.warm_up(cluster, trust.Limits().compiling_pct)
    if warm is not None and "warm_up" in warm:
        jit = ", ".join(f"{pct:g}%" for pct in warm["warm_up"]["kafka_jit_percent_of_one_core"])
        state = "settled" if warm["trusted"] else "NOT settled: the Kafka figures below include its JIT"
        print(f"  warm-up: the busiest broker's JIT per round {jit} of a core; {state}", file=sys.stderr)
    rows = []
    for rate in rates:
        args = ("--users", str(users), "--rate", str(rate), "--duration", f"{duration:g}", "--warmup", "2")
        scenario = run.Scenario(f"private-{rate}", f"private {users} users, {rate}/s", args, 60 + 10 * duration)
        row, _ = run.run_scenario(cluster, scenario)
        if "failed" in row:
            print(f"  {scenario.name}: {row['failed']}", file=sys.stderr)
            continue
        window = row["measured"]["window_unix"]
        seconds = window[1] - window[0]
        acked = row["measured"]["acked"]
        cores: dict[str, float] = {}
        for role, cpu in row["cpu_seconds_in_window"].items():
            name = part(role, masters)
            if name is not None:
                cores[name] = cores.get(name, 0.0) + cpu / seconds
        rows.append({"target_rate": rate, "rate": round(acked / seconds, 1), "cores": cores})
        per_msg = ", ".join(f"{k} {1e6 * v / max(acked / seconds, 1e-9):.0f}" for k, v in sorted(cores.items()))
        print(f"  {scenario.name}: {acked / seconds:.0f} msg/s acked; µs/msg: {per_msg}", file=sys.stderr)
    counts = {name: sum(1 for r in cluster.pids if part(r, masters) == name) for name in PARTS}
    return {
        "rows": rows,
        "rss_kib_per_connection": idle_row.get("rss_kib_per_connection"),
        "instances": counts,
        "warm_up": warm,
    }


def fit(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per part: ``us_per_msg`` (the slope of cores against rate, least squares) and
    ``idle_cores`` (the intercept). Where the line is not usable (one rate, or rates too low or
    too noisy for a positive slope and intercept) the part's cost at the highest rate, idle
    share included, and ``fitted`` false."""
    costs: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        points = [(r["rate"], r["cores"].get(name, 0.0)) for r in rows if r["rate"] > 0]
        if not points:
            continue
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
        # Judged as reported, to a thousandth of a core: -1e-18 is nothing idle (+ 0.0 turns -0.0 into 0.0).
        idle = round(mean_y - slope * mean_x, 3) + 0.0
        if slope > 0 and idle >= 0:
            costs[name] = {"us_per_msg": round(1e6 * slope, 1), "idle_cores": idle, "fitted": True}
        else:
            top_rate, top_cores = max(points)
            costs[name] = {"us_per_msg": round(1e6 * top_cores / top_rate, 1), "idle_cores": 0.0, "fitted": False}
    return costs


# ------------------------------------------------------------------------------ (b) projected


def project(
    costs: dict[str, dict[str, Any]], cores: int, mem_gib: float, util: float, rss_kib: float | None
) -> list[dict[str, Any]]:
    """Messages/s and connections for each of ``MACHINES`` (see the module docstring and
    docs/CAPACITY.md for the assumptions)."""
    per_msg_s = {name: c["us_per_msg"] / 1e6 for name, c in costs.items()}
    total = sum(per_msg_s.values())
    out = []
    for machines in MACHINES:
        rate = util * machines * cores / total if total else 0.0
        need = {name: rate * s / util for name, s in per_msg_s.items()}  # cores each part needs
        connections = machines * mem_gib * 2**20 * 0.5 / rss_kib if rss_kib else None  # half the memory
        out.append({
            "machines": machines,
            "messages_per_s": round(rate),
            "connections": round(connections) if connections else None,
            "chat_servers": math.ceil(need.get("chat servers", 0.0)),  # one core each (one Python loop)
            "redis_shards": math.ceil(need.get("redis masters", 0.0)),  # one core each, one replica each
            "kafka_brokers": max(3, math.ceil(need.get("kafka brokers", 0.0) / cores)),  # a machine each
            "cores_by_part": {name: round(c, 1) for name, c in need.items()},
        })  # fmt: skip
    return out


def first_to_saturate(costs: dict[str, dict[str, Any]], instances: dict[str, int], util: float) -> dict[str, float]:
    """With the measured topology's Redis and Kafka fixed and chat servers added without end: the
    rate at which each part's busiest core reaches ``util`` (Redis: one core per node; Kafka: a
    broker's threads on one core, as measured here)."""
    limits = {}
    for name in ("redis masters", "redis replicas", "kafka brokers", "nginx"):
        count = max(instances.get(name, 1), 1)
        per_instance = costs.get(name, {}).get("us_per_msg", 0.0) / 1e6 / count
        if per_instance > 0:
            limits[name] = round(util / per_instance)
    return limits


def plot(projection: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (requirements.txt): no plot", file=sys.stderr)
        return False
    machines = [p["machines"] for p in projection]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(machines, [p["messages_per_s"] for p in projection], marker="o", label="private messages/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(machines, [str(m) for m in machines])
    ax.set_xlabel("machines")
    ax.set_ylabel("private messages per second")
    ax.grid(True, which="both", alpha=0.3)
    conns = [p["connections"] for p in projection]
    if all(conns):
        right = ax.twinx()
        right.plot(machines, conns, marker="s", color="tab:orange", label="connections")
        right.set_yscale("log")
        right.set_ylabel("connections (memory-bound)")
    ax.set_title("Projected capacity from measured CPU per message")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ docs


def section(result: dict[str, Any]) -> str:
    lines = [BEGIN, "", f"Measured on {result['machine']} ({result['when']}), `{' '.join(result['command'])}`.", ""]
    lines += ["| rate (acked/s) | " + " | ".join(f"{p} µs/msg" for p in PARTS) + " |"]
    lines += ["|---" * (len(PARTS) + 1) + "|"]
    for row in result["measured"]["rows"]:
        rate = max(row["rate"], 1e-9)
        cells = " | ".join(f"{1e6 * row['cores'].get(p, 0.0) / rate:.0f}" for p in PARTS)
        lines.append(f"| {row['rate']:.0f} | {cells} |")
    costs = result["costs"]
    lines += ["", "Fitted cost per message (slope) and idle share (intercept, cores):", ""]
    for name, c in costs.items():
        how = (
            f"{c['idle_cores']} cores idle"
            if c["fitted"]
            else "not fitted: the cost at the highest rate, idle included"
        )
        lines.append(f"- {name}: {c['us_per_msg']} µs/msg ({how})")
    lines += ["", f"Memory per connection (idle row): {result['measured']['rss_kib_per_connection']} KiB.", ""]
    lines += ["With this topology's Redis and Kafka fixed, the rate at which each part's busiest core saturates:", ""]
    lines += [f"- {name}: {rate:,} msg/s" for name, rate in sorted(result["saturation"].items(), key=lambda kv: kv[1])]
    a = result["assumptions"]
    machine = f"{a['cores']} cores and {a['mem_gib']} GiB per machine, cores at most {a['util']:.0%} busy"
    lines += ["", f"Projection ({machine}):", ""]
    lines += ["| machines | messages/s | connections | chat servers | Redis shards | Kafka brokers |"]
    lines += ["|---|---|---|---|---|---|"]
    for p in result["projection"]:
        conns = f"{p['connections']:,}" if p["connections"] else "-"
        counts = f"{p['chat_servers']} | {p['redis_shards']} | {p['kafka_brokers']}"
        lines.append(f"| {p['machines']} | {p['messages_per_s']:,} | {conns} | {counts} |")
    if result.get("plot"):
        lines += ["", "![projected capacity](capacity.png)"]
    return "\n".join([*lines, "", END])


def write_doc(result: dict[str, Any]) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{DOC} has no {BEGIN} ... {END} markers to fill")
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + section(result) + rest.split(END, 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="a running up.sh --ha cluster (default: start one)")
    parser.add_argument("--servers", type=int, default=3, help="chat servers of its own cluster (default 3)")
    parser.add_argument("--rates", default="500,1000,2000", help="private rates, comma list (default 500,1000,2000)")
    parser.add_argument("--users", type=int, default=200, help="users of the load (default 200: 100 pairs)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per rate (default 10)")
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="cores per machine (default: this one's)"
    )
    memory = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30)
    parser.add_argument("--mem-gib", type=float, default=memory, help="GiB per machine (default: this one's)")
    parser.add_argument("--util", type=float, default=0.7, help="the busiest a core may be (default 0.7)")
    parser.add_argument("--json", type=Path, help="keep every figure in this file")
    parser.add_argument("--no-doc", action="store_true", help="print only: leave docs/CAPACITY.md and the plot alone")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    with contextlib.ExitStack() as stack:
        if args.run_dir:
            cluster = attach(args.run_dir)
        else:
            cluster = stack.enter_context(OwnHACluster(args.servers, ROOT / ".run" / "capacity"))
        measured = measure(cluster, rates, args.users, args.duration)
    costs = fit(measured["rows"])
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": ["python", "benchmarks/capacity.py", *sys.argv[1:]],
        "measured": measured,
        "costs": costs,
        "saturation": first_to_saturate(costs, measured["instances"], args.util),
        "assumptions": {"cores": args.cores, "mem_gib": args.mem_gib, "util": args.util},
        "projection": project(costs, args.cores, args.mem_gib, args.util, measured["rss_kib_per_connection"]),
    }
    if not args.no_doc:
        result["plot"] = plot(result["projection"], PLOT)
        write_doc(result)
    print(section(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
