"""scripts/lib.sh's helpers that start nothing, run by bash as the scripts run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_kafka_cluster_id_never_starts_with_a_dash(tmp_path: Path) -> None:
    """Kafka's StorageTool reads a cluster id that starts with '-' as an option and refuses to
    format (one id in 64 did: a CI run's chaos test failed to start its cluster that way)."""
    script = (
        "source scripts/lib.sh; "
        'for i in $(seq 1 500); do rm -f "$RUN_DIR/kafka-cluster.id"; kafka_cluster_id; echo; done'
    )
    env = {**os.environ, "CHAT_RUN_DIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    ids = done.stdout.split()
    assert len(ids) == 500 and all(len(i) == 22 for i in ids), ids[:3]
    assert [i for i in ids if i.startswith("-")] == [], "an id the formatter would take for an option"


def test_a_run_folder_given_relative_to_where_you_are_works_with_nginx(tmp_path: Path) -> None:
    """``CHAT_RUN_DIR=.run/chaos ./scripts/up.sh 2`` (as chaos.py's help shows) failed: nginx read
    its prefix and its configuration file both relative to the same folder, doubling the path."""
    script = f'source {ROOT}/scripts/lib.sh; mkdir -p "$LOGS"; echo "$RUN_DIR"; write_nginx_conf 1; check_nginx_conf'
    env = {**os.environ, "CHAT_RUN_DIR": "runs/mine", "NGINX_PORT": "8999"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "runs" / "mine")
