"""Whether a benchmark row can be trusted: what else ran on the machine, CPU steal, and the
machine's own speed, each against a threshold.

Every figure of ``benchmarks/run.py`` is CPU time or latency on a machine the benchmark shares
with everything else that runs there. A row is only worth reading when, before and during it,

- **others** (every process that is not part of the run: not a chat server, Redis, Kafka, nginx,
  the load generator or the harness itself) used almost no CPU: the machine's busy jiffies in
  ``/proc/stat`` minus the participants' own and reaped children's jiffies from
  ``/proc/<pid>/stat``, minus kernel threads and interrupts (they serve the run's sockets too);
- the hypervisor took (almost) no **steal** time from the virtual CPUs (``/proc/stat``);
- a fixed CPU-bound **calibration** (a pure Python loop and SHA-256) runs about as fast as the
  reference recorded in ``benchmarks/reference.json``, and runs on the CPU as long as on the
  clock (not throttled or waiting for a core);
- (reported, not judged) what a **wake-up** costs: the CPU a thread is billed per sleep and wake,
  which on this kind of VM makes a message handled at a low rate several times dearer than at a
  high one, where each wake-up serves many;
- the **load generator** spent little CPU per message: beyond about 50 µs it is the limit of
  what is measured, not the servers;
- no participant was still **compiling**: a JVM (Kafka) compiles its hot paths in the first
  minute of traffic, and its JIT threads then take a quarter of a core from the run (their
  names are HotSpot's ``C1/C2 CompilerThread``, read per thread from ``/proc``).

This module has no I/O of its own beyond reading a ``/proc`` tree (any root: the tests give it
a synthetic one) and the clock, so its rules can be tested apart from any cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PF_KTHREAD = 0x00200000  # /proc/<pid>/stat flags: a kernel thread
REFERENCE = Path(__file__).resolve().with_name("reference.json")
COMPILER_THREAD = "CompilerThre"  # HotSpot's JIT threads, as /proc shows them (15 characters)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Beyond any of these a row is marked untrustworthy."""

    others_pct: float = 5.0  # CPU of everything outside the run, % of one core
    steal_pct: float = 2.0  # steal, % of all CPU time (top's "st")
    slowdown: float = 1.3  # calibration CPU time / the reference's; and its wall time / its CPU time
    generator_us: float = 50.0  # the load generator's CPU per delivered message
    compiling_pct: float = 5.0  # a participant's JIT compiler threads, % of one core


# ------------------------------------------------------------------------------ reading /proc


@dataclasses.dataclass(frozen=True)
class CpuTotals:
    """The first line of ``/proc/stat``, in jiffies (``CLK_TCK`` per second) summed over CPUs."""

    busy: int  # user + nice + system + irq + softirq (guest time is already inside user and nice)
    interrupts: int  # irq + softirq: run in whatever process was interrupted, so nobody's
    steal: int
    total: int  # busy + idle + iowait + steal


def parse_proc_stat(text: str) -> CpuTotals:
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            busy = user + nice + system + irq + softirq
            return CpuTotals(busy, irq + softirq, steal, busy + idle + iowait + steal)
    raise ValueError("no 'cpu ' line in /proc/stat")


@dataclasses.dataclass(frozen=True)
class TaskTimes:
    own: int  # utime + stime, all threads
    reaped: int  # cutime + cstime: children that exited and were waited for
    kernel_thread: bool
    name: str = ""


def parse_pid_stat(text: str) -> TaskTimes:
    """``/proc/<pid>/stat``; the command name may hold spaces and parentheses, so split after
    the last ``)``."""
    head, tail = text.rsplit(")", 1)
    fields = tail.split()
    # fields[0] is the state (field 3 of proc(5)); flags is field 9, utime..cstime 14-17.
    flags, utime, stime, cutime, cstime = (int(fields[i]) for i in (6, 11, 12, 13, 14))
    return TaskTimes(utime + stime, cutime + cstime, bool(flags & PF_KTHREAD), head.split("(", 1)[-1])


class Proc:
    """Reads a ``/proc`` tree (the real one, or a synthetic one in tests)."""

    def __init__(self, root: Path | str = "/proc") -> None:
        self.root = Path(root)

    def totals(self) -> CpuTotals:
        return parse_proc_stat((self.root / "stat").read_text())

    def task(self, pid: int) -> TaskTimes | None:
        try:
            return parse_pid_stat((self.root / str(pid) / "stat").read_text())
        except (OSError, IndexError, ValueError):
            return None  # gone (its time is now in its parent's reaped figure)

    def cpu_seconds(self, pid: int) -> float:
        """User + system CPU of ``pid`` so far, all threads (0 when it is gone)."""
        times = self.task(pid)
        return times.own / CLK_TCK if times is not None else 0.0

    def _threads(self, pid: int) -> list[Path]:
        """The ``/proc`` folders of every thread of ``pid`` (none when it is gone)."""
        try:
            return list((self.root / str(pid) / "task").iterdir())
        except OSError:
            return []

    def wakeups(self, pid: int) -> int:
        """How many times the threads of ``pid`` went to sleep and were woken, so far (their
        voluntary context switches; 0 when it is gone). A JVM has a hundred threads: read it
        about once a second, not on every sample."""
        total = 0
        for task in self._threads(pid):
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended meanwhile
        return total

    def compiling_seconds(self, pid: int) -> float:
        """CPU seconds the JIT compiler threads of ``pid`` have used so far (HotSpot names them
        ``C1 CompilerThread0``, ``C2 CompilerThread0``...; 0 for a process without them)."""
        jiffies = 0
        for task in self._threads(pid):
            try:
                times = parse_pid_stat((task / "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
            if COMPILER_THREAD in times.name:
                jiffies += times.own
        return jiffies / CLK_TCK

    def rss_kib(self, pid: int) -> int:
        """Resident memory of ``pid`` (0 when it is gone)."""
        try:
            return int((self.root / str(pid) / "statm").read_text().split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            return 0

    def children(self, pid: int) -> list[int]:
        """Children forked by the main thread (every participant forks from it; reading every
        thread's list of a JVM would cost a hundred reads per sample)."""
        try:
            return [int(c) for c in (self.root / str(pid) / "task" / str(pid) / "children").read_text().split()]
        except (OSError, ValueError):
            return []

    def tree(self, pids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        todo = list(pids)
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(self.children(pid))
        return found

    def pids(self) -> list[int]:
        return [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]

    def kernel_threads(self) -> list[int]:
        """kthreadd (pid 2) and its children: every kernel thread."""
        return [2, *self.children(2)]

    def loadavg(self) -> list[float]:
        try:
            return [float(v) for v in (self.root / "loadavg").read_text().split()[:3]]
        except (OSError, ValueError):
            return []


@dataclasses.dataclass(frozen=True)
class Sample:
    """Cumulative counters at one instant, in jiffies."""

    t: float  # unix time
    busy: int
    interrupts: int
    steal: int
    total: int
    participants: int  # own + reaped time of every process of the run's trees, each once
    kernel: int  # kernel threads' own time


def sample(proc: Proc, roots: Iterable[int], kernel_threads: Sequence[int] = ()) -> Sample:
    """One reading. A participant's child that exits moves its time into the parent's reaped
    figure, so the sum over the trees is continuous while processes come and go."""
    participants = 0
    for pid in proc.tree(roots):
        times = proc.task(pid)
        if times is not None:
            participants += times.own + times.reaped
    kernel = 0
    for pid in kernel_threads:
        times = proc.task(pid)
        if times is not None and times.kernel_thread:
            kernel += times.own
    totals = proc.totals()
    return Sample(time.time(), totals.busy, totals.interrupts, totals.steal, totals.total, participants, kernel)


# ------------------------------------------------------------------------------ usage over a window


@dataclasses.dataclass(frozen=True)
class Usage:
    """What the machine did between two samples: % of one core, except steal (% of all CPU time)."""

    seconds: float
    others_pct: float
    participants_pct: float
    kernel_pct: float  # kernel threads and interrupts
    steal_pct: float
    top_others: tuple[tuple[str, float], ...] = ()  # the busiest other commands, % of one core

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: round(getattr(self, k), 2 if k == "seconds" else 1)
            for k in ("seconds", "others_pct", "participants_pct", "kernel_pct", "steal_pct")
        }
        out["top_others"] = {name: pct for name, pct in self.top_others}
        return out

    def who(self) -> str:
        """`` (pytest 30%, java 8%)``: the busiest others, when known."""
        if not self.top_others:
            return ""
        return " (" + ", ".join(f"{name} {pct:.0f}%" for name, pct in self.top_others) + ")"


Snapshot = dict[int, tuple[str, int]]  # pid -> (command, own jiffies): every process of the machine


def snapshot(proc: Proc) -> tuple[float, Snapshot]:
    """Every process's CPU so far (about 2 ms for a hundred processes): to name the others."""
    found: Snapshot = {}
    for pid in proc.pids():
        times = proc.task(pid)
        if times is not None and not times.kernel_thread:
            found[pid] = (times.name, times.own)
    return time.time(), found


def top_others(
    first: tuple[float, Snapshot], last: tuple[float, Snapshot], participants: set[int], count: int = 3
) -> tuple[tuple[str, float], ...]:
    """The commands outside ``participants`` that used the most CPU between two snapshots, in %
    of one core (processes that started and ended in between are not seen)."""
    seconds = max(last[0] - first[0], 1e-6)
    by_name: dict[str, int] = {}
    for pid, (name, own) in last[1].items():
        if pid in participants:
            continue
        before = first[1].get(pid)
        used = own - before[1] if before is not None and before[0] == name else own  # else: started since
        if used > 0:
            by_name[name] = by_name.get(name, 0) + used
    ranked = sorted(by_name.items(), key=lambda item: -item[1])[:count]
    named = ((name, round(100.0 * used / CLK_TCK / seconds, 1)) for name, used in ranked)
    return tuple((name, pct) for name, pct in named if pct >= 1.0)


def usage(first: Sample, last: Sample) -> Usage:
    seconds = max(last.t - first.t, 1e-6)

    def pct(jiffies: float) -> float:
        return 100.0 * jiffies / CLK_TCK / seconds

    busy = last.busy - first.busy
    participants = last.participants - first.participants
    kernel = (last.kernel - first.kernel) + (last.interrupts - first.interrupts)
    total = last.total - first.total
    # Each process's time is exact, the machine's is sampled at the tick: a quiet machine reads a
    # few jiffies either side of zero. Never below zero.
    others = max(0.0, busy - participants - kernel)
    steal = 100.0 * (last.steal - first.steal) / total if total > 0 else 0.0
    return Usage(seconds, pct(others), pct(participants), pct(max(0, kernel)), steal)


def at(samples: Sequence[Sample], when: float) -> Sample:
    """The counters at ``when``, interpolated between the samples around it."""
    before = [s for s in samples if s.t <= when] or list(samples[:1])
    after = [s for s in samples if s.t >= when] or list(samples[-1:])
    a, b = before[-1], after[0]
    share = 0.0 if b.t == a.t else (when - a.t) / (b.t - a.t)

    def mix(x: int, y: int) -> int:
        return round(x + share * (y - x))

    return Sample(
        when,
        mix(a.busy, b.busy),
        mix(a.interrupts, b.interrupts),
        mix(a.steal, b.steal),
        mix(a.total, b.total),
        mix(a.participants, b.participants),
        mix(a.kernel, b.kernel),
    )


def window(samples: Sequence[Sample], start: float, end: float) -> Usage:
    return usage(at(samples, start), at(samples, end))


class Span:
    """The machine's usage from its creation to ``end()``, naming the busiest others."""

    def __init__(self, proc: Proc, roots: Iterable[int]) -> None:
        self.proc = proc
        self.roots = list(roots)
        self.kernel_threads = proc.kernel_threads()
        self.names = snapshot(proc)
        self.first = sample(proc, self.roots, self.kernel_threads)

    def end(self) -> Usage:
        last = sample(self.proc, self.roots, self.kernel_threads)
        named = top_others(self.names, snapshot(self.proc), self.proc.tree(self.roots))
        return dataclasses.replace(usage(self.first, last), top_others=named)


def measure(proc: Proc, roots: Iterable[int], seconds: float) -> Usage:
    """Usage over the next ``seconds`` (blocks)."""
    span = Span(proc, roots)
    time.sleep(seconds)
    return span.end()


# ------------------------------------------------------------------------------ calibration

CALIBRATION_WORK = (
    "per round: 1,200,000 iterations of acc = (acc * 31 + i) % 1000003 in pure Python, then SHA-256 of "
    "600 blocks of 64 KiB; timed with time.thread_time() and time.perf_counter(); the best of the rounds"
)


def _calibration_round() -> int:
    acc = 0
    for i in range(1_200_000):
        acc = (acc * 31 + i) % 1_000_003
    digest = hashlib.sha256()
    block = bytes(range(256)) * 256
    for _ in range(600):
        digest.update(block)
    return acc ^ digest.digest()[0]


def calibrate(rounds: int = 3) -> dict[str, Any]:
    """The fixed CPU-bound work, ``rounds`` times (about 0.12 s each on the reference machine):
    the best round's CPU time (how fast this machine is) and wall time (how long it had to wait
    for a core, or was throttled, on top)."""
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.thread_time(), time.perf_counter()
        _calibration_round()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": round(min(cpu), 4), "wall_s": round(min(wall), 4), "rounds": rounds}


WAKEUP_SLEEP_S = 0.002  # as long as the consumer's poll tick and the generator's send pulse


def wakeup_cost_us(count: int = 200, sleep_s: float = WAKEUP_SLEEP_S) -> float:
    """The CPU (µs) this machine bills a thread for each time it sleeps ``sleep_s`` and wakes,
    doing nothing else (the best of two halves of ``count`` sleeps): what every process of the
    run pays per wake-up before it does any work. The CPU-bound calibration does not see it; on
    a VM that exits to its host whenever a core idles it is tens of µs."""
    halves = []
    for _ in range(2):
        c0 = time.thread_time()
        for _ in range(count // 2):
            time.sleep(sleep_s)
        halves.append((time.thread_time() - c0) / (count // 2))
    return round(1e6 * min(halves), 1)


def wakeup_floor_us(wakeups_per_message: dict[str, float], wakeup_us: float | None) -> float | None:
    """What a row's wake-ups alone cost per message (every role's wake-ups at ``wakeup_us``
    each): the part of its CPU per message that no code change but fewer wake-ups can remove."""
    if wakeup_us is None or not wakeups_per_message:
        return None
    return round(sum(wakeups_per_message.values()) * wakeup_us, 1)


def load_reference(path: Path = REFERENCE) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded


def slowdown(calibration: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """How many times slower than the reference this machine ran the calibration (CPU time)."""
    ref = reference.get("calibration", {}).get("cpu_s")
    if not ref or not calibration.get("cpu_s"):
        return None
    return round(float(calibration["cpu_s"]) / float(ref), 2)


# ------------------------------------------------------------------------------ the verdict


def reasons(
    limits: Limits,
    *,
    before: Usage | None = None,
    during: Usage | None = None,
    calibration: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    generator_us: float | None = None,
    compiling: dict[str, float] | None = None,
    when: tuple[str, str] = ("before the row", "during the row"),
) -> list[str]:
    """Why a row cannot be trusted; empty when it can."""
    found = []
    for label, seen in zip(when, (before, during), strict=True):
        if seen is None:
            continue
        others, steal = round(seen.others_pct, 1), round(seen.steal_pct, 1)  # as the table shows them
        if others > limits.others_pct:
            found.append(f"others {others:.0f}% of a core {label}{seen.who()}")
        if steal > limits.steal_pct:
            found.append(f"steal {steal:.1f}% {label}")
    if calibration is not None:
        ratio = slowdown(calibration, reference or {})
        if ratio is not None and ratio > limits.slowdown:
            found.append(f"calibration {ratio:.2f}x slower than the reference")
        if calibration.get("cpu_s") and calibration["wall_s"] / calibration["cpu_s"] > limits.slowdown:
            found.append(
                f"calibration took {calibration['wall_s'] / calibration['cpu_s']:.1f}x its CPU time "
                "(waiting for a core, or throttled)"
            )
    if generator_us is not None and generator_us > limits.generator_us:
        found.append(f"generator {generator_us:.0f} µs/msg > {limits.generator_us:g}: it limits the measurement")
    for role, pct in (compiling or {}).items():
        if round(pct, 1) > limits.compiling_pct:
            found.append(f"{role} still compiling: its JIT took {pct:.0f}% of a core {when[1]}")
    return found


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median and range of one figure over repeated rows (None where a row had no value)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": round(statistics.median(present), 2), "min": min(present), "max": max(present)}
