"""Failover on the high-availability topology (``up.sh --ha``: a Redis Cluster of three masters
with a replica each, three Kafka brokers): ``kill -9`` of a Redis master and of a broker during
traffic, while the chaos checker (scripts/chaos.py) holds every client's records against the
protocol: nothing acked lost, nothing doubled, and the time to recover reported.

The topology runs on free ports in a run folder under tmp_path; everything it started is stopped
at the end by its pid files, even on failure. About three minutes. Select it with ``-m chaos``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.hastack import ROOT, ha_env, stop_pids

pytestmark = pytest.mark.chaos

FAULTS = ("redis-master-kill", "kafka-broker-kill")
MIN_ACKED = 300  # about 1000 at the default 20 messages/s for 70 s


@pytest.fixture
def ha_stack(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    run_dir = tmp_path / "run"
    env = ha_env(run_dir, servers=2)
    try:
        up = subprocess.run(
            [str(ROOT / "scripts" / "up.sh"), "--ha", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=240, check=False,
        )  # fmt: skip
        assert up.returncode == 0, f"up.sh --ha failed:\n{up.stderr[-3000:]}"
        yield run_dir, env
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [str(ROOT / "scripts" / "down.sh")], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False
            )
        stop_pids(run_dir, timeout=5)


def test_killing_a_redis_master_and_a_kafka_broker_during_traffic_loses_and_doubles_nothing(
    ha_stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    run_dir, env = ha_stack
    out = tmp_path / "chaos"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--run-dir", str(run_dir), "--seed", "14",
         "--duration", "70", "--faults", ",".join(FAULTS), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    print(report)  # the per-fault table, recovery times included (pytest -s shows it)
    assert proc.returncode == 0, report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"], report
    assert summary["totals"]["acked"] >= MIN_ACKED, report
    assert all(summary["events"].get(kind, 0) >= 1 for kind in FAULTS), report
    meta = json.loads((out / "meta.json").read_text())
    assert all(f["ok"] for f in meta["faults"]), meta["faults"]
