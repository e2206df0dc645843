"""benchmarks/trust.py: when a benchmark row is marked untrustworthy, from synthetic /proc trees."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import trust  # benchmarks/ is a folder of scripts, not a package

HZ = trust.CLK_TCK
HARNESS, GENERATOR, WORKER, SERVER, KAFKA, STRANGER, KWORKER = 100, 101, 102, 200, 300, 400, 50


def write_proc(root: Path, cpu: dict[str, int], tasks: dict[int, dict[str, object]]) -> None:
    """A /proc with its stat line and, per pid, a stat (with a tricky command name) and the
    main thread's children list."""
    columns = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu  " + " ".join(str(cpu.get(c, 0)) for c in columns) + " 0 0\ncpu0 1 2 3\n")
    (root / "loadavg").write_text("0.10 0.20 0.30 1/100 4242\n")
    for path in root.iterdir():  # processes that exited are gone from /proc
        if path.is_dir() and int(path.name) not in tasks:
            for f in sorted(path.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
            path.rmdir()
    for pid, t in tasks.items():
        flags = trust.PF_KTHREAD if t.get("kthread") else 0
        fields = ["S", "1", "1", "1", "0", "-1", str(flags), *["0"] * 4]
        fields += [str(t.get(k, 0)) for k in ("utime", "stime", "cutime", "cstime")]
        fields += ["20", "0", "1", "0", "5"]
        (root / str(pid) / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
        name = t.get("name", "a (tricky) name")
        (root / str(pid) / "stat").write_text(f"{pid} ({name}) " + " ".join(fields) + "\n")
        children = " ".join(str(c) for c in t.get("children", ()))  # type: ignore[attr-defined]
        (root / str(pid) / "task" / str(pid) / "children").write_text(children)


def two_samples(
    tmp_path: Path,
    before: tuple[dict[str, int], dict[int, dict[str, object]]],
    after: tuple[dict[str, int], dict[int, dict[str, object]]],
    seconds: float = 1.0,
) -> trust.Usage:
    proc = trust.Proc(tmp_path / "proc")
    roots = [HARNESS, SERVER, KAFKA]
    write_proc(proc.root, *before)
    first = dataclasses.replace(trust.sample(proc, roots, proc.kernel_threads()), t=1000.0)
    write_proc(proc.root, *after)
    last = dataclasses.replace(trust.sample(proc, roots, proc.kernel_threads()), t=1000.0 + seconds)
    return trust.usage(first, last)


def machine(busy: int, steal: int = 0, irq: int = 0, uptime: int = 100) -> dict[str, int]:
    """/proc/stat of 2 CPUs after ``uptime`` seconds, ``busy`` jiffies of them user time."""
    total = 2 * uptime * HZ
    return {"user": busy, "softirq": irq, "steal": steal, "idle": total - busy - steal - irq}


def core(pct: float) -> int:
    """Jiffies of ``pct``% of one core for one second."""
    return round(pct * HZ / 100)


def tasks(harness: int, server: int, kafka: int, stranger: int = 0, kworker: int = 0) -> dict[int, dict[str, object]]:
    return {
        2: {"kthread": True, "children": [KWORKER]},
        KWORKER: {"kthread": True, "stime": kworker},
        HARNESS: {"utime": harness, "children": []},
        SERVER: {"utime": server},
        KAFKA: {"utime": kafka},
        STRANGER: {"utime": stranger},
    }


LIMITS = trust.Limits()
REFERENCE = {"calibration": {"cpu_s": 0.125, "wall_s": 0.126}}
QUIET_CALIBRATION = {"cpu_s": 0.127, "wall_s": 0.129, "rounds": 3}


def test_a_quiet_machine_is_trusted(tmp_path: Path) -> None:
    # In one second the run's processes used 0.6 of a core and the machine as much, plus a
    # little kernel work: nobody else ran.
    used = two_samples(
        tmp_path,
        (machine(10_000), tasks(1_000, 2_000, 3_000)),
        (
            machine(10_000 + core(61), irq=core(1), uptime=101),
            tasks(1_000 + core(10), 2_000 + core(30), 3_000 + core(20), kworker=core(1)),
        ),
    )
    assert used.others_pct == pytest.approx(0, abs=0.01)
    assert used.participants_pct == pytest.approx(60)
    assert used.kernel_pct == pytest.approx(2)
    assert used.steal_pct == 0
    assert trust.reasons(LIMITS, before=used, during=used, calibration=QUIET_CALIBRATION, reference=REFERENCE) == []


def test_another_process_using_the_machine_is_named_as_others(tmp_path: Path) -> None:
    used = two_samples(
        tmp_path,
        (machine(10_000), tasks(1_000, 2_000, 3_000, stranger=500)),
        (
            machine(10_000 + core(98), uptime=101),
            tasks(1_000 + core(10), 2_000 + core(30), 3_000 + core(20), stranger=500 + core(38)),
        ),
    )
    assert used.others_pct == pytest.approx(38)
    assert trust.reasons(LIMITS, during=used) == ["others 38% of a core during the row"]
    assert trust.reasons(trust.Limits(others_pct=50), during=used) == [], "the threshold is an option"


def test_the_busiest_others_are_named(tmp_path: Path) -> None:
    proc = trust.Proc(tmp_path / "proc")
    before = tasks(1_000, 2_000, 3_000, stranger=500)
    before[STRANGER]["name"] = "pytest"
    write_proc(proc.root, machine(10_000), before)
    first = (1000.0, trust.snapshot(proc)[1])
    after = tasks(1_000 + core(10), 2_000, 3_000, stranger=500 + core(38))
    after[STRANGER]["name"] = "pytest"
    after[STRANGER + 1] = {"name": "java", "utime": core(8)}  # started meanwhile
    write_proc(proc.root, machine(10_000 + core(56), uptime=101), after)
    last = (1001.0, trust.snapshot(proc)[1])
    named = trust.top_others(first, last, proc.tree([HARNESS, SERVER, KAFKA]))
    assert named == (("pytest", 38.0), ("java", 8.0)), "participants and kernel threads are not named"
    busy = trust.Usage(seconds=1, others_pct=46, participants_pct=10, kernel_pct=0, steal_pct=0, top_others=named)
    assert trust.reasons(LIMITS, during=busy) == ["others 46% of a core during the row (pytest 38%, java 8%)"]
    assert busy.to_dict()["top_others"] == {"pytest": 38.0, "java": 8.0}


def test_a_participant_child_that_exits_between_samples_is_not_taken_for_others(tmp_path: Path) -> None:
    # The load generator (a child of the harness) and its worker: the worker exits and is
    # reaped, so its time moves into the generator's reaped figure, then the generator's into
    # the harness's. The sum over the run's trees must not drop.
    def with_generator(
        generator: dict[str, object], harness_reaped: int, worker: dict[str, object] | None
    ) -> dict[int, dict[str, object]]:
        t = tasks(1_000, 2_000, 3_000)
        t[HARNESS] = {"utime": 1_000, "cutime": harness_reaped, "children": [GENERATOR] if generator else []}
        if generator:
            t[GENERATOR] = {**generator, "children": [WORKER] if worker else []}
        if worker:
            t[WORKER] = worker
        return t

    proc = trust.Proc(tmp_path / "proc")
    roots = [HARNESS, SERVER, KAFKA]
    write_proc(proc.root, machine(10_000), with_generator({"utime": 100}, 0, {"utime": 300}))
    first = trust.sample(proc, roots)
    write_proc(proc.root, machine(10_000 + 50), with_generator({"utime": 120, "cutime": 330}, 0, None))
    middle = trust.sample(proc, roots)
    write_proc(proc.root, machine(10_000 + 60), with_generator({}, 460, None))
    last = trust.sample(proc, roots)
    assert middle.participants - first.participants == 50
    assert last.participants - middle.participants == 10
    assert trust.usage(dataclasses.replace(first, t=0), dataclasses.replace(last, t=1)).others_pct == 0


def test_steal_is_flagged(tmp_path: Path) -> None:
    # 8% of one core's time (4% of the 2 CPUs' time) went to other guests.
    used = two_samples(
        tmp_path,
        (machine(10_000), tasks(1_000, 2_000, 3_000)),
        (machine(10_000 + core(10), steal=core(8), uptime=101), tasks(1_000 + core(10), 2_000, 3_000)),
    )
    assert used.steal_pct == pytest.approx(4, abs=0.1)
    assert used.others_pct == pytest.approx(0, abs=0.01)
    assert trust.reasons(LIMITS, before=used) == ["steal 4.0% before the row"]


def test_a_slow_calibration_is_flagged() -> None:
    slow = {"cpu_s": 0.2, "wall_s": 0.205, "rounds": 3}
    assert trust.slowdown(slow, REFERENCE) == 1.6
    assert trust.reasons(LIMITS, calibration=slow, reference=REFERENCE) == [
        "calibration 1.60x slower than the reference"
    ]


def test_a_calibration_that_waited_for_a_core_is_flagged() -> None:
    waited = {"cpu_s": 0.125, "wall_s": 0.25, "rounds": 3}
    assert trust.reasons(LIMITS, calibration=waited, reference=REFERENCE) == [
        "calibration took 2.0x its CPU time (waiting for a core, or throttled)"
    ]


def test_no_reference_means_no_speed_verdict() -> None:
    assert trust.slowdown(QUIET_CALIBRATION, {}) is None
    assert trust.reasons(LIMITS, calibration=QUIET_CALIBRATION, reference={}) == []


def test_a_busy_load_generator_is_flagged() -> None:
    assert trust.reasons(LIMITS, generator_us=49.0) == []
    assert trust.reasons(LIMITS, generator_us=270.4) == ["generator 270 µs/msg > 50: it limits the measurement"]


def test_every_reason_is_given_at_once() -> None:
    busy = trust.Usage(seconds=1, others_pct=38, participants_pct=60, kernel_pct=1, steal_pct=4)
    found = trust.reasons(
        LIMITS, before=busy, during=busy, calibration={"cpu_s": 0.2, "wall_s": 0.2}, reference=REFERENCE
    )
    assert found == [
        "others 38% of a core before the row",
        "steal 4.0% before the row",
        "others 38% of a core during the row",
        "steal 4.0% during the row",
        "calibration 1.60x slower than the reference",
    ]


def test_the_window_is_interpolated_between_samples() -> None:
    samples = [
        trust.Sample(t=0.0, busy=0, interrupts=0, steal=0, total=0, participants=0, kernel=0),
        trust.Sample(t=1.0, busy=2 * HZ, interrupts=0, steal=0, total=2 * HZ, participants=HZ, kernel=0),
    ]
    half = trust.window(samples, 0.25, 0.75)
    assert half.seconds == 0.5
    assert half.others_pct == pytest.approx(100, abs=2)  # a core of others, both halves alike


def test_the_calibration_measures_cpu_and_wall_time() -> None:
    result = trust.calibrate(rounds=1)
    assert 0 < result["cpu_s"] <= result["wall_s"] * 1.05 and result["rounds"] == 1


def test_spread_is_the_median_and_range() -> None:
    assert trust.spread([3.1, None, 4.0, 3.3]) == {"median": 3.3, "min": 3.1, "max": 4.0}
    assert trust.spread([None]) is None


def test_the_real_proc_can_be_read() -> None:
    proc = trust.Proc()
    used = trust.measure(proc, [1], 0.05)
    assert used.seconds >= 0.05 and used.others_pct >= 0 and 0 <= used.steal_pct <= 100
    assert len(proc.loadavg()) == 3


# ------------------------------------------------------------------------------ ramps (benchmarks/run.py)


def ramp_bench(ceiling: float, reference: dict[str, object]) -> tuple[object, list[tuple[float, float]]]:
    """A Bench whose rows are a fake ramp against a cluster that carries ``ceiling`` msg/s."""
    import argparse

    import run

    args = argparse.Namespace(rate=None, ramp_start={}, short=False, ramp_fine_factor=None, repeat=1)
    bench = run.Bench(args, trust.Limits(), reference)
    calls: list[tuple[float, float]] = []

    def once(cluster: object, plan: run.Scenario) -> dict[str, object]:
        rate, factor = run.options(plan).rate, run.options(plan).ramp_factor
        calls.append((rate, factor))
        good = None
        while rate <= ceiling:
            good, rate = rate, round(rate * factor, 3)
        ramp = {"last_good_rate": good, "stopped_because": f"p99 > 50 ms at {rate:g}/s"}
        return {"name": plan.name, "report": {"ramp": ramp}, "trusted": True}

    bench.once = once  # type: ignore[method-assign,assignment]
    return bench, calls


def private_ramp() -> object:
    import run

    return next(s for s in run.matrix(False) if s.name == "private-ramp")


def test_a_ramp_starts_below_the_known_good_rate_then_refines_at_the_edge() -> None:
    bench, calls = ramp_bench(700, {"last_good_rates": {"private-ramp": 500.0}})
    row = bench.ramp(None, private_ramp())  # type: ignore[attr-defined]
    # Coarse x1.25 from 0.8 x 500: 400, 500, 625 good, 781 not; fine x1.057 from 625: 661, 698 good.
    assert calls == [(400.0, 1.25), (660.625, 1.057)]
    assert row["report"]["ramp"]["last_good_rate"] == pytest.approx(698.281)
    assert [p["last_good_rate"] for p in row["ramp_phases"]] == [625.0, pytest.approx(698.281)]
    bench.ramp(None, private_ramp())  # type: ignore[attr-defined]
    assert calls[2][0] == pytest.approx(0.8 * 698.281, abs=0.01), "the next run starts from the previous one"
    assert calls[2][1] == 1.25


def test_a_ramp_whose_start_is_no_longer_good_starts_again_from_half() -> None:
    bench, calls = ramp_bench(300, {"last_good_rates": {"private-ramp": 500.0}})
    row = bench.ramp(None, private_ramp())  # type: ignore[attr-defined]
    assert calls == [(400.0, 1.25), (200.0, 1.25), (264.25, 1.057)]
    assert row["report"]["ramp"]["last_good_rate"] == pytest.approx(295.229, abs=0.01)


def test_without_a_known_rate_a_ramp_starts_at_the_matrix_rate() -> None:
    bench, calls = ramp_bench(700, {})
    bench.ramp(None, private_ramp())  # type: ignore[attr-defined]
    assert calls[0] == (250.0, 1.25)


def test_a_processes_cpu_and_memory_are_read_from_its_proc_entry(tmp_path: Path) -> None:
    proc = trust.Proc(tmp_path / "proc")
    write_proc(proc.root, machine(0), {SERVER: {"utime": 3 * HZ, "stime": HZ}})
    (proc.root / str(SERVER) / "statm").write_text("5000 2500 300 10 0 900 0\n")
    assert proc.cpu_seconds(SERVER) == 4.0
    assert proc.rss_kib(SERVER) == 2500 * trust.PAGE_KIB
    assert proc.cpu_seconds(STRANGER) == 0.0 and proc.rss_kib(STRANGER) == 0, "gone: nothing"


def test_wake_ups_are_summed_over_every_thread_of_a_process(tmp_path: Path) -> None:
    proc = trust.Proc(tmp_path / "proc")
    write_proc(proc.root, machine(0), {SERVER: {}})
    for tid, (voluntary, forced) in {SERVER: (40, 7), SERVER + 1: (2, 900)}.items():
        (proc.root / str(SERVER) / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        status = f"Name:\tpython\nvoluntary_ctxt_switches:\t{voluntary}\nnonvoluntary_ctxt_switches:\t{forced}\n"
        (proc.root / str(SERVER) / "task" / str(tid) / "status").write_text(status)
    assert proc.wakeups(SERVER) == 42, "slept and woken: preemptions are not wake-ups"
    assert proc.wakeups(STRANGER) == 0, "gone: nothing"


def test_a_jvms_compiler_threads_are_read_apart_from_its_other_threads(tmp_path: Path) -> None:
    proc = trust.Proc(tmp_path / "proc")
    write_proc(proc.root, machine(0), {KAFKA: {"utime": 9 * HZ}})
    threads = {"java": HZ, "C2 CompilerThre": 3 * HZ, "C1 CompilerThre": HZ // 2, "data-plane-kafk": 4 * HZ}
    for tid, (name, jiffies) in enumerate(threads.items(), start=KAFKA):
        fields = ["S", "1", "1", "1", "0", "-1", "0", *["0"] * 4, str(jiffies), "0", "0", "0", "20", "0", "1"]
        (proc.root / str(KAFKA) / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        (proc.root / str(KAFKA) / "task" / str(tid) / "stat").write_text(f"{tid} ({name}) " + " ".join(fields))
    assert proc.compiling_seconds(KAFKA) == 3.5
    assert proc.compiling_seconds(STRANGER) == 0.0, "gone: nothing"


def test_a_participant_still_compiling_is_flagged() -> None:
    assert trust.reasons(LIMITS, compiling={"kafka": 4.9, "ws-1": 0.0}) == []
    assert trust.reasons(LIMITS, compiling={"kafka": 24.2}) == [
        "kafka still compiling: its JIT took 24% of a core during the row"
    ]


def warming_bench(monkeypatch: pytest.MonkeyPatch, jit_per_round: list[float]) -> tuple[object, list[str]]:
    """A Bench whose warm-up rounds find Kafka's JIT at the given shares, one per round."""
    import argparse

    import run

    bench = run.Bench(argparse.Namespace(short=False, repeat=1), trust.Limits(), {})
    rounds: list[str] = []

    def scenario(cluster: object, plan: run.Scenario) -> tuple[dict[str, object], None]:
        rounds.append(plan.name)
        return {"name": plan.name, "compiling_percent_of_one_core": {"kafka": jit_per_round[len(rounds) - 1]}}, None

    monkeypatch.setattr(run, "run_scenario", scenario)
    monkeypatch.setattr(run, "settle", lambda cluster, idle, limit_s=120.0: 0.0)
    return bench, rounds


class KafkaCluster:
    def __init__(self) -> None:
        self.pids = {"ws-1": SERVER, "kafka": KAFKA}


def test_the_warm_up_runs_until_kafkas_jit_has_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    import run

    bench, rounds = warming_bench(monkeypatch, [27.8, 7.7, 1.5, 0.5])
    row = bench.warm_up(KafkaCluster())  # type: ignore[attr-defined]
    assert rounds == ["warm-up"] * 3, "stops at the first round at or below the limit"
    assert row["trusted"] and row["warm_up"]["kafka_jit_percent_of_one_core"] == [27.8, 7.7, 1.5]
    assert "27.8%, 7.7%, 1.5%" in run.table([row])


def test_a_warm_up_that_never_settles_marks_itself_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    import run

    monkeypatch.setattr(run, "WARM_UP_LIMIT_S", 0.0)
    bench, rounds = warming_bench(monkeypatch, [30.0, 30.0])
    row = bench.warm_up(KafkaCluster())  # type: ignore[attr-defined]
    assert rounds == ["warm-up"], "bounded: no second round past the limit"
    assert row["trusted"] is False and "kafka still compiling" in row["untrusted_because"][0]


def test_no_warm_up_without_a_local_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    bench, rounds = warming_bench(monkeypatch, [30.0])
    cluster = type("Relay", (), {"pids": {"ws-1": SERVER}})()
    assert bench.warm_up(cluster) is None and rounds == []  # type: ignore[attr-defined]


def test_counters_between_two_times_are_interpolated() -> None:
    samples = [(10.0, {"ws-1": 0.0, "kafka": 100.0}), (11.0, {"ws-1": 50.0, "kafka": 300.0})]
    import run

    assert run.between(samples, 10.2, 10.7) == {"ws-1": 25.0, "kafka": 100.0}


@pytest.mark.parametrize(("kept", "measured", "written"), [(0.104, 0.162, 0.104), (0.162, 0.104, 0.104)])
def test_recording_the_reference_never_makes_the_machine_look_faster_than_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: float, measured: float, written: float
) -> None:
    """A machine measured at a slow moment keeps the faster calibration already recorded (a slower
    reference would let slow rows pass as ok); a faster one replaces it."""
    import json

    import run

    path = tmp_path / "reference.json"
    path.write_text(json.dumps({"calibration": {"cpu_s": kept, "wall_s": kept}}))
    monkeypatch.setattr(trust, "calibrate", lambda rounds: {"cpu_s": measured, "wall_s": measured, "rounds": rounds})
    assert run.record_reference(path, trust.Limits(), None) == 0
    assert json.loads(path.read_text())["calibration"]["cpu_s"] == written


def test_the_warm_up_waits_for_every_broker_of_a_replicated_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    import run

    rounds = [{"kafka-1": 1.0, "kafka-2": 22.0, "ws-1": 0.0}, {"kafka-1": 0.5, "kafka-2": 3.0, "kafka-3": 4.0}]
    seen: list[int] = []

    def scenario(cluster: object, plan: run.Scenario) -> tuple[dict[str, object], None]:
        seen.append(1)
        return {"name": plan.name, "compiling_percent_of_one_core": rounds[len(seen) - 1]}, None

    monkeypatch.setattr(run, "run_scenario", scenario)
    cluster = type("HA", (), {"pids": {"ws-1": SERVER, "kafka-1": KAFKA, "kafka-2": KAFKA + 1, "kafka-3": KAFKA + 2}})()
    row = run.warm_up(cluster, 5.0)
    assert row is not None and row["warm_up"]["kafka_jit_percent_of_one_core"] == [22.0, 4.0], "the busiest broker"
    assert row["trusted"]


def test_a_wake_up_is_billed_as_the_cpu_of_sleeping_and_waking_not_the_time_asleep() -> None:
    cost = trust.wakeup_cost_us(count=40, sleep_s=0.005)
    assert 0 < cost < 5000  # 5 ms asleep each time: measured as wall time it would be above


def test_the_wake_up_floor_is_every_roles_wake_ups_at_the_measured_cost() -> None:
    per_message = {"ws-1": 1.0, "ws-2": 1.5, "redis": 0.5, "generator": 0.4}
    assert trust.wakeup_floor_us(per_message, 50.0) == 170.0
    assert trust.wakeup_floor_us(per_message, None) is None
    assert trust.wakeup_floor_us({}, 50.0) is None
