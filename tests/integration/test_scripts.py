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


# --- Scripts that explain themselves: each failure is one line saying what to do, and fast ------
#
# Each run has its own run folder, cache, ports and a PATH of its own (links to every tool on the
# real PATH but those hidden, plus fakes), so a missing or old Java is real to the script. Kafka's
# ports are free ones, so the script means to start a Kafka; Redis is the running one (used, never
# stopped). A run that went wrong anyway is stopped by down.sh in its own run folder.

FAKE_JAVA = """#!/bin/bash
# A java that answers -version with {version} and, as Kafka, {kafka}.
if [[ "$1" == -version ]]; then echo 'openjdk version "{version}" 2024-01-16' >&2; exit 0; fi
case " $* " in
    *" random-uuid "*) echo q1Sh-9_ISia_zwGINzRvyQ ;;
    *" format "*) echo "Formatting metadata directory" ;;
    *" kafka.Kafka "*) {kafka} ;;
esac
"""
KAFKA_DIES = 'echo "ERROR Exiting Kafka due to fatal exception: fake broker refuses to start" >&2; exit 1'


class Failing:
    """The scripts run with a PATH that hides some tools and holds fakes of others."""

    def __init__(self, tmp: Path, hide: tuple[str, ...] = (), fakes: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, text in (fakes or {}).items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        for folder in os.environ["PATH"].split(os.pathsep):
            for tool in Path(folder).glob("*") if Path(folder).is_dir() else ():
                link = bin_dir / tool.name
                if tool.name not in hide and not link.exists() and os.access(tool, os.X_OK) and tool.is_file():
                    link.symlink_to(tool)
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_HOME", "KAFKA_PORT", "REDIS_PORT")}
        self.env = {
            **env,
            "PATH": str(bin_dir),
            "CHAT_RUN_DIR": str(self.run_dir),
            "CHAT_CACHE_DIR": str(tmp / "cache"),
            "NGINX_PORT": str(free_port()),
            "CHAT_PORT_BASE": str(_free_block(2)),
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "CHAT_PREFIX": f"f{uuid.uuid4().hex[:8]}-",
        }

    def kafka_home(self, with_libs: bool = True) -> Path:
        home = self.tmp / "kafka"
        if with_libs:
            (home / "libs").mkdir(parents=True)
        self.env["KAFKA_HOME"] = str(home)
        return home

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs the script; a run that does not end within a minute (Kafka's wait alone is 90 s)
        fails the test. Whatever it started is stopped by down.sh in its own run folder."""
        try:
            command = [str(ROOT / "scripts" / script), *args]
            return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
        finally:
            subprocess.run([str(ROOT / "scripts/down.sh")], cwd=ROOT, env=self.env, capture_output=True, timeout=120)

    def started(self) -> list[str]:
        return sorted(p.name for p in (self.run_dir / "pids").glob("*.pid"))


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The script failed and said why in its last line, an ``error:`` one."""
    assert result.returncode != 0, result.stderr
    assert "chat is up" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


@pytest.mark.parametrize("kafka_home", [False, True])
def test_up_says_java_is_too_old(tmp_path: Path, kafka_home: bool) -> None:
    failing = Failing(tmp_path, fakes={"java": FAKE_JAVA.format(version="11.0.2", kafka="exit 1")})
    if kafka_home:
        failing.kafka_home()
    line = error_line(failing.run("up.sh"))
    assert f"{tmp_path}/bin/java is Java 11, too old: Kafka needs Java 17 or newer" in line
    assert "openjdk-17-jre-headless" in line
    assert ("KAFKA_HOME" in line) == kafka_home
    assert failing.started() == [], "nothing starts before the check"


def test_up_says_java_is_missing_when_kafka_home_is_set(tmp_path: Path) -> None:
    failing = Failing(tmp_path, hide=("java",))
    failing.kafka_home()
    line = error_line(failing.run("up.sh"))
    assert "java not found: Kafka needs Java 17 or newer" in line and "KAFKA_HOME=" in line
    assert failing.started() == []


def test_up_lists_what_to_install_by_hand_without_apt_get(tmp_path: Path) -> None:
    failing = Failing(tmp_path, hide=("java", "curl", "apt-get"))
    line = error_line(failing.run("up.sh"))
    assert line.startswith("error: missing: curl openjdk-17-jre-headless, and there is no apt-get"), line
    assert "install them by hand" in line
    assert failing.started() == []


def test_test_sh_says_java_is_missing_before_it_runs_anything(tmp_path: Path) -> None:
    failing = Failing(tmp_path, hide=("java",))
    failing.kafka_home()
    result = failing.run("test.sh", "--co")
    assert "java not found" in error_line(result)
    assert "== ruff" not in result.stdout, "it stops before lint"


@pytest.mark.parametrize("variable", ["NGINX_PORT", "CHAT_PORT_BASE"])
def test_up_names_the_process_holding_a_port_and_the_variable_that_moves_it(tmp_path: Path, variable: str) -> None:
    failing = Failing(tmp_path)
    port = int(failing.env[variable]) + (1 if variable == "CHAT_PORT_BASE" else 0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        line = error_line(failing.run("up.sh", "1"))
    holder = Path("/proc/self/comm").read_text().strip()  # the name ss shows for this process
    assert f"port {port} (" in line and f"is held by {holder}" in line, line
    assert f"(pid {os.getpid()})" in line and f"set {variable} to move the port" in line
    assert failing.started() == []


def test_up_says_kafka_home_is_not_a_kafka(tmp_path: Path) -> None:
    failing = Failing(tmp_path)
    home = failing.kafka_home(with_libs=False)
    line = error_line(failing.run("up.sh"))
    assert f"KAFKA_HOME={home} is not a Kafka installation (no libs/ folder)" in line
    assert "unset it to fetch the jars with Maven" in line


def test_up_says_when_kafka_exits_at_start_and_shows_its_log(tmp_path: Path) -> None:
    failing = Failing(tmp_path, fakes={"java": FAKE_JAVA.format(version="17.0.15", kafka=KAFKA_DIES)})
    failing.kafka_home()
    result = failing.run("up.sh")
    line = error_line(result)
    assert line.startswith("error: Kafka exited at start"), line
    assert "fake broker refuses to start" in result.stderr, "the last lines of its log are shown"
    assert not list((failing.run_dir / "pids").glob("ws-*.pid")), "no chat server starts without Kafka"


def test_up_says_maven_could_not_fetch_the_jars_and_mentions_kafka_home(tmp_path: Path) -> None:
    fake_mvn = "#!/bin/bash\necho '[ERROR] Could not transfer artifact: Network is unreachable'\nexit 1\n"
    failing = Failing(tmp_path, fakes={"mvn": fake_mvn})
    line = error_line(failing.run("up.sh"))
    assert "Maven could not fetch the Kafka" in line and "set KAFKA_HOME" in line
    assert "Network is unreachable" in (failing.run_dir / "logs/maven.log").read_text()


def test_up_says_when_redis_exits_at_start_and_shows_its_log(tmp_path: Path) -> None:
    fake_redis = "#!/bin/bash\necho '# Fatal error, can not open config file' >&2\nexit 1\n"
    failing = Failing(tmp_path, fakes={"redis-server": fake_redis})
    failing.env["REDIS_PORT"] = str(free_port())
    result = failing.run("up.sh")
    assert error_line(result).startswith("error: Redis exited at start"), result.stderr
    assert "can not open config file" in result.stderr, "the last lines of its log are shown"
