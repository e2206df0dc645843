"""What the load tool shows: the live line on stderr, the report (one JSON object), the table, the
plot, and the hints that say what the figures suggest."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, deque
from typing import Any

from .stats import percentiles


class Progress:
    """The live line on stderr (one updating line on a terminal, a line per second otherwise)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.window: deque[dict[str, Any]] = deque()
        self.last_print = 0.0
        self.conns: dict[int, int] = {}
        self.width = 0

    def add(self, tick: dict[str, Any]) -> None:
        self.window.append(tick)
        self.conns[tick["w"]] = tick["conns"]

    def show(self, label: str, force: bool = False) -> None:
        now = time.time()
        while self.window and self.window[0]["t"] < now - 1.0:
            self.window.popleft()
        if not self.enabled or (not force and now - self.last_print < 1.0):
            return
        self.last_print = now
        sent = sum(t["sent"] for t in self.window)
        delivered = sum(t["delivered"] for t in self.window)
        errors = sum(t["errors"] for t in self.window)
        lat = percentiles([x for t in self.window for x in t["lat"]])
        p50 = "-" if lat["p50"] is None else f"{lat['p50']:.1f}"
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
        line = (
            f"{label} | send {sent}/s | delivered {delivered}/s | p50 {p50} ms p99 {p99} ms | "
            f"errors {errors} | conns {sum(self.conns.values())}"
        )
        if self.tty:
            pad = max(0, self.width - len(line))
            self.width = len(line)
            print("\r" + line + " " * pad, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty and self.width:
            print(file=sys.stderr, flush=True)
            self.width = 0

    def note(self, message: str) -> None:
        if self.enabled:
            self.done()
            print(message, file=sys.stderr, flush=True)


def build(
    args: argparse.Namespace,
    prefix: str,
    connect: dict[str, Any],
    steps: list[dict[str, Any]],
    timeline: dict[int, dict[str, Any]],
    generator: tuple[float, float, int],
) -> dict[str, Any]:
    """The run's report: its settings, the last step's figures (with --ramp, every step's), the
    generator's own CPU (``generator``: CPU seconds, wall seconds, processes), a per-second
    timeline, the verdict and hints."""
    cpu, elapsed, procs = generator
    last = steps[-1]
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "urls": args.url,
        "users": args.users,
        "pairs": args.users // 2 if args.scenario == "private" else None,
        "rate": args.rate,
        "duration": args.duration,
        "warmup": args.warmup,
        "grace": args.grace,
        "text_bytes": args.text_bytes,
        "codec": "msgpack" if args.msgpack else "json",
        "procs": procs,
        "prefix": prefix,
        "connect": connect,
    }
    report.update({k: v for k, v in last.items() if k not in ("step", "good", "problems")})
    if args.ramp:
        good = [s for s in steps if s["good"]]
        report["ramp"] = {
            "factor": args.ramp_factor,
            "p99_bound_ms": args.p99_bound_ms,
            "last_good_rate": good[-1]["target_rate"] if good else None,
            "last_good_step": good[-1] if good else None,
            "stopped_because": "; ".join(last["problems"]) if not last["good"] else "reached the step limit",
            "steps": steps,
        }
    report["generator"] = {
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(elapsed, 3),
        "cpu_percent_of_one_core": round(100 * cpu / elapsed, 1) if elapsed else None,
    }
    report["timeline"] = [
        {
            "t": second,
            "send_rate": slot["sent"],
            "delivered_rate": slot["delivered"],
            "errors": slot["errors"],
            **{k: v for k, v in percentiles(slot["lat"]).items() if k in ("p50", "p99")},
        }
        for second, slot in sorted(timeline.items())
        if second >= 0
    ]
    if args.ramp:
        ok = report["ramp"]["last_good_rate"] is not None and connect["failed"] == 0
    else:
        ok = last["good"] and connect["failed"] == 0
    report["ok"] = ok
    report["exit_code"] = 0 if ok else 1
    report["hints"] = hints(args, report, steps)
    return report


def hints(args: argparse.Namespace, report: dict[str, Any], steps: list[dict[str, Any]]) -> list[str]:
    """What the figures suggest to look at, for the table and the JSON."""
    found = []
    errors: Counter[str] = Counter()
    for s in steps:
        errors.update(s["errors"])
    if errors["rate_limited"]:
        senders = max(1, report["connect"]["senders"])
        found.append(
            f"the server rate-limited sends ({errors['rate_limited']}): each sender sent up to "
            f"{max(s.get('target_rate', 0) for s in steps) / senders:.0f} msg/s; spread the rate over more "
            "--users, or raise the per-connection and per-user limits of the cluster under test"
        )
    first_error = report["connect"]["first_error"] or ""
    if any(f"HTTP {code}" in first_error for code in (429, 503)):
        found.append("connections were refused by a server limit or a server not ready: see first connect error")
    busy = report["generator"]["cpu_percent_of_one_core"] or 0
    if busy > 70 * report["procs"]:
        found.append(
            f"the load generator was busy ({busy:.0f}% of one core over {report['procs']} process(es)): "
            "its own queueing is part of the latency; use --procs or another machine"
        )
    if any(s.get("still_arriving") for s in steps):
        p99 = max(s["latency_ms"]["p99"] or 0 for s in steps)
        found.append(
            "deliveries were still arriving when the grace period ended: some 'lost' may only be late "
            f"(latency p99 {p99:.0f} ms); rerun with a --grace above that to tell loss from lateness"
        )
    lag = max((s["send_lag_ms"]["p99"] or 0) for s in steps if "send_lag_ms" in s) if "sent" in report else 0
    if lag > 50:
        found.append(
            f"the generator fell behind its own schedule (send lag p99 {lag:.0f} ms): this machine is short "
            "of CPU, so latency figures include waiting for it"
        )
    if any(s.get("late") for s in steps):
        found.append("some deliveries arrived after their step had ended (counted as lost)")
    if args.scenario == "public" and args.users * args.rate > 20000:
        found.append("public fan-out multiplies: users x rate deliveries per second must reach this machine")
    return found


def step_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
    verdict = "ok" if r["good"] else "; ".join(r["problems"])
    return (
        f"step {r['step'] + 1}: {r['target_rate']:g}/s  sent {r['sent']}  delivered {r['delivered']}  "
        f"lost {r['lost']}  p99 {p99} ms  -> {verdict}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(report: dict[str, Any]) -> str:
    c = report["connect"]
    lines = []
    urls = ", ".join(report["urls"])
    who = f"{report['users']} users" + (f" ({report['pairs']} pairs)" if report["pairs"] else "")
    lines.append(f"{report['scenario']} · {who} · {urls} · {report['codec']} · {report['procs']} process(es)")
    row = "  {:<22}{}"
    if report["scenario"] == "idle":
        lines.append(f"held {report['held_seconds']:g} s")
        lines.append(row.format("connections", c["ok"]))
        lines.append(row.format("still connected", report["still_connected"]))
        lines.append(row.format("dropped", report["dropped"]))
        lines.append(row.format("ping to all (ms)", _ms(report["ping_all_ms"])))
    else:
        warm = f" (+{report['warmup']:g} s warmup)" if report["warmup"] else ""
        lines.append(f"target {report['target_rate']:g} msg/s for {report['duration']:g} s{warm}")
        lines.append(row.format("sent", f"{report['sent']:<10} ({report['send_rate']:.1f}/s)"))
        lines.append(row.format("acked", report["acked"]))
        fan = f", expected {report['expected_deliveries']}" if report["scenario"] != "private" else ""
        lines.append(row.format("delivered", f"{report['delivered']:<10} ({report['achieved_rate']:.1f}/s{fan})"))
        lines.append(row.format("lost", report["lost"]))
        lines.append(row.format("duplicates", report["duplicates"]))
        for key, name in (("latency_ms", "latency (ms)"), ("ack_latency_ms", "ack latency (ms)")):
            lat = report[key]
            lines.append(
                row.format(
                    name,
                    f"p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}",
                )
            )
        lag = report["send_lag_ms"]
        lines.append(row.format("send lag (ms)", f"p99 {_ms(lag['p99'])}  max {_ms(lag['max'])}"))
    lines.append(
        row.format(
            "connect",
            f"{c['ok']} ok, {c['failed']} failed, {c['rate_per_s']:.0f} conn/s "
            f"(handshake p50 {_ms(c['handshake_ms']['p50'])} ms, p99 {_ms(c['handshake_ms']['p99'])} ms; "
            f"logins {c['login_seconds']:.1f} s)",
        )
    )
    if c["first_error"]:
        lines.append(row.format("first connect error", c["first_error"]))
    errors = report["errors"]
    lines.append(row.format("errors", ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    g = report["generator"]
    lines.append(
        row.format(
            "generator CPU",
            f"{g['cpu_seconds']:.2f} s in {g['wall_seconds']:.1f} s ({g['cpu_percent_of_one_core']:.0f}% of one core)",
        )
    )
    if "ramp" in report:
        ramp = report["ramp"]
        lines.append("")
        head = ("step", "rate/s", "sent", "delivered", "lost", "p50", "p99")
        lines.append("  {:>4} {:>9} {:>8} {:>10} {:>6} {:>7} {:>7}  result".format(*head))
        for s in ramp["steps"]:
            lat = s["latency_ms"]
            lines.append(
                f"  {s['step'] + 1:>4} {s['target_rate']:>9g} {s['sent']:>8} {s['delivered']:>10} {s['lost']:>6} "
                f"{_ms(lat['p50']):>7} {_ms(lat['p99']):>7}  {'ok' if s['good'] else '; '.join(s['problems'])}"
            )
        best = ramp["last_good_rate"]
        lines.append(
            f"  last good rate: {best:g} msg/s (loss 0, p99 <= {ramp['p99_bound_ms']:g} ms)"
            if best is not None
            else f"  no good rate: already the first step failed ({ramp['stopped_because']})"
        )
    lines.extend(f"  hint: {hint}" for hint in report["hints"])
    lines.append("result: " + ("ok" if report["ok"] else "PROBLEMS (exit 1)"))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["timeline"]
    t = [p["t"] for p in points]
    figure, (rates, latency) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    rates.plot(t, [p["send_rate"] for p in points], label="sent/s")
    rates.plot(t, [p["delivered_rate"] for p in points], label="delivered/s")
    rates.set_ylabel("messages/s")
    rates.legend()
    latency.plot(t, [p["p50"] for p in points], label="p50")
    latency.plot(t, [p["p99"] for p in points], label="p99")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds since the first step started")
    latency.legend()
    figure.suptitle(f"chat load test: {report['scenario']}, {report['users']} users")
    figure.tight_layout()
    figure.savefig(path)


def measured(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a report that a benchmark row bills CPU against: those of its last good
    step for a ramp that found one, else of the run (its last step)."""
    figures = report
    if "ramp" in report and report["ramp"]["last_good_step"] is not None:
        figures = report["ramp"]["last_good_step"]
    keys = ("target_rate", "sent", "acked", "delivered", "lost", "latency_ms", "achieved_rate", "window_unix")
    return {k: figures[k] for k in keys}
