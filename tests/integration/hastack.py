"""The high-availability topology for tests: a Redis Cluster of six nodes started by the same
shell functions as ``up.sh --ha`` (scripts/lib.sh), on free ports, in a run folder of its own,
and stopped by its pid files."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: A cluster node also listens on its port + 10000 (the cluster bus).
BUS_OFFSET = 10_000


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int, bus: bool = False) -> list[int]:
    """``count`` free ports below the ephemeral range (and their bus ports, if ``bus``)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    top = low - (BUS_OFFSET if bus else 0) - 1
    found: list[int] = []
    for _ in range(1000):
        port = random.randint(15000, top)
        if port not in found and _free(port) and (not bus or _free(port + BUS_OFFSET)):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free ports below {top}")


def lib_env(run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of scripts/lib.sh for a run folder of its own, without the shared stack's
    REDIS_URL and KAFKA_BOOTSTRAP (test.sh exports them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHAT_PREFIX", "REDIS_URL", "KAFKA_BOOTSTRAP")}
    return {**env, "CHAT_RUN_DIR": str(run_dir), **extra}


def run_lib(env: dict[str, str], script: str, timeout: float = 180) -> None:
    """Run ``script`` (bash) with scripts/lib.sh sourced; fail with its output."""
    proc = subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/lib.sh"; {script}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def pid_of(run_dir: Path, name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((run_dir / "pids" / f"{name}.pid").read_text().strip())
    return None


def stop_pids(run_dir: Path, pattern: str = "*", timeout: float = 20) -> None:
    """Stop what the run folder's pid files name (TERM, then KILL past ``timeout``)."""
    pids = [p for p in (pid_of(run_dir, f.stem) for f in (run_dir / "pids").glob(f"{pattern}.pid")) if p]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass
class RedisClusterNodes:
    """Six Redis Cluster nodes (three masters, one replica each) of one run folder."""

    run_dir: Path
    ports: list[int]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def stop(self) -> None:
        stop_pids(self.run_dir, "redis-*")


def start_redis_cluster(run_dir: Path) -> RedisClusterNodes:
    ports = free_ports(6, bus=True)
    env = lib_env(run_dir, CHAT_HA="1", REDIS_CLUSTER_PORTS=" ".join(map(str, ports)))
    nodes = RedisClusterNodes(run_dir, ports)
    try:
        run_lib(env, "start_redis_cluster", timeout=90)
    except BaseException:
        nodes.stop()
        raise
    return nodes


def cluster_roles(port: int) -> dict[int, int | None]:
    """``{node port: its master's port (None for a master)}`` as the node on ``port`` sees it,
    failed nodes left out."""
    import redis

    client = redis.Redis(port=port, socket_timeout=2)
    try:
        lines = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    text = lines.decode() if isinstance(lines, bytes) else str(lines)
    by_id: dict[str, tuple[int, str, str]] = {}
    for line in text.splitlines():
        node_id, addr, flags, master = line.split()[:4]
        by_id[node_id] = (int(addr.split("@")[0].rsplit(":", 1)[1]), flags, master)
    return {
        p: (by_id[master][0] if master != "-" and master in by_id else None)
        for p, flags, master in by_id.values()
        if "fail" not in flags.split(",")
    }


def free_block(size: int) -> int:
    """A base port B such that B+1..B+size are free (CHAT_PORT_BASE: ws-N listens on B+N)."""
    for _ in range(200):
        [base] = free_ports(1)
        if all(_free(p) for p in range(base + 1, base + size + 1)):
            return base
    raise RuntimeError("no free block of ports")


def ha_env(run_dir: Path, servers: int) -> dict[str, str]:
    """The environment of ``up.sh --ha`` on free ports in ``run_dir``."""
    return lib_env(
        run_dir,
        NGINX_PORT=str(free_ports(1)[0]),
        CHAT_PORT_BASE=str(free_block(servers)),
        REDIS_CLUSTER_PORTS=" ".join(map(str, free_ports(6, bus=True))),
        KAFKA_PORTS=" ".join(map(str, free_ports(3))),
        KAFKA_CONTROLLER_PORTS=" ".join(map(str, free_ports(3))),
    )
