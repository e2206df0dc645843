"""What the load tool counts: latency samples, and which message reached whom (loss, duplicates).

A worker keeps, per step, a ``StepStats`` filled by its ``Tally`` as frames arrive: the
latencies of the measured window, and per sender a 0/1 byte map of the sequence numbers acked
and, per receiver, of those delivered. The parent merges the workers' maps (``merge_step``):
lost = acked by the server but never delivered to a receiver that should have it. Pure code, no
I/O: the unit tests drive it with hand-made frames.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .options import RAMP_MAX_LAG_MS

LAT_SAMPLE_CAP = 4000  # latency samples per progress tick (a reservoir beyond that)


def percentiles(
    values: Sequence[float], points: Iterable[int] = (50, 95, 99), digits: int = 3
) -> dict[str, float | None]:
    """p50/p95/p99 (or ``points``), max and mean of ``values`` (nearest rank), None when there
    are none."""
    points = tuple(points)
    if not values:
        return {**{f"p{q}": None for q in points}, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        **{f"p{q}": round(rank(q / 100), digits) for q in points},
        "max": round(ordered[-1], digits),
        "mean": round(sum(ordered) / len(ordered), digits),
    }


def ones(bits: bytes) -> int:
    """How many bytes of a 0/1 byte map are 1."""
    return int.from_bytes(bits, "little").bit_count()


def both(a: bytes, b: bytes) -> int:
    """How many positions are 1 in both 0/1 byte maps."""
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).bit_count()


def mark(bits: bytearray, index: int) -> bool:
    """Set position ``index``; True when it was already set."""
    if index >= len(bits):
        bits.extend(bytes(index - len(bits) + 1024))
    if bits[index]:
        return True
    bits[index] = 1
    return False


class StepStats:
    """What one worker saw during one step (warmup, measured window, grace)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = 0
        self.sent_warmup = 0
        self.acked = 0
        self.delivered = 0
        self.delivered_warmup = 0
        self.duplicates = 0
        self.misrouted = 0
        self.late = 0
        self.errors: Counter[str] = Counter()
        self.latency = array("d")
        self.ack_latency = array("d")
        self.lag = array("d")
        self.acked_bits: dict[int, bytearray] = {}
        self.delivered_bits: dict[int, dict[int, bytearray]] = {}
        self.receivers: list[int] = []
        self.pongs = 0
        self.ping_ms = array("d")
        self.last_delivery = 0.0  # perf_counter of the last measured delivery
        self.quiet_s = 0.0  # from it to the end of the step: small means deliveries were still coming

    def result(self, cpu: float) -> dict[str, Any]:
        """The step as the worker reports it to the parent (``merge_step`` reads it)."""
        return {
            "type": "step",
            "step": self.step,
            "sent": self.sent,
            "sent_warmup": self.sent_warmup,
            "acked": self.acked,
            "delivered": self.delivered,
            "delivered_warmup": self.delivered_warmup,
            "duplicates": self.duplicates,
            "misrouted": self.misrouted,
            "late": self.late,
            "errors": dict(self.errors),
            "latency": self.latency.tobytes(),
            "ack_latency": self.ack_latency.tobytes(),
            "lag": self.lag.tobytes(),
            "acked_bits": {g: bytes(b) for g, b in self.acked_bits.items()},
            "delivered_bits": {r: {g: bytes(b) for g, b in d.items()} for r, d in self.delivered_bits.items()},
            "receivers": self.receivers,
            "pongs": self.pongs,
            "quiet_s": self.quiet_s,
            "ping_ms": self.ping_ms.tobytes(),
            "cpu": cpu,
        }


class Endpoint(Protocol):
    """A user as the tally sees it: sender ``gid`` (>= 0) awaiting acks of ``pending`` sends,
    receiver ``rid`` (>= 0)."""

    gid: int
    rid: int
    pending: dict[int, tuple[int, bool]]  # seq -> (send time ns, measured)


class Tally:
    """Counts what arrives at one worker: into the current step's ``stats``, the progress
    counters of every phase (``c_*``), and the latency reservoir of the current progress tick."""

    def __init__(self, private: bool) -> None:
        self.private = private  # a delivery must reach the receiver paired with its sender
        self.stats = StepStats(-1)
        self.c_sent = self.c_acked = self.c_delivered = self.c_errors = 0
        self.tick_lat: list[float] = []
        self.tick_seen = 0

    def error(self, code: str) -> None:
        self.stats.errors[code] += 1
        self.c_errors += 1

    def delivery(self, rid: int, gid: int, step: int, seq: int, measured: bool, latency_ms: float) -> None:
        """Message ``seq`` of sender ``gid`` in ``step`` reached receiver ``rid``."""
        self.c_delivered += 1
        self.sample(latency_ms)
        stats = self.stats
        if step != stats.step:
            stats.late += 1
            return
        if self.private and gid != rid:
            stats.misrouted += 1
            return
        per_sender = stats.delivered_bits.get(rid)
        if per_sender is None:
            per_sender = stats.delivered_bits[rid] = {}
        bits = per_sender.get(gid)
        if bits is None:
            bits = per_sender[gid] = bytearray(1024)
        if mark(bits, seq):
            stats.duplicates += 1
            return
        if measured:
            stats.delivered += 1
            stats.latency.append(latency_ms)
            stats.last_delivery = time.perf_counter()
        else:
            stats.delivered_warmup += 1

    def ack(self, conn: Endpoint, cid: Any, now_ns: int) -> None:
        step, seq = parse_cid(cid)
        self.acked(conn, step, seq, now_ns)

    def acked(self, conn: Endpoint, step: int, seq: int, now_ns: int) -> None:
        """The server acked ``conn``'s message ``seq`` of ``step`` at ``now_ns``."""
        if step != self.stats.step:
            return
        entry = conn.pending.pop(seq, None)
        if entry is None:
            return
        t_ns, measured = entry
        self.c_acked += 1
        if measured:
            stats = self.stats
            stats.acked += 1
            stats.ack_latency.append((now_ns - t_ns) / 1e6)
            bits = stats.acked_bits.get(conn.gid)
            if bits is None:
                bits = stats.acked_bits[conn.gid] = bytearray(1024)
            mark(bits, seq)

    def refused(self, conn: Endpoint, code: str, cid: Any) -> None:
        """An error frame: counted by its code; the send it answers is no longer awaited."""
        self.error(code)
        step, seq = parse_cid(cid)
        if step == self.stats.step:
            conn.pending.pop(seq, None)

    def sample(self, latency_ms: float) -> None:
        self.tick_seen += 1
        if len(self.tick_lat) < LAT_SAMPLE_CAP:
            self.tick_lat.append(latency_ms)
        else:
            j = random.randrange(self.tick_seen)
            if j < LAT_SAMPLE_CAP:
                self.tick_lat[j] = latency_ms

    def take_samples(self) -> list[float]:
        """The current tick's latency samples; a new tick begins."""
        lat, self.tick_lat, self.tick_seen = self.tick_lat, [], 0
        return lat


def parse_cid(cid: Any) -> tuple[int, int]:
    """``"<step>.<seq>"`` -> (step, seq); (-1, -1) for anything else."""
    if not isinstance(cid, str) or "." not in cid:
        return -1, -1
    step, _, seq = cid.partition(".")
    try:
        return int(step), int(seq)
    except ValueError:
        return -1, -1


# ------------------------------------------------------------------------------ merging workers' parts


def merge_connect(parts: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(p["ok"] for p in parts)
    failed = sum(p["failed"] for p in parts)
    seconds = max(p["connect_seconds"] for p in parts)
    errors = [e for p in parts for e in p["errors"]]
    return {
        "ok": ok,
        "failed": failed,
        "first_error": errors[0] if errors else None,
        "seconds": round(seconds, 3),
        "rate_per_s": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "login_seconds": round(max(p["login_seconds"] for p in parts), 3),
        "handshake_ms": percentiles([x for p in parts for x in p["connect_ms"]]),
        "senders": sum(p["senders"] for p in parts),
        "receivers": sum(p["receivers"] for p in parts),
    }


def lost_messages(scenario: str, parts: list[dict[str, Any]]) -> tuple[int, int]:
    """(expected deliveries, lost): every acked message should reach its receiver (private) or
    every receiver (public, room)."""
    acked_bits: dict[int, bytes] = {}
    delivered_bits: dict[int, dict[int, bytes]] = {}
    receivers: list[int] = []
    for p in parts:
        acked_bits.update(p["acked_bits"])
        delivered_bits.update(p["delivered_bits"])
        receivers.extend(p["receivers"])
    acked = sum(p["acked"] for p in parts)
    lost = 0
    if scenario == "private":
        expected = acked
        for gid, bits in acked_bits.items():
            lost += ones(bits) - both(bits, delivered_bits.get(gid, {}).get(gid, b""))
    else:
        expected = acked * len(receivers)
        for rid in receivers:
            got = delivered_bits.get(rid, {})
            for gid, bits in acked_bits.items():
                lost += ones(bits) - both(bits, got.get(gid, b""))
    return expected, lost


def merge_idle(step: int, parts: list[dict[str, Any]], connect: dict[str, Any], held_s: float) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    still = sum(p["pongs"] for p in parts)
    ping = [x for p in parts for x in array("d", p["ping_ms"])]
    return {
        "step": step,
        "connections": connect["ok"],
        "still_connected": still,
        "dropped": connect["ok"] - still,
        "held_seconds": held_s,
        "ping_all_ms": round(max(ping), 3) if ping else None,
        "errors": dict(errors),
        "cpu_seconds": round(sum(p["cpu"] for p in parts), 3),
        "good": still == connect["ok"] and not errors,
    }


def merge_step(step: int, rate: float, parts: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    """One step of traffic from every worker's part, with its verdict (``good``, ``problems``)."""
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])

    def numbers(key: str) -> list[float]:
        out = array("d")
        for p in parts:
            out.frombytes(p[key])
        return out.tolist()

    expected, lost = lost_messages(args.scenario, parts)
    sent = sum(p["sent"] for p in parts)
    delivered = sum(p["delivered"] for p in parts)
    duplicates = sum(p["duplicates"] for p in parts)
    misrouted = sum(p["misrouted"] for p in parts)
    latency = percentiles(numbers("latency"))
    lag = percentiles(numbers("lag"))
    cpu = sum(p["cpu"] for p in parts)
    window = args.warmup + args.duration + args.grace
    result: dict[str, Any] = {
        "step": step,
        "target_rate": rate,
        "sent": sent,
        "acked": sum(p["acked"] for p in parts),
        "delivered": delivered,
        "expected_deliveries": expected,
        "lost": lost,
        "duplicates": duplicates,
        "misrouted": misrouted,
        "late": sum(p["late"] for p in parts),
        "still_arriving": lost > 0 and min(p["quiet_s"] for p in parts) < 0.5,
        "send_rate": round(sent / args.duration, 1),
        "achieved_rate": round(delivered / args.duration, 1),
        "latency_ms": latency,
        "ack_latency_ms": percentiles(numbers("ack_latency")),
        "send_lag_ms": {"p99": lag["p99"], "max": lag["max"]},
        "errors": dict(errors),
        "generator_cpu_seconds": round(cpu, 3),
        "generator_cpu_percent": round(100 * cpu / window, 1),
    }
    reasons = []
    if lost:
        reasons.append(f"lost {lost}")
    if duplicates or misrouted:
        reasons.append(f"duplicates {duplicates}, misrouted {misrouted}")
    if errors:
        reasons.append("errors " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    if args.ramp and latency["p99"] is not None and latency["p99"] > args.p99_bound_ms:
        reasons.append(f"p99 {latency['p99']:.1f} ms > {args.p99_bound_ms:g} ms")
    # Late sends still go out (the schedule catches up), so lag, not the count, shows a generator
    # that cannot keep the pace; in a ramp that must not be blamed on the server.
    if args.ramp and (lag["p99"] or 0) > RAMP_MAX_LAG_MS:
        reasons.append(
            f"the load generator fell behind its schedule (send lag p99 {lag['p99']:.0f} ms): "
            "it, not the server, may be the limit: try --procs or another machine"
        )
    result["good"] = not reasons
    result["problems"] = reasons
    return result
