"""The command line of ``scripts/loadtest.py``: its options, their checks, and the tool's limits."""

from __future__ import annotations

import argparse

DEFAULT_URL = "http://127.0.0.1:8080"
GRACE_S = 2.0  # after the last send: time for acks and deliveries still on their way
MAX_TEXT = 4000  # the protocol's limit on a text
MAX_RAMP_STEPS = 20
RAMP_MAX_LAG_MS = 100.0  # a ramp step whose sends were this late measured the generator, not the server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/loadtest.py",
        description=(
            "Load generator for the chat server: opens --users WebSocket connections, sends "
            "--rate messages/s in total (paced evenly, not in bursts) for --duration seconds after "
            "--warmup, and reports sent, acked, delivered, lost, duplicates, end-to-end latency "
            "(sender's clock to receiver's clock, one machine) and connect rate. A live progress line "
            "goes to stderr, the final table to stdout (or one JSON object with --json)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
scenarios:
  private  users/2 pairs; sender i on url[i % n], its receiver on url[(i+1) % n], so with
           several URLs every message crosses servers
  public   every user sends; every message should reach every connected user (fan-out)
  room     every user joins one room and sends to it (exits 2 while the server lacks rooms)
  idle     connect --users and hold them for --warmup + --duration; reports connect rate and
           how many still answer a ping at the end

examples:
  # 100 users (50 pairs) across both servers, 1000 msg/s for 10 s, 2 load processes
  python scripts/loadtest.py --url http://127.0.0.1:8081 --url http://127.0.0.1:8082 \\
      --users 100 --rate 1000 --duration 10 --procs 2

  # find the highest public rate with no loss and p99 <= 100 ms, through nginx, msgpack frames
  python scripts/loadtest.py --scenario public --users 20 --rate 50 --ramp --p99-bound-ms 100 --msgpack

exit status: 0 clean run (with --ramp: a good rate was found); 1 loss, duplicates, errors,
connect failures, or the cluster cannot be reached; 2 bad arguments or unsupported scenario.
Users are named <prefix>-s<i>/-r<i>/-u<i>/-i<i>; each run has a new random prefix unless --prefix
is given (each user name keeps its history in Redis: reuse a prefix to not grow Redis).""",
    )
    add = parser.add_argument
    add("--url", action="append", help=f"chat server or nginx base URL; repeat for several (default {DEFAULT_URL})")
    add("--secret", help="mint HS256 tokens locally with this CHAT_SECRET instead of POST /api/login (default: log in)")
    add("--scenario", choices=["private", "public", "room", "idle"], default="private", help="(default private)")
    add("--users", type=int, default=20, help="connections; private: users/2 pairs (default 20)")
    add("--rate", type=float, default=100.0, help="messages/s in total over all senders (default 100)")
    add("--duration", type=float, default=10.0, help="seconds of measured traffic (default 10)")
    add("--warmup", type=float, default=1.0, help="seconds of traffic before measuring, not counted (default 1)")
    add("--text-bytes", type=int, default=64, help="characters per text, at least the ~45 of the header (default 64)")
    add("--msgpack", action="store_true", help="use the msgpack subprotocol (binary frames) (default: JSON text)")
    add("--procs", type=int, default=1, help="worker processes sharing users and rate (default 1)")
    add(
        "--ramp",
        action="store_true",
        help="raise the rate x--ramp-factor per step of --duration s until loss>0, errors, p99 > --p99-bound-ms, "
        "or send lag p99 > 100 ms (the generator is the limit); report the last good rate (default off)",
    )
    add("--ramp-factor", type=float, default=1.5, help="rate multiplier per ramp step (default 1.5)")
    add("--p99-bound-ms", type=float, default=50.0, help="latency bound of a good ramp step (default 50)")
    add("--grace", type=float, default=GRACE_S, help=f"seconds to wait for late acks/deliveries (default {GRACE_S:g})")
    add("--connect-concurrency", type=int, default=50, help="handshakes in flight per process (default 50)")
    add("--prefix", help="user name prefix (default lt-<random>)")
    add("--json", action="store_true", help="print one JSON object with all results to stdout, nothing else")
    add("--plot", metavar="FILE.png", help="save latency and rates over time (needs matplotlib) (default off)")
    add("--quiet", action="store_true", help="no progress line and no table on stderr (default off)")
    args = parser.parse_args(argv)
    args.url = [u.rstrip("/") for u in (args.url or [DEFAULT_URL])]
    problems = []
    for url in args.url:
        if not url.startswith(("http://", "https://")):
            problems.append(f"--url {url!r} must start with http:// or https://")
    minimum_users = 2 if args.scenario == "private" else 1
    if args.users < minimum_users:
        problems.append(f"--users must be at least {minimum_users} for {args.scenario}")
    if args.rate <= 0 and args.scenario != "idle":
        problems.append("--rate must be > 0")
    if args.duration <= 0 or args.warmup < 0 or args.grace < 0:
        problems.append("--duration must be > 0, --warmup and --grace >= 0")
    if not 1 <= args.text_bytes <= MAX_TEXT:
        problems.append(f"--text-bytes must be 1..{MAX_TEXT} (the protocol's limit)")
    if args.procs < 1:
        problems.append("--procs must be >= 1")
    if args.ramp and args.ramp_factor <= 1:
        problems.append("--ramp-factor must be > 1")
    if args.connect_concurrency < 1:
        problems.append("--connect-concurrency must be >= 1")
    if args.prefix is not None and not _valid_prefix(args.prefix):
        problems.append("--prefix: 1-20 of A-Z a-z 0-9 _ . -")
    if problems:
        parser.error("; ".join(problems))
    if args.secret is not None and not args.secret:
        parser.error("--secret is empty")
    return args


def _valid_prefix(prefix: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    return 1 <= len(prefix) <= 20 and set(prefix) <= allowed
