"""benchmarks/run.py --short, as CI runs it: it starts a cluster of its own with the operator's
scripts, runs every kind of row of the matrix, prints the table and stops what it started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.integration.conftest import ROOT, _delete_names
from tests.integration.test_scripts import _alive, _free_block


def test_the_short_benchmark_runs_the_matrix_on_its_own_cluster(tmp_path: Path) -> None:
    prefix = f"b{free_port()}-"
    run_dir, out = tmp_path / "run", tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--short", "--json", str(out)]
    command += ["--port-base", str(_free_block(2)), "--nginx-port", str(free_port())]
    command += ["--run-dir", str(run_dir), "--prefix", prefix, "--ceiling-port", str(free_port())]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        _delete_names(prefix)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)  # the figures, in the CI log

    table = proc.stdout.splitlines()
    assert table[1].startswith("machine at the start: load average "), "the machine's facts head the table"
    assert "a wake-up (sleep 2 ms) costs " in table[1], "what waking up costs this machine, beside its speed"
    header = next(line for line in table if line.startswith("| scenario |"))
    for column in ("gen µs/msg", "others % before/during", "steal % before/during", "calibration", "trust"):
        assert f"| {column} |" in header, column
    result = json.loads(out.read_text())
    assert {"cpus", "cpu_model", "loadavg", "at_start", "quiet"} <= set(result["machine"])
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["idle-cpu", "idle", "private", "private-ramp", "public", "kafka-rtt", "ceiling"]
    assert rows["idle-cpu"]["cpu_percent_of_one_core"]["ws-1"] > 0, "the poll callback costs something"
    for name in rows:
        assert any(line.startswith(f"| {name} |") for line in table), f"no table row for {name}"

    # Every row says whether it can be trusted, and why not. CI's machine may be busy: an
    # untrustworthy row is reported (above, in the log), never a failure.
    for name, row in rows.items():
        assert isinstance(row["trusted"], bool) and row["trusted"] == (not row["untrusted_because"]), name
        seen = row["machine"]
        assert seen["before"]["seconds"] > 0 and seen["before"]["others_pct"] >= 0, name
        assert seen["during"] is not None and 0 <= seen["during"]["steal_pct"] <= 100, name
        assert seen["calibration"]["cpu_s"] > 0, name
        line = next(line for line in table if line.startswith(f"| {name} |"))
        assert ("| ok |" in line) == row["trusted"], line
    settled = rows["idle-cpu"]["kafka_settle"]
    assert settled["waited_s"] > 0 and isinstance(settled["settled"], bool), "the idle row waits for Kafka first"

    private = rows["private"]
    assert private["measured"]["lost"] == 0 and private["measured"]["delivered"] == private["measured"]["sent"] > 0
    assert private["report"]["duplicates"] == 0
    cpu = private["cpu_seconds_in_window"]
    assert {"ws-1", "ws-2", "redis", "kafka", "generator"} <= set(cpu), "every process of the machine is read"
    assert cpu["ws-1"] > 0 and cpu["ws-2"] > 0
    assert 0 < private["server_us_per_delivery"] < private["all_us_per_delivery"]
    assert 0 < private["generator_us_per_delivery"] < private["all_us_per_delivery"], "the generator's own cost"
    assert private["machine"]["calibration"]["wakeup_us"] > 0 and private["wakeup_floor_us_per_delivery"] > 0
    assert any(line.startswith("| private |") and "µs each:" in line for line in table), "the wake-ups' share"

    ramp = rows["private-ramp"]["report"]["ramp"]
    assert ramp["steps"] and ramp["stopped_because"], "a ramp says where and why it stopped"
    phases = rows["private-ramp"]["ramp_phases"]
    assert phases[0]["factor"] == 2 and phases[0]["start"] == 100
    if phases[0]["last_good_rate"] is not None:  # then a finer ramp from the edge
        assert phases[-1]["factor"] < 2 and phases[-1]["start"] > phases[0]["last_good_rate"]

    public = rows["public"]
    assert public["measured"]["delivered"] == public["report"]["expected_deliveries"] > 0
    assert public["measured"]["lost"] == 0

    for figures in ("kafka_round_trip_ms", "kafka_produce_to_consume_ms"):
        rtt = rows["kafka-rtt"][figures]
        assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["max"], figures

    ceiling = rows["ceiling"]  # the bare relay carries the same traffic, counted the same way
    assert ceiling["measured"]["delivered"] == ceiling["measured"]["sent"] > 0 and ceiling["measured"]["lost"] == 0
    assert set(ceiling["cpu_seconds_in_window"]) == {"ws-relay", "generator"}
    assert ceiling["server_us_per_delivery"] > 0

    idle = rows["idle"]
    assert idle["report"]["still_connected"] == 200 and idle["connections_per_server"] == 100
    assert 0 < idle["rss_kib_per_connection"] < 1024

    # Everything the benchmark started is stopped.
    for pid_file in (run_dir / "pids").glob("*.pid"):
        assert not _alive(int(pid_file.read_text())), f"{pid_file.name} still runs"
