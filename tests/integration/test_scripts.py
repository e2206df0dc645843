"""The operator's scripts, run for real: up.sh, its idempotence, scale.sh, down.sh.

They run in a run folder, ports and name prefix of their own, against the Redis and Kafka
that test.sh started (which up.sh finds listening, uses, and therefore never stops).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.chatclient import ChatClient
from tests.conftest import free_port
from tests.integration.conftest import KAFKA_BOOTSTRAP, REDIS_URL, ROOT, _delete_names


def _free_block(size: int) -> int:
    """A base port B such that B+1..B+size are all free, below the ephemeral range (where
    free_port() and every outgoing connection take theirs, so nothing else lands there)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = random.randint(20000, low - size - 1)
        ports = range(base + 1, base + size + 1)
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free block of ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Scripts:
    def __init__(self, tmp: Path) -> None:
        self.prefix = f"s{uuid.uuid4().hex[:8]}-"
        self.run_dir = tmp / "run"
        self.nginx_port = free_port()
        self.base = _free_block(4)
        self.env = {
            **os.environ,
            "CHAT_RUN_DIR": str(self.run_dir),
            "NGINX_PORT": str(self.nginx_port),
            "CHAT_PORT_BASE": str(self.base),
            "CHAT_PREFIX": self.prefix,
        }

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "scripts" / args[0]), *args[1:]],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pid(self, name: str) -> int:
        return int((self.run_dir / "pids" / f"{name}.pid").read_text())

    def ready(self, n: int) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.base + n}/readyz", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def upstream(self) -> str:
        return (self.run_dir / "nginx" / "upstream.conf").read_text()


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripts]:
    s = Scripts(tmp_path_factory.mktemp("scripts"))
    try:
        yield s
    finally:
        s.run("down.sh", timeout=120)
        _delete_names(s.prefix)


def _alive(pid: int) -> bool:
    """Running, not a zombie: orphans of the scripts may linger unreaped on this machine."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_up_starts_servers_and_nginx_and_prints_the_url(scripts: Scripts) -> None:
    result = scripts.run("up.sh", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"http://127.0.0.1:{scripts.nginx_port}")
    assert scripts.ready(1) == 200 and scripts.ready(2) == 200
    assert f"127.0.0.1:{scripts.base + 1}" in scripts.upstream()
    assert f"127.0.0.1:{scripts.base + 2}" in scripts.upstream()
    with urllib.request.urlopen(f"http://127.0.0.1:{scripts.nginx_port}/", timeout=5) as page:
        assert page.status == 200


def test_up_again_is_quick_and_brings_back_a_dead_server(scripts: Scripts) -> None:
    ws1, ws2 = scripts.pid("ws-1"), scripts.pid("ws-2")
    os.kill(ws2, signal.SIGKILL)
    started = time.monotonic()
    result = scripts.run("up.sh", "2")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert scripts.pid("ws-1") == ws1, "a running server is left alone"
    assert scripts.pid("ws-2") != ws2 and scripts.ready(2) == 200, "a dead server is started again"
    print(f"second up.sh with one server restarted: {took:.1f}s")


@pytest.mark.gen_test(timeout=120)
async def test_scale_grows_and_shrinks_behind_nginx(scripts: Scripts) -> None:
    grow = scripts.run("scale.sh", "3")
    assert grow.returncode == 0, grow.stderr
    assert scripts.ready(3) == 200 and f"127.0.0.1:{scripts.base + 3}" in scripts.upstream()
    ws2, ws3 = scripts.pid("ws-2"), scripts.pid("ws-3")

    url = f"http://127.0.0.1:{scripts.nginx_port}"
    token = _login(url, "scaler")
    client = await ChatClient.connect(url, token)
    assert (await client.recv())["type"] == "welcome"

    shrink = scripts.run("scale.sh", "1")
    assert shrink.returncode == 0, shrink.stderr
    assert not _alive(ws2) and not _alive(ws3), "servers above N are stopped"
    upstream = scripts.upstream()
    assert f"127.0.0.1:{scripts.base + 1}" in upstream and f"127.0.0.1:{scripts.base + 2}" not in upstream
    # Whoever was on a removed server can reconnect through the same address.
    again = await ChatClient.connect(url, token)
    welcome = await again.recv()
    assert welcome["server"] == "ws-1"


def test_down_stops_everything_it_started_and_nothing_else(scripts: Scripts) -> None:
    pids = [scripts.pid(name) for name in ("ws-1", "nginx")]
    result = scripts.run("down.sh")
    assert result.returncode == 0, result.stderr
    assert not any(_alive(pid) for pid in pids)
    assert _free(scripts.nginx_port) and _free(scripts.base + 1)
    redis_port = urlparse(REDIS_URL).port or 6379
    kafka_port = int(KAFKA_BOOTSTRAP.split(",")[0].rsplit(":", 1)[1])
    assert not _free(redis_port) and not _free(kafka_port), "Redis and Kafka were not started by it: still running"
    assert scripts.run("down.sh").returncode == 0, "nothing to stop is fine"


def _login(url: str, user: str) -> str:
    request = urllib.request.Request(url + "/api/login", data=json.dumps({"username": user}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        token: str = json.loads(response.read())["token"]
        return token
