"""The cluster under test, found from its run folder, and the faults done to it.

Everything is found from ``$CHAT_RUN_DIR/pids/*.pid`` (what ``up.sh`` started) and from the
processes themselves: a chat server's port and settings from ``/proc/<pid>/environ``, nginx's port
from its generated config, Kafka's from its ``server.properties``. A fault only ever signals a pid
read from those files, and only after checking that the pid is still that program: never a
process found by name. Redis and Kafka that ``up.sh`` found already running (a shared instance)
have no pid file here, so the faults that need them refuse to run.

Faults, one at a time:

- ``kill-server``: ``kill -9`` of a random chat server, then ``up.sh N`` (N: the servers running
  before) starts it again; ``up.sh`` leaves running servers alone, starts the missing one, waits for
  its ``/readyz``, and rewrites nginx's upstream.
- ``kafka-stop``: SIGSTOP of the broker for a few seconds, then SIGCONT.
- ``redis-restart``: SIGTERM (Redis writes its append-only file and exits), then the same
  ``redis-server`` command line as ``lib.sh``'s ``start_redis`` (same port, ``--dir``, append-only
  settings, read back from the running Redis with ``CONFIG GET``), and its pid file rewritten.
- ``scale``: ``scale.sh N+1``, a few seconds, ``scale.sh N``.
- ``redis-crash`` (only when asked for; not part of the default): like ``redis-restart`` but with
  SIGKILL. Held to the same rules: what Redis appended before it answered is in the kernel's page
  cache and survives the process (``appendfsync everysec`` only risks the last second on a crash
  of the machine, which this fault does not simulate; docs/RELIABILITY.md).
- ``redis-master-kill``, ``kafka-broker-kill`` (only when asked for, on ``up.sh --ha``): see
  ``hafaults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chaoslib import hafaults

KINDS = ("kill-server", "kafka-stop", "redis-restart", "scale")  # the default: all of these
EXTRA_KINDS = ("redis-crash", *hafaults.HA_KINDS)  # only when asked for by name
EXPECTED_S = {"kill-server": 10.0, "kafka-stop": 6.0, "redis-restart": 4.0, "scale": 12.0, "redis-crash": 4.0}
EXPECTED_S.update(hafaults.HA_EXPECTED_S)
SCRIPT_TIMEOUT_S = 150.0
#: Settings the servers were started with that a restarted or added server must get too.
_INHERITED = re.compile(r"^(CHAT_|KAFKA_|REDIS_|PYTHON$)")
_PER_SERVER = {"SERVER_ID", "PORT", "CHAT_SECRET", "CHAT_DEV", "PYTHONUNBUFFERED"}


class ClusterError(Exception):
    """The run folder does not describe a cluster this tool can use: the message says why."""


def pid_running(pid: int) -> bool:
    """Alive and not a zombie (like lib.sh's pid_running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


class Cluster:
    def __init__(self, run_dir: Path, scripts: Path | None = None) -> None:
        self.run_dir = run_dir.resolve()
        self.pids_dir = self.run_dir / "pids"
        if not self.pids_dir.is_dir():
            raise ClusterError(f"{self.pids_dir} does not exist: start the cluster with CHAT_RUN_DIR={run_dir} up.sh")
        servers = self.servers()
        if not servers:
            raise ClusterError(f"no chat server runs from {self.pids_dir}: start one with ./scripts/up.sh")
        n, pid = next(iter(servers.items()))
        self.server_env = _environ(pid)
        self.port_base = int(self.server_env["PORT"]) - n
        redis_url = self.server_env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.redis_port = 6379 if "," in redis_url else urlsplit(redis_url).port or 6379  # a cluster: many
        self.kafka_bootstrap = self.server_env.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
        self.kafka_port = int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
        props = self.run_dir / "kafka" / "server.properties"
        found = re.search(r"CONTROLLER://[^:,]+:(\d+)", props.read_text()) if props.exists() else None
        self.kafka_controller_port = int(found.group(1)) if found else self.kafka_port + 1
        conf = self.run_dir / "nginx" / "nginx.conf"
        found = re.search(r"listen\s+127\.0\.0\.1:(\d+);", conf.read_text()) if conf.exists() else None
        self.nginx_port = int(found.group(1)) if found else None
        root = Path(os.readlink(f"/proc/{pid}/cwd"))
        default = Path(__file__).resolve().parents[1]
        self.scripts = scripts or (root / "scripts" if (root / "scripts" / "up.sh").exists() else default)
        self.root = self.scripts.parent

    # ------------------------------------------------------------------ what runs

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.pids_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_running(pid) else None

    def servers(self) -> dict[int, int]:
        """``{N: pid}`` of the chat servers ws-N that run, by number."""
        out = {}
        for path in sorted(self.pids_dir.glob("ws-*.pid")):
            number = path.stem.removeprefix("ws-")
            pid = self.pid(path.stem)
            if number.isdigit() and pid is not None and "chatserver" in _cmdline(pid):
                out[int(number)] = pid
        return dict(sorted(out.items()))

    def server_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port_base + n}" for n in self.servers()]

    @property
    def nginx_url(self) -> str | None:
        return f"http://127.0.0.1:{self.nginx_port}" if self.nginx_port and self.pid("nginx") else None

    def kafka_pid(self) -> int | None:
        pid = self.pid("kafka")
        return (
            pid if pid is not None and "kafka.Kafka" in _cmdline(pid) and str(self.run_dir) in _cmdline(pid) else None
        )

    def redis_pid(self) -> int | None:
        pid = self.pid("redis")
        return pid if pid is not None and f":{self.redis_port}" in _cmdline(pid) else None

    def refusals(self, kinds: list[str]) -> list[str]:
        """Why some of ``kinds`` cannot run on this cluster (empty: all can)."""
        why = []
        if "kafka-stop" in kinds and self.kafka_pid() is None:
            why.append(
                f"kafka-stop: no Kafka of this run folder ({self.pids_dir}/kafka.pid): a shared broker is never stopped"
            )
        if ("redis-restart" in kinds or "redis-crash" in kinds) and self.redis_pid() is None:
            why.append(
                f"redis-restart: {self.pids_dir}/redis.pid names no running Redis (a shared one is never touched)"
            )
        if ("scale" in kinds or "kill-server" in kinds) and self.pid("nginx") is None:
            why.append("scale, kill-server: nginx of this run folder is not running (scale.sh needs it)")
        if not (self.scripts / "up.sh").exists():
            why.append(f"no scripts at {self.scripts}")
        return why + hafaults.refusals(self.pids_dir, self.run_dir, kinds)

    def script_env(self) -> dict[str, str]:
        """The environment for up.sh and scale.sh: the servers' own settings, and every port and
        folder of this cluster named explicitly (never the defaults, which are another cluster's)."""
        env = {k: v for k, v in os.environ.items() if not _INHERITED.match(k)}
        env.update({k: v for k, v in self.server_env.items() if _INHERITED.match(k) and k not in _PER_SERVER})
        env.update(
            CHAT_RUN_DIR=str(self.run_dir),
            CHAT_PORT_BASE=str(self.port_base),
            REDIS_PORT=str(self.redis_port),
            KAFKA_PORT=str(self.kafka_port),
            KAFKA_CONTROLLER_PORT=str(self.kafka_controller_port),
        )
        if self.nginx_port:
            env["NGINX_PORT"] = str(self.nginx_port)
        return env


@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0
    detail: str = ""
    ok: bool = True


@dataclass
class Faults:
    """Runs the fault schedule against ``cluster``, one fault at a time, and puts the cluster
    back as it found it (servers, Kafka running, Redis up) whatever happens."""

    cluster: Cluster
    rng: random.Random
    clock: Callable[[], float]
    log_path: Path
    done: list[Fault] = field(default_factory=list)
    _stopped_kafka: int | None = None
    _redis_down: list[str] | None = None  # the command line to start it again, while it is down
    _count: int = 0

    async def run(self, kinds: list[str], duration: float, calm: float, settle: float) -> None:
        """Faults from ``calm`` seconds in until ``duration``, each kind in turn (a seeded
        shuffle), ``settle`` to ``settle + 2`` seconds apart; none starts that could not end in time."""
        self._count = len(self.cluster.servers())
        await asyncio.sleep(calm)
        order: list[str] = []
        while True:
            if not order:
                order = list(kinds)
                self.rng.shuffle(order)
            kind = order.pop(0)
            if self.clock() + EXPECTED_S[kind] > duration:
                fitting = [k for k in order if self.clock() + EXPECTED_S[k] <= duration]
                if not fitting:
                    return
                order.remove(fitting[0])
                kind = fitting[0]
            fault = Fault(kind, self.clock())
            self.done.append(fault)
            try:
                fault.detail = await getattr(self, "_" + kind.replace("-", "_"))()
            except Exception as exc:
                fault.ok, fault.detail = False, f"{type(exc).__name__}: {exc}"
                fault.end = self.clock()
                raise
            fault.end = self.clock()
            await asyncio.sleep(self.rng.uniform(settle, settle + 2.0))

    async def _kill_server(self) -> str:
        servers = self.cluster.servers()
        n = self.rng.choice(list(servers))
        os.kill(servers[n], signal.SIGKILL)
        await self._wait_gone(servers[n], 10.0)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await self._script("up.sh", str(self._count))
        return f"ws-{n} (pid {servers[n]}) killed, up.sh {self._count} started it again"

    async def _kafka_stop(self) -> str:
        pid = self.cluster.kafka_pid()
        if pid is None:
            raise RuntimeError("Kafka of this run folder is not running")
        hold = self.rng.uniform(3.0, 6.0)
        os.kill(pid, signal.SIGSTOP)
        self._stopped_kafka = pid
        try:
            await asyncio.sleep(hold)
        finally:
            os.kill(pid, signal.SIGCONT)
            self._stopped_kafka = None
        return f"Kafka (pid {pid}) stopped for {hold:.1f}s"

    async def _redis_restart(self, sig: signal.Signals = signal.SIGTERM) -> str:
        pid = self.cluster.redis_pid()
        if pid is None:
            raise RuntimeError("Redis of this run folder is not running")
        argv = await asyncio.to_thread(self._redis_argv)
        os.kill(pid, sig)
        self._redis_down = argv
        if not await self._wait_gone(pid, 20.0):
            os.kill(pid, signal.SIGKILL)  # like lib.sh's stop_pid after its 20 s
            await self._wait_gone(pid, 5.0)
        await asyncio.sleep(self.rng.uniform(0.3, 1.5))
        new = await asyncio.to_thread(self._start_redis, argv)
        self._redis_down = None
        return f"Redis (pid {pid}) stopped with {sig.name}, started again as pid {new}: {' '.join(argv[1:])}"

    async def _redis_crash(self) -> str:
        return await self._redis_restart(signal.SIGKILL)

    async def _redis_master_kill(self) -> str:
        return await hafaults.kill_redis_master(self.cluster.pids_dir, self.rng, self._up_ha)

    async def _kafka_broker_kill(self) -> str:
        return await hafaults.kill_broker(self.cluster.pids_dir, self.cluster.run_dir, self.rng, self._up_ha)

    async def _up_ha(self) -> None:
        await self._script("up.sh", "--ha", str(self._count))

    async def _scale(self) -> str:
        count = self._count
        await self._script("scale.sh", str(count + 1))
        await asyncio.sleep(self.rng.uniform(2.0, 4.0))
        await self._script("scale.sh", str(count))
        return f"scale.sh {count + 1}, then scale.sh {count}"

    # ------------------------------------------------------------------ helpers

    def _redis_argv(self) -> list[str]:
        import redis  # the venv's client: CONFIG GET, to start Redis again exactly as it ran

        client = redis.Redis(host="127.0.0.1", port=self.cluster.redis_port, socket_timeout=5)
        try:
            config: dict[str, Any] = client.config_get("*")
        finally:
            client.close()

        def get(name: str) -> str:
            value = config.get(name, "")
            return value.decode() if isinstance(value, bytes) else str(value)

        if get("appendonly") != "yes":
            raise RuntimeError(
                f"Redis on {self.cluster.redis_port} runs without appendonly: not the shipped persistence"
            )
        return [
            "redis-server", "--bind", get("bind").split()[0] if get("bind") else "127.0.0.1",
            "--port", str(self.cluster.redis_port), "--dir", get("dir"),
            "--appendonly", "yes", "--appendfsync", get("appendfsync"), "--save", get("save"),
            "--daemonize", "no", "--protected-mode", get("protected-mode") or "yes",
        ]  # fmt: skip

    def _start_redis(self, argv: list[str]) -> int:
        logs = self.cluster.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / "redis.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.cluster.pids_dir / "redis.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.cluster.redis_port), "ping"], capture_output=True, text=True, check=False
            )
            if ping.stdout.strip() == "PONG":
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Redis did not start again: see {logs / 'redis.log'}")

    async def _wait_gone(self, pid: int, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while pid_running(pid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _script(self, name: str, *args: str) -> None:
        """Run one of the cluster's scripts (in a session of its own, so that a Ctrl-C here never
        reaches the servers it starts), its output appended to the faults log."""
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {name} {' '.join(args)}  (t={self.clock():.1f}s)\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                str(self.cluster.scripts / name), *args,
                cwd=self.cluster.root, env=self.cluster.script_env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                code = await asyncio.wait_for(proc.wait(), SCRIPT_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RuntimeError(f"{name} {' '.join(args)} took over {SCRIPT_TIMEOUT_S:.0f}s") from None
        if code != 0:
            raise RuntimeError(f"{name} {' '.join(args)} exited with {code}: see {self.log_path}")

    async def restore(self) -> list[str]:
        """Put the cluster back: Kafka continued, Redis up, the servers it had. Returns what it did."""
        did = []
        if self._stopped_kafka is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._stopped_kafka, signal.SIGCONT)
            did.append("Kafka continued")
        if self._redis_down is not None and self.cluster.redis_pid() is None:
            await asyncio.to_thread(self._start_redis, self._redis_down)
            did.append("Redis started again")
        ha = self.cluster.server_env.get("CHAT_HA") == "1"
        pids, run_dir = self.cluster.pids_dir, self.cluster.run_dir
        if ha and (len(hafaults.redis_nodes(pids)) < 6 or len(hafaults.brokers(pids, run_dir)) < 3):
            await self._up_ha()
            did.append("up.sh --ha: Redis Cluster nodes and brokers started again")
        if self._count:
            running = sorted(self.cluster.servers())
            if running != list(range(1, self._count + 1)):
                script = "scale.sh" if len(running) > self._count else "up.sh"
                await self._script(script, str(self._count))
                did.append(f"{script} {self._count}")
        return did
