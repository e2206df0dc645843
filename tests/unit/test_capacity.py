"""benchmarks/capacity.py's arithmetic: costs fitted from measured rows, and the projection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import capacity  # benchmarks/ is a folder of scripts, not a package


def row(rate: float, **cores: float) -> dict[str, object]:
    return {"rate": rate, "cores": {name.replace("_", " "): value for name, value in cores.items()}}


def test_the_fit_separates_the_cost_per_message_from_what_a_part_burns_idle() -> None:
    # chat servers: 0.1 core idle + 200 µs per message; Redis masters: 50 µs, nothing idle.
    rows = [row(r, chat_servers=0.1 + 200e-6 * r, redis_masters=50e-6 * r) for r in (500, 1000, 2000)]
    costs = capacity.fit(rows)
    assert costs["chat servers"] == {"us_per_msg": 200.0, "idle_cores": 0.1, "fitted": True}
    assert costs["redis masters"]["us_per_msg"] == 50.0 and costs["redis masters"]["fitted"]


def test_an_intercept_that_is_zero_but_for_rounding_is_nothing_idle_not_a_failed_fit() -> None:
    # A part that burns nothing idle fits an intercept of about -1e-18 or +1e-18, depending on how
    # the interpreter sums floats (Python 3.12's sum() compensates, 3.11's does not).
    rows = [row(r, redis_masters=50e-6 * r - 1e-12) for r in (500, 1000, 2000)]
    assert capacity.fit(rows)["redis masters"] == {"us_per_msg": 50.0, "idle_cores": 0.0, "fitted": True}


def test_a_line_that_makes_no_sense_falls_back_to_the_cost_at_the_highest_rate() -> None:
    rows = [row(100, kafka_brokers=0.9), row(200, kafka_brokers=0.8)]  # idle noise: a falling line
    assert capacity.fit(rows)["kafka brokers"] == {"us_per_msg": 4000.0, "idle_cores": 0.0, "fitted": False}


def test_the_projection_grows_with_the_machines_and_counts_the_instances_each_part_needs() -> None:
    costs = {
        "chat servers": {"us_per_msg": 300.0},
        "redis masters": {"us_per_msg": 60.0},
        "kafka brokers": {"us_per_msg": 40.0},
    }
    rows = capacity.project(costs, cores=4, mem_gib=16, util=0.5, rss_kib=16.0)
    by = {r["machines"]: r for r in rows}
    # 0.5 x 4 machines x 4 cores / 400 µs = 20,000 messages/s
    assert by[4]["messages_per_s"] == 20_000 and by[64]["messages_per_s"] == 16 * 20_000
    assert by[4]["chat_servers"] == 12 and by[4]["redis_shards"] == 3  # 20,000 x 300 µs / 0.5
    assert by[4]["connections"] == 4 * 16 * 2**20 // 2 // 16


@pytest.mark.parametrize("count", [1, 3])
def test_saturation_with_a_fixed_topology_is_set_by_the_busiest_instance(count: int) -> None:
    costs = {"redis masters": {"us_per_msg": 90.0}, "kafka brokers": {"us_per_msg": 30.0}}
    limits = capacity.first_to_saturate(costs, {"redis masters": count, "kafka brokers": 3}, util=0.9)
    assert limits["redis masters"] == round(0.9 / (90e-6 / count))
    assert limits["kafka brokers"] == round(0.9 / 10e-6)
