"""The project installs like a Python package: a wheel carries the page (templates/ and every file
under static/), and its ``chatserver`` console script serves the page and the WebSocket from any
working directory.

The wheel is built from a copy of the sources (so the checkout gets no build/ or egg-info) with
the setuptools that requirements.txt pins, without network (``--no-build-isolation``,
``--no-index``). It is installed, alone, into a fresh venv; that venv reaches the dependencies
already installed in the project's venv through a ``.pth`` file instead of downloading them again,
and ``pip check`` proves that the wheel's declared dependencies are met there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port
from tests.integration.conftest import ROOT

#: What a build needs from the checkout (pyproject.toml names README.md as the long description).
SOURCES = ("pyproject.toml", "README.md", "chatserver", "templates", "static")
#: A static import in a module script: ``import x from "./a.js"``, ``export * from './b.js'``, ``import "./c.js"``.
JS_IMPORT = re.compile(r"""(?:^|[;\s])(?:import|export)\b[^'"`;]*?['"](\.{1,2}/[^'"]+)['"]""", re.MULTILINE)


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user who installed the wheel: no PYTHONPATH, no CHAT_* of the test run."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "PYTHON", "VIRTUAL_ENV"))}
    return {**keep, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = work / "dist"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src)
    (built,) = dist.glob("chatserver-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed, and the project venv's packages (no chatserver there)."""
    home = tmp_path_factory.mktemp("venv") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", home)
    python = home / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "project-venv-deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    pip = (sys.executable, "-m", "pip", "--python", python)
    _run(*pip, "install", "--no-deps", "--no-index", "-q", wheel)
    check = subprocess.run([*map(str, pip), "check"], capture_output=True, text=True, timeout=120)
    unmet = [line for line in check.stdout.splitlines() if line.lower().startswith("chatserver ")]
    assert unmet == [], f"the wheel's dependencies are not met: {unmet}"
    return home


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with nothing of the project in it."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def server(venv: Path, elsewhere: Path) -> Iterator[str]:
    """``chatserver`` from the venv, on the memory backend, started in ``elsewhere``."""
    port = free_port()
    env = _clean_env(CHAT_BACKEND="memory", CHAT_DEV="1", SERVER_ID="pkg-1", PORT=str(port))
    log = elsewhere / "chatserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([venv / "bin" / "chatserver"], cwd=elsewhere, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _status(url + "/readyz") != 200:
            assert proc.poll() is None, f"chatserver exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"chatserver not ready after 30 s:\n{log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200, f"GET {url}: {response.status}"
        body: bytes = response.read()
        return body


class _Assets(HTMLParser):
    """The scripts and stylesheets a page references."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(str(found["src"]))
        if tag == "link" and found.get("rel") in ("stylesheet", "modulepreload") and found.get("href"):
            self.urls.append(str(found["href"]))


def test_the_wheel_carries_every_module_of_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "chatserver").rglob("*.py")]
    missing = [m for m in modules if m not in names]
    assert missing == [], f"the wheel lacks {missing}: list their packages in [tool.setuptools] of pyproject.toml"


def test_the_wheel_carries_every_file_of_the_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("templates", "static"):
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()]
        assert files, f"{folder}/ is empty"
        missing = [f for f in files if f"chatserver/{f}" not in names]
        assert missing == [], f"the wheel lacks {missing}: see [tool.setuptools] in pyproject.toml"


def test_the_installed_package_is_the_wheels_not_the_checkout(venv: Path, elsewhere: Path) -> None:
    where = _run(venv / "bin" / "python", "-c", "import chatserver; print(chatserver.__file__)", cwd=elsewhere)
    assert Path(where.strip()).is_relative_to(venv), f"chatserver imported from {where.strip()}, not the venv"
    assert (venv / "bin" / "chatserver").exists(), "the wheel installs no chatserver console script"


def test_chatserver_serves_the_page_and_every_script_it_loads_from_any_directory(server: str) -> None:
    page = _get(server + "/").decode()
    parser = _Assets()
    parser.feed(page)
    assert any(u.endswith(".js") or ".js?" in u for u in parser.urls), f"the page loads no script: {parser.urls}"
    seen: set[str] = set()
    todo = list(parser.urls)
    while todo:  # the page's scripts, and every module they import
        url = todo.pop()
        path = url.split("?", 1)[0]
        if path in seen:
            continue
        seen.add(path)
        body = _get(server + url)
        assert path.startswith("/static/"), f"the page loads {url} from outside /static/"
        assert body == (ROOT / path.lstrip("/")).read_bytes(), f"{url} is not the checkout's {path}"
        if path.endswith(".js"):
            base = path.rsplit("/", 1)[0]
            for spec in JS_IMPORT.findall(body.decode()):
                todo.append(os.path.normpath(f"{base}/{spec}"))
    assert any(p.endswith(".css") for p in seen), f"the page loads no stylesheet: {sorted(seen)}"


def test_chatserver_from_the_wheel_speaks_the_websocket(server: str) -> None:
    request = urllib.request.Request(
        server + "/api/login", data=json.dumps({"username": "wheel"}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        token = json.loads(response.read())["token"]
    with ws_connect(server.replace("http://", "ws://") + f"/ws?token={token}", open_timeout=5) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome" and welcome["user"] == "wheel" and welcome["server"] == "pkg-1"
        ws.send(json.dumps({"type": "public", "text": "from a wheel", "cid": "w1"}))
        frames: list[dict[str, object]] = []
        while not (
            any(f["type"] == "ack" and f.get("cid") == "w1" for f in frames)
            and any(f["type"] == "message" and f.get("text") == "from a wheel" for f in frames)
        ):
            assert len(frames) < 20, f"no ack and message for the public send among {frames}"
            frames.append(json.loads(ws.recv(timeout=5)))
