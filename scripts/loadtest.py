#!/usr/bin/env python3
"""Load generator for the chat server: many WebSocket users, a paced message rate, end-to-end
latency, loss and duplicates, measured from the outside over the public protocol.

Run from the repository root: ``python scripts/loadtest.py --help``.

How it measures:
- Every sent text starts with ``lt:<run>:<sender>:<step>:<seq>:<phase>:<time_ns>:`` (padded to
  --text-bytes). The receiver subtracts the embedded ``time.time_ns()`` from its own: all worker
  processes run on this machine, so both ends read the same clock.
- A message counts when it was sent in the measured window (after --warmup, before --duration
  ended). ``acked``: the server sent the ``ack`` (cid ``<step>.<seq>``). ``lost``: acked but never
  delivered to a receiver that should have it by the end of the run plus a grace period.
  ``duplicates``: the same (sender, seq) delivered twice to one receiver.
- Sends follow an absolute schedule (``time.perf_counter``): message k of a worker is due at
  ``start + (k + offset) / rate``, so the pace neither bursts nor drifts; if the generator falls
  behind it catches up and reports how late its sends were (``send_lag_ms``).
- With --procs N, N worker processes each hold a share of the users (a private pair stays in one
  process) and of the rate; the parent merges their results.

Exit status: 0 when the run completed cleanly (no connect failure, no loss, no duplicate, no
error frame, every send acked; with --ramp: a good rate was found), 1 otherwise or when the
cluster cannot be reached, 2 for bad arguments or a scenario the server does not support.

The tool is the package ``scripts/loadlib`` (one job per module: ``client``, ``scenarios``,
``stats``, ``report``, ...); this file is its command line.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from typing import Any

from loadlib.cluster import Fatal
from loadlib.options import parse_args
from loadlib.parent import Run
from loadlib.report import plot, table
from loadlib.worker import raise_fd_limit


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("pip install matplotlib to use --plot", file=sys.stderr)
            return 2
    raise_fd_limit()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    run = Run(args)
    try:
        report, status = run.execute()
    except Fatal as exc:
        run.progress.done()
        print(f"loadtest: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.status}))
        return exc.status
    except KeyboardInterrupt:
        run.progress.done()
        print("loadtest: interrupted", file=sys.stderr)
        run.kill_workers()
        return 130
    except Exception as exc:  # a bug here: still one line of JSON for machines, and the traceback
        run.progress.done()
        traceback.print_exc()
        if args.json:
            print(json.dumps({"ok": False, "error": f"internal error: {exc!r}", "exit_code": 1}))
        return 1
    if args.plot:
        plot(report, args.plot)
        if not args.quiet:
            print(f"plot saved to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        if not args.quiet:
            print(table(report), file=sys.stderr)
    else:
        print(table(report))
    return status


if __name__ == "__main__":
    sys.exit(main())
