"""Real-stack tier: chat server processes against the real Redis and Kafka.

``./scripts/test.sh`` starts Redis and Kafka before pytest runs. Each module gets its own
cluster: unique server ids and a unique ``CHAT_PREFIX``, so topics, consumer groups and
Redis keys never collide with another run or a cluster you are using; all of them are
deleted afterwards. Server logs are kept under test-output/ for post-mortems.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
from confluent_kafka.admin import AdminClient

from chatserver.auth import TokenAuthority
from tests.chatclient import ChatClient
from tests.conftest import free_port
from tests.integration.hastack import RedisClusterNodes, start_redis_cluster

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
SECRET = "integration-secret-" + "x" * 32


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def real_stack() -> None:
    """Fail at once, saying what to do, when Redis or Kafka is not running."""
    redis_addr = urlparse(REDIS_URL)
    kafka_host, kafka_port = KAFKA_BOOTSTRAP.split(",")[0].rsplit(":", 1)
    missing = []
    if not _reachable(redis_addr.hostname or "127.0.0.1", redis_addr.port or 6379):
        missing.append(f"Redis at {REDIS_URL}")
    if not _reachable(kafka_host, int(kafka_port)):
        missing.append(f"Kafka at {KAFKA_BOOTSTRAP}")
    if missing:
        pytest.fail(f"the real-stack tests need {' and '.join(missing)}: run ./scripts/test.sh, which starts them")


@dataclass
class ServerProcess:
    server_id: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                code: int = response.status
                return code
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class RealCluster:
    """Chat server processes sharing the real Redis and Kafka under one name prefix."""

    prefix: str
    env: dict[str, str]
    servers: dict[int, ServerProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.auth = TokenAuthority(SECRET, ttl_s=3600)
        self.logs = OUTPUT / self.prefix.rstrip("-")
        self.logs.mkdir(parents=True, exist_ok=True)

    def server_id(self, n: int) -> str:
        return f"ws-{n}"  # unique enough: the prefix isolates topics, groups and keys

    def token(self, user: str) -> str:
        return self.auth.issue(user)

    def url(self, n: int) -> str:
        return self.servers[n].url

    def start(self, n: int, wait: bool = True, **extra_env: str) -> ServerProcess:
        port = free_port()
        server_id = self.server_id(n)
        log_path = self.logs / f"{server_id}.log"
        env = {**os.environ, **self.env, "SERVER_ID": server_id, "PORT": str(port), **extra_env}
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chatserver"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        server = ServerProcess(server_id, port, proc, log_path)
        self.servers[n] = server
        if wait:
            self.wait_ready(n)
        return server

    def wait_ready(self, n: int, timeout: float = 60.0) -> None:
        server = self.servers[n]
        deadline = time.monotonic() + timeout
        while server.status("/readyz") != 200:
            if server.proc.poll() is not None:
                pytest.fail(f"{server.server_id} exited with {server.proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{server.server_id} not ready after {timeout}s:\n{server.log_tail()}")
            time.sleep(0.1)

    def start_all(self, *numbers: int) -> None:
        """Start servers ``numbers`` together, then wait until each is ready."""
        for n in numbers:
            self.start(n, wait=False)
        for n in numbers:
            self.wait_ready(n)

    async def connect(self, n: int, user: str) -> tuple[ChatClient, dict[str, Any]]:
        """A client of ``user`` on server ``n``, past its welcome (returned too)."""
        client = await ChatClient.connect(self.url(n), self.token(user))
        welcome = await client.recv_type("welcome")
        assert welcome["user"] == user and welcome["server"] == self.server_id(n)
        return client, welcome

    def stop(self, n: int, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        server = self.servers.pop(n)
        if server.proc.poll() is None:
            server.proc.send_signal(sig)
            try:
                server.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        return server.proc.returncode

    def close(self) -> None:
        for n in list(self.servers):
            self.stop(n)
        _delete_names(self.prefix)


def _delete_names(prefix: str) -> None:
    """Remove the topics, consumer groups and Redis keys of one test cluster."""
    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            future.result()
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(prefix)]
    if groups:
        for future in admin.delete_consumer_groups(groups).values():
            with contextlib.suppress(Exception):  # a group still rebalancing expires by itself
                future.result()
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def new_cluster(**env: str) -> RealCluster:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    base = {
        "CHAT_SECRET": SECRET,
        "CHAT_DEV_LOGIN": "1",  # tests sign in through POST /api/login
        "CHAT_PREFIX": prefix,
        "REDIS_URL": REDIS_URL,
        "KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
        "CHAT_SESSION_TTL_S": "4",
        "CHAT_HEARTBEAT_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return RealCluster(prefix, {**base, **env})


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    """Two chat servers, ws-1 and ws-2 (with a unique prefix), ready."""
    c = new_cluster()
    try:
        c.start_all(1, 2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of its own (six nodes on free ports, started by scripts/lib.sh), for the
    tests of the cluster path: Redis refuses there what a single Redis lets pass (cross-slot)."""
    nodes = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield nodes
    finally:
        nodes.stop()


@dataclass
class NginxFront:
    """The repository's nginx.conf, bound to a free port, in front of a test cluster."""

    port: int
    proc: subprocess.Popen[bytes]
    prefix_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_upstream(self, ports: list[int]) -> None:
        _write_upstream(self.prefix_dir, ports)
        subprocess.run(
            [_nginx_bin(), "-p", f"{self.prefix_dir}/", "-c", str(self.prefix_dir / "nginx.conf"), "-s", "reload"],
            check=True,
        )


def _nginx_bin() -> str:
    import shutil

    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        pytest.fail("nginx is not installed: run ./scripts/test.sh, which installs it")
    return found


def _write_upstream(prefix_dir: Path, ports: list[int]) -> None:
    lines = [f"server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in ports]
    (prefix_dir / "upstream.conf").write_text("\n".join(lines) + "\n")


def start_nginx(cluster: RealCluster) -> NginxFront:
    port = free_port()
    prefix_dir = cluster.logs / "nginx"
    prefix_dir.mkdir(parents=True, exist_ok=True)
    conf = (ROOT / "nginx.conf").read_text()
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};", 1)
    assert f"127.0.0.1:{port}" in conf, "nginx.conf no longer has the 'listen 8080;' line the scripts rewrite"
    (prefix_dir / "nginx.conf").write_text(conf)
    _write_upstream(prefix_dir, [s.port for s in cluster.servers.values()])
    log = (prefix_dir / "nginx.log").open("ab")
    proc = subprocess.Popen(
        [_nginx_bin(), "-p", f"{prefix_dir}/", "-c", str(prefix_dir / "nginx.conf"), "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not _reachable("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"nginx did not start: {(prefix_dir / 'nginx.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return NginxFront(port, proc, prefix_dir)


@pytest.fixture(scope="module")
def nginx(cluster: RealCluster) -> Iterator[NginxFront]:
    """nginx (the repository's nginx.conf) in front of the module's two-server cluster."""
    front = start_nginx(cluster)
    try:
        yield front
    finally:
        front.proc.terminate()
        front.proc.wait(10)
