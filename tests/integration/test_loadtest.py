"""scripts/loadtest.py against the real stack: short runs that must come out clean.

Each run is a subprocess, as an operator would start it, with ``--json``; the module's
two-server cluster is the target, so every private message crosses servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.integration.conftest import ROOT, SECRET, NginxFront, RealCluster

SCRIPT = ROOT / "scripts" / "loadtest.py"


def loadtest(*args: str, timeout: float = 30) -> tuple[int, dict[str, Any], str]:
    """Exit status, the JSON report (stdout holds nothing else) and stderr of one run."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON object:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report: dict[str, Any] = json.loads(lines[0])
    return proc.returncode, report, proc.stderr


def both_servers(cluster: RealCluster) -> list[str]:
    return ["--url", cluster.url(1), "--url", cluster.url(2)]


def assert_clean(status: int, report: dict[str, Any], stderr: str) -> None:
    assert status == 0, f"exit {status}: {stderr}"
    assert report["ok"] is True
    assert report["sent"] > 0
    assert report["lost"] == 0
    assert report["duplicates"] == 0
    assert report["misrouted"] == 0
    assert report["errors"] == {}
    assert report["connect"]["failed"] == 0
    assert report["latency_ms"]["p50"] > 0
    assert report["ack_latency_ms"]["p50"] > 0


def test_help_explains_every_flag_and_gives_examples() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for flag in (
        "--url",
        "--secret",
        "--users",
        "--rate",
        "--duration",
        "--warmup",
        "--scenario",
        "--text-bytes",
        "--msgpack",
        "--procs",
        "--ramp",
        "--p99-bound-ms",
        "--json",
        "--plot",
    ):
        assert flag in proc.stdout
    assert proc.stdout.count("python scripts/loadtest.py --") >= 2  # two examples
    assert "default" in proc.stdout


def test_private_pairs_across_two_servers_lose_nothing(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster), "--users", "20", "--rate", "200", "--duration", "2", "--warmup", "0.5"
    )
    assert_clean(status, report, stderr)
    assert report["scenario"] == "private" and report["pairs"] == 10
    assert report["delivered"] == report["acked"] == report["sent"]
    assert 0.9 * 400 <= report["sent"] <= 400  # 200/s for 2 s, warmup not counted
    assert report["connect"]["ok"] == 20 and report["connect"]["rate_per_s"] > 0
    assert report["timeline"], "progress over time is part of the report"
    assert "sent" in stderr and "lost" in stderr  # the table, on stderr with --json


def test_through_nginx(nginx: NginxFront) -> None:
    status, report, stderr = loadtest(
        *("--url", nginx.url, "--users", "10", "--rate", "100", "--duration", "1", "--warmup", "0.5")
    )
    assert_clean(status, report, stderr)
    assert report["delivered"] == report["acked"]


def test_public_reaches_every_connected_user(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--scenario", "public", "--users", "10", "--rate", "50", "--duration", "2", "--warmup", "0.5"),
    )
    assert_clean(status, report, stderr)
    assert report["expected_deliveries"] == report["acked"] * 10
    assert report["delivered"] == report["expected_deliveries"]


def test_msgpack_subprotocol_and_local_tokens(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--msgpack", "--secret", SECRET, "--text-bytes", "200"),
        *("--users", "10", "--rate", "100", "--duration", "2", "--warmup", "0.5"),
    )
    assert_clean(status, report, stderr)
    assert report["codec"] == "msgpack" and report["text_bytes"] == 200
    assert report["delivered"] == report["acked"]


def test_two_worker_processes_merge_their_results(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--procs", "2", "--secret", SECRET, "--users", "20", "--rate", "200", "--duration", "2", "--warmup", "0.5"),
    )
    assert_clean(status, report, stderr)
    assert report["procs"] == 2
    assert report["delivered"] == report["acked"]
    assert 0.9 * 400 <= report["sent"] <= 400
    assert report["connect"]["ok"] == 20


def test_public_fan_out_with_two_processes(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--scenario", "public", "--procs", "2", "--secret", SECRET),
        *("--users", "6", "--rate", "30", "--duration", "1", "--warmup", "0.5", "--grace", "1"),
    )
    assert_clean(status, report, stderr)
    assert report["delivered"] == report["expected_deliveries"] == report["acked"] * 6


def test_idle_connections_stay_connected(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--scenario", "idle", "--secret", SECRET, "--users", "50", "--duration", "1", "--warmup", "0"),
    )
    assert status == 0, stderr
    assert report["connect"]["ok"] == 50 and report["connect"]["failed"] == 0
    assert report["still_connected"] == 50 and report["dropped"] == 0
    assert report["connect"]["rate_per_s"] > 0


def test_ramp_stops_at_the_first_step_over_the_latency_bound(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--ramp", "--p99-bound-ms", "0.001", "--secret", SECRET),
        *("--users", "4", "--rate", "20", "--duration", "1", "--warmup", "0"),
    )
    assert status == 1, stderr
    ramp = report["ramp"]
    assert ramp["last_good_rate"] is None and len(ramp["steps"]) == 1
    assert "p99" in ramp["stopped_because"]


def test_room_messages_reach_every_member_across_servers(cluster: RealCluster) -> None:
    status, report, stderr = loadtest(
        *both_servers(cluster),
        *("--scenario", "room", "--users", "8", "--rate", "40", "--duration", "2", "--warmup", "0.5"),
    )
    assert_clean(status, report, stderr)
    assert report["acked"] > 0 and report["delivered"] == report["expected_deliveries"]


def test_nothing_listening_fails_at_once_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status, report, stderr = loadtest("--url", url, "--users", "2", timeout=15)
    assert status == 1
    assert f"cannot log in at {url}" in stderr and "refused" in stderr
    assert report == {"ok": False, "error": report["error"], "exit_code": 1}


def test_a_refused_handshake_is_reported_with_the_servers_reason(cluster: RealCluster) -> None:
    status, report, _ = loadtest(
        *("--url", cluster.url(1), "--secret", "not-the-cluster-secret-at-all-00000000"),
        *("--users", "2", "--duration", "1", "--warmup", "0"),
    )
    assert status == 1 and report["ok"] is False
    expected = f"all 2 connections failed: first error {cluster.url(1)}: HTTP 401: invalid token: Signature"
    assert report["error"].startswith(expected), "the status and the server's own reason are passed on"


def test_bad_arguments_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--users", "1", "--text-bytes", "5000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--users must be at least 2" in proc.stderr and "--text-bytes" in proc.stderr


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    # An installation without matplotlib: a package of that name that cannot be imported comes
    # first on the path (the project's own environment has the real one, for benchmarks/).
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--plot", "x.png"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "pip install matplotlib to use --plot" in proc.stderr
