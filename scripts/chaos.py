#!/usr/bin/env python3
"""Chaos run against a running cluster, and a checker over what every client saw.

A bounded, seeded run in the spirit of Jepsen's set and queue workloads: logical clients (several
per user) send public, private and room messages, drop their connections at random moments and
reconnect to a random chat server or through nginx with ``resume``, while faults run one at a time
(kill -9 of a chat server, SIGSTOP of Kafka, a Redis restart, scaling up and down). Every client
records what it sent and saw (JSONL under --out); at the end each one reconnects and resumes once
more, and the checker (scripts/chaoslib/checker.py) holds the records against the protocol.

    # a cluster of your own (never the shared test Redis and Kafka), then a 60 s run
    CHAT_RUN_DIR=.run/chaos REDIS_PORT=6391 KAFKA_PORT=9192 NGINX_PORT=8190 CHAT_PORT_BASE=8190 ./scripts/up.sh 2
    .venv/bin/python scripts/chaos.py --run-dir .run/chaos --seed 7 --duration 60 --out /tmp/chaos-7
    # check a saved run again
    .venv/bin/python scripts/chaos.py check --out /tmp/chaos-7

Exit status: 0 no violation, 1 violations (or nothing acked), 2 bad arguments or unusable cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from chaoslib import checker
from chaoslib.faults import EXTRA_KINDS, KINDS, Cluster, ClusterError, Faults
from chaoslib.workload import Client, Options, Recorder, Targets, http_login, join_rooms

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 3.0  # after a fault, this long still counts against it (and the next waits longer)
DRAIN_S = 25.0  # at most this long for the last acks after the workload stops
FINAL_S = 25.0  # at most this long for the final resume of every client


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="chaos.py check", description="Check a saved run again.")
        parser.add_argument("--out", required=True, type=Path, help="the folder a run wrote")
        parser.add_argument("--show", type=int, default=10, help="violations listed (default 10)")
        args = parser.parse_args(argv[1:])
        args.command = "check"
        return args
    parser = argparse.ArgumentParser(
        prog="chaos.py",
        description=str(__doc__).split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 no violation, 1 violations (or nothing acked), 2 bad arguments or unusable cluster.",
    )
    add = parser.add_argument
    add("--run-dir", type=Path, default=Path(os.environ.get("CHAT_RUN_DIR", ROOT / ".run")),
        help="the cluster's run folder, with pids/ (default $CHAT_RUN_DIR or .run): servers, ports and the "
        "processes that faults signal are found there")  # fmt: skip
    add("--url", help="nginx's URL (default: found in the run folder; 'none': connect to servers only)")
    add("--servers", help="comma list of chat server URLs (default: those running, from the run folder)")
    add("--seed", type=int, default=None, help="seed of every random choice (default: random, printed)")
    add("--duration", type=float, default=60.0, help="seconds of traffic and faults (default 60)")
    add("--clients", type=int, default=12, help="logical clients (default 12)")
    add("--users", type=int, default=6, help="usernames shared by the clients (default 6: 2 clients each)")
    add("--rooms", type=int, default=2, help="rooms the users join before the run (default 2)")
    add("--rate", type=float, default=20.0, help="messages per second, all clients together (default 20)")
    add("--faults", default=",".join(KINDS),
        help=f"comma list of {', '.join(KINDS)} (default: all of them), or none; also {', '.join(EXTRA_KINDS)} "
        "(kill -9 of Redis: the checker holds it to the same rules, since a crash of the process loses nothing "
        "acked; docs/RELIABILITY.md, A crash of Redis itself)")  # fmt: skip
    add("--session-mean", type=float, default=6.0, help="mean seconds between a client's own disconnects (6)")
    add("--nginx-share", type=float, default=0.5, help="share of connections through nginx (default 0.5)")
    add("--late-resume-share", type=float, default=0.1,
        help="share of sessions that send their resume --late-resume-s after the welcome, when the server "
        "no longer waits for it and has sent live messages first (default 0.1)")  # fmt: skip
    add("--late-resume-s", type=float, default=1.5,
        help="how late those resume: more than the servers' CHAT_RESUME_WAIT_MS (default 1.5)")  # fmt: skip
    add("--out", type=Path, default=None, help="folder for the records and the report (default test-output/chaos-*)")
    add("--show", type=int, default=10, help="violations listed (default 10)")
    args = parser.parse_args(argv[1:] if argv[:1] == ["run"] else argv)
    args.command = "run"
    kinds = [] if args.faults.strip() in ("", "none") else [k.strip() for k in args.faults.split(",")]
    unknown = [k for k in kinds if k not in KINDS + EXTRA_KINDS]
    if unknown:
        known = ", ".join(KINDS + EXTRA_KINDS)
        parser.error(f"--faults: unknown kind(s) {', '.join(unknown)}; choose from {known}, or none")
    args.kinds = kinds
    if not 1 <= args.users <= args.clients:
        parser.error("--users must be between 1 and --clients")
    if args.users < 2:
        parser.error("--users must be at least 2 (private messages go to another user)")
    if args.duration <= 0 or args.duration > 3600 or args.rate <= 0 or args.clients > 500:
        parser.error("--duration must be in (0, 3600], --rate above 0, --clients at most 500")
    return args


def report(out: Path, show: int) -> int:
    verdict = checker.check(checker.load(out))
    text = verdict.report(first=show)
    print(text)
    (out / "report.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(verdict.summary(), indent=1) + "\n")
    return 0 if verdict.ok else 1


async def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    run_id = secrets.token_hex(3)  # not from the seed: texts and names stay unique across runs
    out = args.out or ROOT / "test-output" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"
    (out / "clients").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def clock() -> float:
        return time.monotonic() - started

    cluster = None
    if args.kinds or not args.servers:
        try:
            cluster = Cluster(args.run_dir)
        except (ClusterError, OSError, KeyError, ValueError) as exc:
            say(f"error: {exc}")
            return 2
        refusals = cluster.refusals(args.kinds)
        if refusals:
            say("error: these faults cannot run on this cluster:\n  " + "\n  ".join(refusals))
            return 2
    fixed = [u.strip().rstrip("/") for u in args.servers.split(",")] if args.servers else None

    def servers() -> list[str]:
        return fixed if fixed is not None else cluster.server_urls() if cluster is not None else []

    nginx = None if args.url == "none" else args.url or (cluster.nginx_url if cluster is not None else None)
    if not servers() and not nginx:
        say("error: no chat server to connect to")
        return 2
    plan = f"{args.clients} clients of {args.users} users, {args.rate}/s, {args.duration:.0f}s"
    say(f"chaos run {run_id}: seed {seed}, {plan}, faults {','.join(args.kinds) or 'none'}")
    say(f"  servers {servers()}, nginx {nginx}, records in {out}")

    # Users, their tokens and their rooms, before any client starts.
    users = [f"cx{run_id}u{i}" for i in range(args.users)]
    rooms = {f"cx{run_id}r{j}": sorted(rng.sample(users, max(2, len(users) // 2))) for j in range(args.rooms)}
    login_at = servers()[0] if servers() else str(nginx)
    tokens = {}
    try:
        for user in users:
            tokens[user] = await asyncio.to_thread(http_login, login_at, user)
            mine = [room for room, members in rooms.items() if user in members]
            if mine:
                await join_rooms(login_at, tokens[user], mine)
    except (RuntimeError, OSError, TimeoutError) as exc:
        say(f"error: setting up users: {exc}")
        return 2

    targets = Targets(servers, nginx, args.nginx_share)
    opts = Options(
        args.rate / args.clients,
        args.session_mean,
        args.nginx_share,
        late_resume_share=args.late_resume_share,
        late_resume_s=args.late_resume_s,
    )
    clients, recorders = [], []
    for i in range(args.clients):
        name, user = f"c{i:02d}", users[i % len(users)]
        rec = Recorder(out / "clients" / f"{name}.jsonl", clock)
        recorders.append(rec)
        peers = [u for u in users if u != user]
        mine = [room for room, members in rooms.items() if user in members]
        crng = random.Random(f"{seed}-{name}")
        clients.append(Client(name, user, tokens[user], peers, mine, targets, crng, rec, run_id, opts))
    meta: dict[str, Any] = {
        "run": run_id, "seed": seed, "args": {k: str(v) for k, v in vars(args).items()},
        "clients": {c.name: {"user": c.user} for c in clients}, "rooms": rooms, "settle": SETTLE_S,
        "cluster": {"run_dir": str(args.run_dir), "servers": servers(), "nginx": nginx},
    }  # fmt: skip
    faults = Faults(cluster, random.Random(f"{seed}-faults"), clock, out / "faults.log") if cluster else None
    try:
        code = await _phases(args, clients, faults, clock, meta)
    finally:
        if faults is not None:
            did = await faults.restore()
            if did:
                say(f"cluster put back: {', '.join(did)}")
        for rec in recorders:
            rec.close()
        if faults is not None:
            meta["faults"] = [f.__dict__ for f in faults.done]
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if code:
        return code
    return report(out, args.show)


async def _phases(
    args: argparse.Namespace, clients: list[Client], faults: Faults | None, clock: Any, meta: dict[str, Any]
) -> int:
    phases: dict[str, float] = {}
    meta["phases"] = phases
    # 1. every client's first session: its welcome is its baseline, before anyone sends
    deadline = time.monotonic() + 30
    started = await asyncio.gather(*(c.start(deadline) for c in clients))
    if not all(started):
        say(f"error: {started.count(False)} clients could not connect within 30s")
        return 2
    phases["workload"] = clock()
    # 2. traffic, disconnects and faults, until the duration is over and the last fault settled
    stop = asyncio.Event()
    live = [asyncio.create_task(c.live(stop)) for c in clients]
    progress = asyncio.create_task(_progress(clients, clock))
    end = clock() + args.duration
    if faults is not None and args.kinds:
        calm = min(8.0, args.duration * 0.15)
        try:
            await faults.run(args.kinds, end, calm, SETTLE_S)
        except Exception as exc:
            meta.setdefault("notes", []).append(f"fault schedule stopped: {exc}")
            say(f"warning: fault schedule stopped: {exc}")
        if faults.done:
            end = max(end, faults.done[-1].end + SETTLE_S)
    await asyncio.sleep(max(0.0, end - clock()))
    stop.set()
    await asyncio.gather(*live)
    phases["drain"] = clock()
    # 3. the last acks, then every client resumes once more and catches up with the latest
    deadline = time.monotonic() + DRAIN_S
    await asyncio.gather(*(c.drain(deadline) for c in clients))
    phases["final"] = clock()
    deadline = time.monotonic() + FINAL_S
    reached = await asyncio.gather(*(c.final(deadline) for c in clients))
    phases["end"] = clock()
    progress.cancel()
    behind = [c.name for c, ok in zip(clients, reached, strict=True) if not ok]
    if behind:
        meta.setdefault("notes", []).append(f"final resume did not reach the latest for {', '.join(behind)}")
        say(f"warning: the final resume did not reach the latest positions for {', '.join(behind)}")
    sessions, gave_up = sum(c.stats["sessions"] for c in clients), sum(c.stats["gave_up"] for c in clients)
    say(f"run over after {clock():.0f}s: {sum(c.sent for c in clients)} sends, {sessions} sessions, {gave_up} given up")
    return 0


async def _progress(clients: list[Client], clock: Any) -> None:
    while True:
        await asyncio.sleep(10)
        sends = sum(c.sent for c in clients)
        waiting = sum(c.unanswered() for c in clients)
        sessions = sum(c.stats["sessions"] for c in clients)
        say(f"  t={clock():5.0f}s  sends {sends}, waiting for an ack {waiting}, sessions {sessions}")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        if not (args.out / "meta.json").exists():
            say(f"error: {args.out} holds no run (no meta.json)")
            return 2
        return report(args.out, args.show)
    hard_limit = args.duration + 2 * 150 + DRAIN_S + FINAL_S + 120  # faults' scripts are bounded too
    try:
        return asyncio.run(asyncio.wait_for(run(args), hard_limit))
    except TimeoutError:
        say(f"error: the run did not end within {hard_limit:.0f}s")
        return 2


if __name__ == "__main__":
    sys.exit(main())
