"""The faults of the high-availability topology (``up.sh --ha``): a Redis Cluster and three
Kafka brokers, found from the run folder's pid files (``redis-<port>.pid``, ``kafka-<n>.pid``).

- ``redis-master-kill``: ``kill -9`` of a random Redis Cluster master; once a replica has taken
  over its slots (``cluster_state:ok`` without it), ``up.sh --ha N`` starts the node again and
  it rejoins as a replica of the new master.
- ``kafka-broker-kill``: ``kill -9`` of a random broker, a few seconds without it, then
  ``up.sh --ha N`` starts it again (it catches up from the other two replicas).

``up.sh --ha`` leaves what runs alone and starts what is missing, like ``kill-server`` uses it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HA_KINDS = ("redis-master-kill", "kafka-broker-kill")
HA_EXPECTED_S = {"redis-master-kill": 20.0, "kafka-broker-kill": 25.0}  # up.sh waits for a JVM
PROMOTION_TIMEOUT_S = 30.0


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if state not in ("Z", "X") else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def redis_nodes(pids_dir: Path) -> dict[int, int]:
    """``{port: pid}`` of the Redis Cluster nodes of this run folder that run."""
    found = {}
    for path in pids_dir.glob("redis-*.pid"):
        port, pid = path.stem.removeprefix("redis-"), _pid(path)
        if port.isdigit() and pid is not None and f":{port}" in _cmdline(pid):
            found[int(port)] = pid
    return found


def brokers(pids_dir: Path, run_dir: Path) -> dict[int, int]:
    """``{n: pid}`` of the brokers kafka-n of this run folder that run."""
    found = {}
    for path in pids_dir.glob("kafka-*.pid"):
        n, pid = path.stem.removeprefix("kafka-"), _pid(path)
        if n.isdigit() and pid is not None and "kafka.Kafka" in _cmdline(pid) and str(run_dir) in _cmdline(pid):
            found[int(n)] = pid
    return found


def _cli(port: int, *args: str) -> str:
    proc = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5, check=False)
    return proc.stdout


def masters(port: int) -> dict[int, bool]:
    """``{port: failed}`` of the masters that the node on ``port`` knows of."""
    found = {}
    for line in _cli(port, "cluster", "nodes").splitlines():
        fields = line.split()
        if len(fields) >= 3 and "master" in fields[2].split(","):
            flags = fields[2].split(",")
            found[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = "fail" in flags or "fail?" in flags
    return found


def refusals(pids_dir: Path, run_dir: Path, kinds: list[str]) -> list[str]:
    why = []
    if "redis-master-kill" in kinds and len(redis_nodes(pids_dir)) < 6:
        why.append(f"redis-master-kill: no six-node Redis Cluster of this run folder ({pids_dir}/redis-*.pid)")
    if "kafka-broker-kill" in kinds and len(brokers(pids_dir, run_dir)) < 3:
        why.append(f"kafka-broker-kill: no three brokers of this run folder ({pids_dir}/kafka-*.pid)")
    return why


async def kill_redis_master(pids_dir: Path, rng: random.Random, up: Callable[[], Awaitable[None]]) -> str:
    nodes = redis_nodes(pids_dir)
    some = next(iter(nodes))
    live = [p for p, failed in (await asyncio.to_thread(masters, some)).items() if not failed and p in nodes]
    victim = rng.choice(sorted(live))
    os.kill(nodes[victim], signal.SIGKILL)
    killed = time.monotonic()
    others = [p for p in nodes if p != victim]
    deadline = killed + PROMOTION_TIMEOUT_S
    while True:  # a replica took over: the cluster is whole again without the dead master
        known = await asyncio.to_thread(masters, others[0])
        info = await asyncio.to_thread(_cli, others[0], "cluster", "info")
        if "cluster_state:ok" in info and known.get(victim, True) and sum(not f for f in known.values()) >= 3:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no replica took over from redis-{victim} within {PROMOTION_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.1)
    promoted = time.monotonic() - killed
    await up()
    return f"redis-{victim} (pid {nodes[victim]}) killed, replica promoted in {promoted:.1f}s, up.sh --ha restarted it"


async def kill_broker(pids_dir: Path, run_dir: Path, rng: random.Random, up: Callable[[], Awaitable[None]]) -> str:
    running = brokers(pids_dir, run_dir)
    n = rng.choice(sorted(running))
    os.kill(running[n], signal.SIGKILL)
    away = rng.uniform(2.0, 5.0)
    await asyncio.sleep(away)
    await up()
    return f"kafka-{n} (pid {running[n]}) killed, {away:.1f}s without it, up.sh --ha started it again"
