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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import queue
import random
import resource
import secrets
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
from array import array
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
from wsclient import ClientConnection, ConnectionClosed, InvalidHandshake, InvalidStatus, connect

DEFAULT_URL = "http://127.0.0.1:8080"
GRACE_S = 2.0  # after the last send: time for acks and deliveries still on their way
MAX_TEXT = 4000  # the protocol's limit on a text
MAX_RAMP_STEPS = 20
RAMP_MAX_LAG_MS = 100.0  # a ramp step whose sends were this late measured the generator, not the server
TICK_S = 0.5  # how often workers report progress to the parent
LAT_SAMPLE_CAP = 4000  # latency samples per progress tick (a reservoir beyond that)
CONNECT_TIMEOUT_S = 10.0
WELCOME_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
LOGIN_RETRY_S = 60.0  # how long one user's login is retried while refused with 429 or 503
START_DELAY_S = 0.5  # between the parent's "go" and the first scheduled send

# Proxies from the environment are never used: the tool talks to the given URLs only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Fatal(Exception):
    """A problem that ends the run with a one-line message and an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ================================================================================ helpers


def ws_url(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + "/ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + "/ws"
    return url + "/ws"


def _http_error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"null")
        detail = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = exc.reason
    return f"HTTP {exc.code}: {detail}"


def http_login(url: str, username: str) -> str:
    """A token from ``POST {url}/api/login``; ``Fatal`` with the reason when refused. Logins
    refused for their rate (429, e.g. nginx's per-address limit) or a busy server (503) are
    retried with backoff for up to LOGIN_RETRY_S."""
    request = urllib.request.Request(
        url + "/api/login",
        data=json.dumps({"username": username}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    give_up = time.monotonic() + LOGIN_RETRY_S
    delay = 0.1
    while True:
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
                token = json.loads(response.read())["token"]
            break
        except urllib.error.HTTPError as exc:
            if exc.code in (429, 503) and time.monotonic() + delay < give_up:
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)
                continue
            hint = {
                404: " (dev login is off: pass --secret with the cluster's CHAT_SECRET)",
                429: " (logins are rate-limited: pass --secret with the cluster's CHAT_SECRET to mint tokens)",
            }.get(exc.code, "")
            raise Fatal(f"cannot log in at {url}: {_http_error_message(exc)}{hint}") from None
        except urllib.error.URLError as exc:
            raise Fatal(f"cannot log in at {url}: {exc.reason}") from None
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
            raise Fatal(f"cannot log in at {url}: {exc!r}") from None
    if not isinstance(token, str):
        raise Fatal(f"cannot log in at {url}: the answer has no token")
    return token


def http_health(url: str) -> None:
    try:
        with _OPENER.open(url + "/healthz", timeout=HTTP_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise Fatal(f"cannot reach the chat server at {url}: /healthz answered {_http_error_message(exc)}") from None
    except urllib.error.URLError as exc:
        raise Fatal(f"cannot reach the chat server at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Fatal(f"cannot reach the chat server at {url}: {exc!r}") from None


def mint_token(secret: str, username: str, ttl_s: int = 3600) -> str:
    import jwt

    now = int(time.time())
    token: str = jwt.encode({"sub": username, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")
    return token


def describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        try:
            detail = json.loads(exc.response.body or b"null")["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = (exc.response.body or b"")[:200].decode(errors="replace")
        return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionClosed):
        return f"closed by the server ({exc})"
    return str(exc) or type(exc).__name__


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of ``values`` (nearest rank), None when there are none."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "p50": round(rank(0.50), 3),
        "p95": round(rank(0.95), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
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


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # if refused, keep the soft limit; many connections may then fail with "Too many open files"
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ================================================================================ worker


class Conn:
    """One WebSocket user. ``gid`` >= 0: it sends as sender ``gid``; ``rid`` >= 0: it counts what
    it receives as receiver ``rid``."""

    __slots__ = ("connected", "gid", "name", "next_seq", "peer", "pending", "reader", "rid", "url", "ws")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.url: str = spec["url"]
        self.gid: int = spec["gid"]
        self.rid: int = spec["rid"]
        self.peer: str | None = spec.get("peer")
        self.ws: ClientConnection | None = None
        self.connected = False
        self.reader: asyncio.Task[None] | None = None
        self.next_seq = 0
        self.pending: dict[int, tuple[int, bool]] = {}  # seq -> (send time ns, measured)


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


class Worker:
    def __init__(self, plan: dict[str, Any], commands: Any, results: Any) -> None:
        self.plan = plan
        self.index: int = plan["worker"]
        self.parent = os.getppid()
        self.commands = commands
        self.results = results
        self.scenario: str = plan["scenario"]
        self.binary: bool = plan["msgpack"]
        self.text_bytes: int = plan["text_bytes"]
        self.run: str = plan["run"]
        self.marker = f"lt:{self.run}:"
        self.conns = [Conn(spec) for spec in plan["users"]]
        self.stats = StepStats(-1)
        self.stopping = False
        self.expect_all = plan["procs"] == 1  # public: this worker sees every sender's acks
        # progress counters (all phases) and the latency reservoir of the current tick
        self.c_sent = self.c_acked = self.c_delivered = self.c_errors = 0
        self.tick_lat: list[float] = []
        self.tick_seen = 0
        self.changed = asyncio.Event()  # set whenever a frame arrives

    # ------------------------------------------------------------------ plumbing

    def put(self, message: dict[str, Any]) -> None:
        message["w"] = self.index
        self.results.put(message)

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        if self.binary:
            data: bytes = msgpack.packb(frame, use_bin_type=True)
            return data
        return orjson.dumps(frame).decode()

    def decode(self, raw: str | bytes) -> Any:
        if isinstance(raw, bytes):
            return msgpack.unpackb(raw, raw=False)
        return orjson.loads(raw)  # a third of json.loads's time: receiving is the generator's main work

    def error(self, code: str) -> None:
        self.stats.errors[code] += 1
        self.c_errors += 1

    async def next_command(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                command: dict[str, Any] = await loop.run_in_executor(None, self._get_command)
                return command
            except queue.Empty:
                self.exit_if_orphaned()

    def exit_if_orphaned(self) -> None:
        """The parent died (killed, not interrupted): nobody reads our results, so stop now. A
        normal exit would wait for the result queue to drain, which never happens."""
        if os.getppid() != self.parent:
            self.results.cancel_join_thread()
            os._exit(3)

    def _get_command(self) -> dict[str, Any]:
        command: dict[str, Any] = self.commands.get(timeout=1.0)
        return command

    # ------------------------------------------------------------------ main

    async def main(self) -> None:
        raise_fd_limit()
        await self.setup()
        ticker = asyncio.create_task(self.ticker())
        try:
            while True:
                command = await self.next_command()
                if command["cmd"] != "run":
                    break
                cpu = cpu_seconds()
                if self.scenario == "idle":
                    await self.idle_step(command)
                else:
                    await self.traffic_step(command)
                self.put(self.step_result(cpu_seconds() - cpu))
        finally:
            self.stopping = True
            ticker.cancel()
            await self.close_all()
        self.put({"type": "bye", "cpu": cpu_seconds()})

    async def close_all(self) -> None:
        live = [c.ws for c in self.conns if c.ws is not None]
        if live:
            await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in live), return_exceptions=True), 5.0)
        for conn in self.conns:
            if conn.reader is not None:
                conn.reader.cancel()

    # ------------------------------------------------------------------ connecting

    async def setup(self) -> None:
        plan = self.plan
        started = time.perf_counter()
        tokens: dict[str, str] = {}
        login_errors: list[str] = []
        if plan["secret"]:
            for conn in self.conns:
                tokens[conn.name] = mint_token(plan["secret"], conn.name)
        else:
            gate = asyncio.Semaphore(16)

            async def login(conn: Conn) -> None:
                async with gate:
                    try:
                        tokens[conn.name] = await asyncio.to_thread(http_login, conn.url, conn.name)
                    except Fatal as exc:
                        login_errors.append(str(exc))

            await asyncio.gather(*(login(c) for c in self.conns))
        login_s = time.perf_counter() - started

        connect_ms: list[float] = []
        errors: list[str] = list(login_errors)
        gate = asyncio.Semaphore(plan["connect_concurrency"])
        connect_started = time.perf_counter()

        async def open_one(conn: Conn) -> None:
            token = tokens.get(conn.name)
            if token is None:
                return
            async with gate:
                t = time.perf_counter()
                try:
                    await self.open(conn, token)
                except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, ValueError) as exc:
                    errors.append(f"{conn.url}: {describe_connect_error(exc)}")
                    return
                connect_ms.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(open_one(c) for c in self.conns))
        connect_s = time.perf_counter() - connect_started
        by_name = {c.name: c for c in self.conns}
        for conn in self.conns:
            if conn.connected:
                conn.reader = asyncio.create_task(self.read(conn))
        if self.scenario == "room":
            await self.join_room()
        senders = [c for c in self.conns if c.gid >= 0 and c.connected]
        if self.scenario == "private":  # a pair sends only when both ends are connected
            senders = [c for c in senders if c.peer is not None and by_name[c.peer].connected]
        self.senders = senders
        self.put(
            {
                "type": "connected",
                "ok": sum(c.connected for c in self.conns),
                "failed": len(self.conns) - sum(c.connected for c in self.conns),
                "errors": errors[:5],
                "error_count": len(errors),
                "login_seconds": login_s,
                "connect_seconds": connect_s,
                "connect_ms": connect_ms,
                "senders": len(senders),
                "receivers": sum(c.rid >= 0 and c.connected for c in self.conns),
            }
        )

    async def open(self, conn: Conn, token: str) -> None:
        ws = await connect(
            f"{ws_url(conn.url)}?token={token}",
            subprotocols=["msgpack"] if self.binary else None,
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=1 << 20,
        )
        try:
            if self.binary and ws.subprotocol != "msgpack":
                raise ValueError("the server did not accept the msgpack subprotocol")
            frame = self.decode(await asyncio.wait_for(ws.recv(), WELCOME_TIMEOUT_S))
            if not isinstance(frame, dict) or frame.get("type") != "welcome":
                raise ValueError(f"expected a welcome frame, got {str(frame)[:200]}")
            # Resuming from where welcome stands ends the server's wait for a resume at once:
            # without it, this connection's live messages would be held CHAT_RESUME_WAIT_MS.
            await ws.send(self.encode({"type": "resume", "positions": frame.get("positions") or {}}))
        except BaseException:
            await ws.close()
            raise
        conn.ws = ws
        conn.connected = True

    async def join_room(self) -> None:
        room = self.plan["room"]
        for conn in self.conns:
            if conn.ws is not None and conn.connected:
                await conn.ws.send(self.encode({"type": "join", "room": room, "cid": "join"}))
        await asyncio.sleep(1.0)  # joins are not acked by the contract; let them land

    # ------------------------------------------------------------------ receiving

    async def read(self, conn: Conn) -> None:
        """Handle every frame of ``conn`` as it is parsed (a callback: no coroutine switch per
        frame), until the connection closes."""
        assert conn.ws is not None
        closed = asyncio.get_running_loop().create_future()

        def on_frame(raw: str | bytes) -> None:
            try:
                frame = self.decode(raw)
                kind = frame.get("type")
            except (ValueError, AttributeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                self.error("undecodable_frame")
                return
            self.changed.set()
            if kind == "message":
                self.on_message(conn, frame)
            elif kind == "ack":
                self.on_ack(conn, frame)
            elif kind == "error":
                self.on_error(conn, frame)
            elif kind == "pong":
                self.stats.pongs += 1

        def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        try:
            conn.ws.handle_with(on_frame, on_closed)
            await closed
        finally:
            conn.connected = False
            if not self.stopping:
                code = conn.ws.close_code if conn.ws is not None else None
                self.error(f"disconnected:{code}")

    def on_message(self, conn: Conn, frame: dict[str, Any]) -> None:
        text = frame.get("text")
        if conn.rid < 0 or not isinstance(text, str) or not text.startswith(self.marker):
            return  # somebody else's traffic
        now = time.time_ns()
        try:
            _, _, gid_s, step_s, seq_s, phase, t_s, _ = text.split(":", 7)
            gid, step, seq, t_ns = int(gid_s), int(step_s), int(seq_s), int(t_s)
        except ValueError:
            self.error("undecodable_text")
            return
        latency_ms = (now - t_ns) / 1e6
        self.c_delivered += 1
        self.sample(latency_ms)
        stats = self.stats
        if step != stats.step:
            stats.late += 1
            return
        if self.scenario == "private" and gid != conn.rid:
            stats.misrouted += 1
            return
        per_sender = stats.delivered_bits.setdefault(conn.rid, {})
        bits = per_sender.get(gid)
        if bits is None:
            bits = per_sender[gid] = bytearray(1024)
        if mark(bits, seq):
            stats.duplicates += 1
            return
        if phase == "m":
            stats.delivered += 1
            stats.latency.append(latency_ms)
            stats.last_delivery = time.perf_counter()
        else:
            stats.delivered_warmup += 1

    def on_ack(self, conn: Conn, frame: dict[str, Any]) -> None:
        step, seq = self.parse_cid(frame.get("cid"))
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
            stats.ack_latency.append((time.time_ns() - t_ns) / 1e6)
            mark(stats.acked_bits.setdefault(conn.gid, bytearray(1024)), seq)

    def on_error(self, conn: Conn, frame: dict[str, Any]) -> None:
        code = str(frame.get("code", "unknown"))
        self.error(code)
        step, seq = self.parse_cid(frame.get("cid"))
        if step == self.stats.step:
            conn.pending.pop(seq, None)

    @staticmethod
    def parse_cid(cid: Any) -> tuple[int, int]:
        if not isinstance(cid, str) or "." not in cid:
            return -1, -1
        step, _, seq = cid.partition(".")
        try:
            return int(step), int(seq)
        except ValueError:
            return -1, -1

    def sample(self, latency_ms: float) -> None:
        self.tick_seen += 1
        if len(self.tick_lat) < LAT_SAMPLE_CAP:
            self.tick_lat.append(latency_ms)
        else:
            j = random.randrange(self.tick_seen)
            if j < LAT_SAMPLE_CAP:
                self.tick_lat[j] = latency_ms

    async def ticker(self) -> None:
        last = (0, 0, 0, 0)
        while True:
            await asyncio.sleep(TICK_S)
            self.exit_if_orphaned()
            now = (self.c_sent, self.c_acked, self.c_delivered, self.c_errors)
            lat, self.tick_lat, self.tick_seen = self.tick_lat, [], 0
            self.put(
                {
                    "type": "tick",
                    "t": time.time(),
                    "sent": now[0] - last[0],
                    "acked": now[1] - last[1],
                    "delivered": now[2] - last[2],
                    "errors": now[3] - last[3],
                    "lat": lat,
                    "conns": sum(c.connected for c in self.conns),
                }
            )
            last = now

    # ------------------------------------------------------------------ sending

    def text(self, gid: int, step: int, seq: int, phase: str, t_ns: int) -> str:
        head = f"{self.marker}{gid}:{step}:{seq}:{phase}:{t_ns}:"
        return head + "x" * (self.text_bytes - len(head)) if len(head) < self.text_bytes else head

    async def traffic_step(self, command: dict[str, Any]) -> None:
        step: int = command["step"]
        self.stats = stats = StepStats(step)
        stats.receivers = [c.rid for c in self.conns if c.rid >= 0 and c.connected]
        for conn in self.senders:
            conn.pending.clear()
        start_perf = time.perf_counter() + (command["start"] - time.time())
        t_measure = start_perf + command["warmup"]
        t_end = t_measure + command["duration"]
        rate: float = command["rate"]
        senders = self.senders
        if rate > 0 and senders:
            await self.send_loop(senders, step, rate, command["offset"], start_perf, t_measure, t_end)
        else:
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        await self.wait_until(self.complete, max(time.perf_counter(), t_end) + command["grace"])
        stats.quiet_s = time.perf_counter() - stats.last_delivery if stats.last_delivery else math.inf
        for conn in senders:
            stats.errors["unacked"] += sum(1 for _, measured in conn.pending.values() if measured)
            conn.pending.clear()
        if not stats.errors["unacked"]:
            del stats.errors["unacked"]

    async def send_loop(
        self,
        senders: list[Conn],
        step: int,
        rate: float,
        offset: float,
        start: float,
        t_measure: float,
        t_end: float,
    ) -> None:
        stats = self.stats
        kind = self.scenario
        room = self.plan["room"]
        n = len(senders)
        k = 0
        burst = 0
        while True:
            due = start + (k + offset) / rate
            if due >= t_end:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
                burst = 0
            elif burst >= 50:  # far behind schedule: let the readers run between sends
                await asyncio.sleep(0)
                burst = 0
            burst += 1
            conn = senders[k % n]
            k += 1
            measured = due >= t_measure
            seq = conn.next_seq
            conn.next_seq += 1
            t_ns = time.time_ns()
            frame: dict[str, Any] = {
                "type": kind,
                "text": self.text(conn.gid, step, seq, "m" if measured else "w", t_ns),
                "cid": f"{step}.{seq}",
            }
            if kind == "private":
                frame["to"] = conn.peer
            elif kind == "room":
                frame["room"] = room
            conn.pending[seq] = (t_ns, measured)
            ws = conn.ws
            if ws is None or not conn.connected:
                conn.pending.pop(seq, None)
                self.error("send_failed")
                continue
            try:
                await ws.send(self.encode(frame))
            except ConnectionClosed:
                conn.pending.pop(seq, None)
                self.error("send_failed")
                continue
            self.c_sent += 1
            if measured:
                stats.sent += 1
                stats.lag.append((now - due) * 1000)
            else:
                stats.sent_warmup += 1
        for conn in senders:  # the next step starts its sequence numbers again
            conn.next_seq = 0

    async def wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Until ``done()`` (checked whenever a frame arrived) or ``deadline`` (perf_counter)."""
        while not done():
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def complete(self) -> bool:
        """Every local send answered and (when this worker can tell) every delivery in."""
        if any(c.pending for c in self.senders):
            return False
        stats = self.stats
        if self.scenario == "private":
            return stats.delivered >= stats.acked
        if not self.expect_all:
            return False  # other workers' messages may still be on their way: wait the grace out
        return stats.delivered >= stats.acked * len(stats.receivers)

    # ------------------------------------------------------------------ idle

    async def idle_step(self, command: dict[str, Any]) -> None:
        self.stats = stats = StepStats(command["step"])
        stats.receivers = [i for i, c in enumerate(self.conns) if c.connected]
        t_end = time.perf_counter() + (command["start"] - time.time()) + command["warmup"] + command["duration"]
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        # still there? one application-level ping on every connection that looks open
        sent_at = time.perf_counter()
        live = [c for c in self.conns if c.connected and c.ws is not None]
        for conn in live:
            assert conn.ws is not None
            with contextlib.suppress(ConnectionClosed):  # the reader records the disconnect
                await conn.ws.send(self.encode({"type": "ping", "cid": "idle"}))
        await self.wait_until(lambda: stats.pongs >= len(live), sent_at + command["grace"] + 3.0)
        stats.ping_ms.append((time.perf_counter() - sent_at) * 1000)

    # ------------------------------------------------------------------ results

    def step_result(self, cpu: float) -> dict[str, Any]:
        s = self.stats
        return {
            "type": "step",
            "step": s.step,
            "sent": s.sent,
            "sent_warmup": s.sent_warmup,
            "acked": s.acked,
            "delivered": s.delivered,
            "delivered_warmup": s.delivered_warmup,
            "duplicates": s.duplicates,
            "misrouted": s.misrouted,
            "late": s.late,
            "errors": dict(s.errors),
            "latency": s.latency.tobytes(),
            "ack_latency": s.ack_latency.tobytes(),
            "lag": s.lag.tobytes(),
            "acked_bits": {g: bytes(b) for g, b in s.acked_bits.items()},
            "delivered_bits": {r: {g: bytes(b) for g, b in d.items()} for r, d in s.delivered_bits.items()},
            "receivers": s.receivers,
            "pongs": s.pongs,
            "quiet_s": s.quiet_s,
            "ping_ms": s.ping_ms.tobytes(),
            "cpu": cpu,
        }


def worker_main(plan: dict[str, Any], commands: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(Worker(plan, commands, results).main())
    except BaseException as exc:
        results.put({"type": "fatal", "w": plan["worker"], "error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None


# ================================================================================ parent


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


def build_plans(args: argparse.Namespace, prefix: str, run: str) -> list[dict[str, Any]]:
    urls: list[str] = args.url
    n = len(urls)
    procs = args.procs
    users: list[list[dict[str, Any]]] = [[] for _ in range(procs)]
    if args.scenario == "private":
        for i in range(args.users // 2):
            sender, receiver = f"{prefix}-s{i}", f"{prefix}-r{i}"
            users[i % procs].append({"name": sender, "url": urls[i % n], "gid": i, "rid": -1, "peer": receiver})
            users[i % procs].append({"name": receiver, "url": urls[(i + 1) % n], "gid": -1, "rid": i})
    elif args.scenario in ("public", "room"):
        for j in range(args.users):
            users[j % procs].append({"name": f"{prefix}-u{j}", "url": urls[j % n], "gid": j, "rid": j})
    else:
        for j in range(args.users):
            users[j % procs].append({"name": f"{prefix}-i{j}", "url": urls[j % n], "gid": -1, "rid": -1})
    return [
        {
            "worker": w,
            "procs": procs,
            "scenario": args.scenario,
            "msgpack": args.msgpack,
            "text_bytes": args.text_bytes,
            "run": run,
            "room": f"{prefix}-room",
            "secret": args.secret,
            "connect_concurrency": args.connect_concurrency,
            "users": users[w],
        }
        for w in range(procs)
        if users[w]
    ]


def preflight(args: argparse.Namespace, prefix: str) -> None:
    """Fail fast and clearly when a URL cannot be used; check that rooms exist for --scenario room."""
    token = ""
    for url in args.url:
        if args.secret:
            http_health(url)
            token = mint_token(args.secret, f"{prefix}-probe")
        else:
            token = http_login(url, f"{prefix}-probe")
    if args.scenario == "room":
        asyncio.run(_probe_rooms(args.url[0], token, f"{prefix}-room", f"{prefix}-probe"))


async def _probe_rooms(url: str, token: str, room: str, user: str) -> None:
    try:
        ws = await connect(f"{ws_url(url)}?token={token}", open_timeout=10)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise Fatal(f"cannot open a WebSocket at {url}: {describe_connect_error(exc)}") from None
    try:
        await ws.send(json.dumps({"type": "join", "room": room, "cid": "probe-join"}))
        deadline = time.monotonic() + 5.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
            if frame.get("type") == "error" and frame.get("cid") == "probe-join":
                if frame.get("code") == "unknown_type":
                    raise Fatal(
                        "rooms are not supported by the server yet: it answers 'join' with unknown_type "
                        f"({frame.get('message')}); use --scenario private, public or idle",
                        status=2,
                    )
                raise Fatal(f"the server refused 'join': {frame.get('code')}: {frame.get('message')}")
            if frame.get("cid") == "probe-join" or (frame.get("type") == "presence" and frame.get("user") == user):
                return
        raise Fatal("the server did not answer 'join' within 5 s: cannot run the room scenario")
    finally:
        await ws.close()


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


class Run:
    """The parent: starts workers, steps them through the plan, merges what they report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.prefix = args.prefix or f"lt-{self.run_id}"
        self.progress = Progress(not args.quiet)
        self.timeline: dict[int, dict[str, Any]] = {}
        self.t_origin = 0.0
        self.procs: list[Any] = []
        self.commands: list[Any] = []
        self.results: Any = None
        self.fatal: str | None = None
        steps = MAX_RAMP_STEPS if args.ramp else 1
        per_step = args.warmup + args.duration + args.grace + 5.0 + START_DELAY_S
        self.deadline = time.monotonic() + 60 + args.users * 0.15 + steps * per_step  # the hard timeout

    # ------------------------------------------------------------------ messages from workers

    def receive(self, timeout: float) -> dict[str, Any] | None:
        if time.monotonic() > self.deadline:
            raise Fatal("hard timeout: the run took far longer than planned; stopped")
        try:
            message: dict[str, Any] = self.results.get(timeout=timeout)
        except queue.Empty:
            for proc in self.procs:
                if proc.exitcode not in (None, 0):
                    raise Fatal(f"a load worker died (exit {proc.exitcode})") from None
            return None
        if message["type"] == "fatal":
            raise Fatal(f"load worker {message['w']} failed: {message['error']}")
        if message["type"] == "tick":
            self.progress.add(message)
            self.record_tick(message)
        return message

    def gather(self, kind: str, count: int, label: Callable[[], str], timeout: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        until = time.monotonic() + timeout
        while len(got) < count:
            if time.monotonic() > until:
                raise Fatal(f"hard timeout while waiting for the load workers ({label})")
            message = self.receive(0.1)
            if message is not None and message["type"] == kind:
                got.append(message)
            self.progress.show(label())
        return got

    def record_tick(self, tick: dict[str, Any]) -> None:
        if not self.t_origin:
            return
        second = int(tick["t"] - self.t_origin)
        slot = self.timeline.setdefault(second, {"sent": 0, "delivered": 0, "errors": 0, "lat": []})
        slot["sent"] += tick["sent"]
        slot["delivered"] += tick["delivered"]
        slot["errors"] += tick["errors"]
        slot["lat"].extend(tick["lat"])

    # ------------------------------------------------------------------ the run

    def start_workers(self, plans: list[dict[str, Any]]) -> None:
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        for plan in plans:
            commands = context.Queue()
            proc = context.Process(target=worker_main, args=(plan, commands, self.results), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.commands.append(commands)

    def kill_workers(self) -> None:
        """After an interrupt or a failure: workers may be mid-step; end them now."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)

    def stop_workers(self) -> list[dict[str, Any]]:
        for commands in self.commands:
            commands.put({"cmd": "stop"})
        byes: list[dict[str, Any]] = []
        until = time.monotonic() + 10
        while len(byes) < len(self.procs) and time.monotonic() < until:
            try:
                message = self.results.get(timeout=0.2)
            except queue.Empty:
                if all(p.exitcode is not None for p in self.procs):
                    break
                continue
            if message["type"] == "bye":
                byes.append(message)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        return byes

    def execute(self) -> tuple[dict[str, Any], int]:
        args = self.args
        preflight(args, self.prefix)
        plans = build_plans(args, self.prefix, self.run_id)
        wall = time.time()
        cpu0 = cpu_seconds()
        self.start_workers(plans)
        finished = False
        try:
            login = "logging in and connecting" if not args.secret else "connecting"
            self.progress.note(f"{login} {args.users} users ({args.scenario}, {len(plans)} process(es)) ...")
            connected = self.gather("connected", len(plans), lambda: "connecting", 60 + args.users * 0.15)
            connect = self.merge_connect(connected)
            self.progress.note(
                f"connected {connect['ok']}/{connect['ok'] + connect['failed']} in {connect['seconds']:.2f} s "
                f"({connect['rate_per_s']:.0f}/s)"
            )
            if connect["failed"]:
                self.progress.note(
                    f"{connect['failed']} of {connect['ok'] + connect['failed']} connections failed: "
                    f"first error {connect['first_error']}"
                )
            if connect["ok"] == 0:
                raise Fatal(f"all {connect['failed']} connections failed: first error {connect['first_error']}")
            senders = {c["w"]: c["senders"] for c in connected}
            if args.scenario != "idle" and not sum(senders.values()):
                raise Fatal("no sender could run (each needs its connection and, for private, its receiver's)")
            steps = self.steps(senders, connect)
            finished = True
        finally:
            self.progress.done()
            if not finished:
                self.kill_workers()
        byes = self.stop_workers()
        cpu = cpu_seconds() - cpu0 + sum(b["cpu"] for b in byes)
        elapsed = time.time() - wall
        report = self.report(connect, steps, cpu, elapsed, len(plans))
        return report, report["exit_code"]

    def steps(self, senders: dict[int, int], connect: dict[str, Any]) -> list[dict[str, Any]]:
        args = self.args
        total = sum(senders.values())
        live = list(range(len(self.procs)))
        results: list[dict[str, Any]] = []
        rate = args.rate
        for step in range(MAX_RAMP_STEPS if args.ramp else 1):
            start = time.time() + START_DELAY_S
            if not self.t_origin:
                self.t_origin = start
            for w in live:
                share = senders.get(w, 0) / total if total else 0.0
                self.commands[w].put(
                    {
                        "cmd": "run",
                        "step": step,
                        "rate": rate * share,
                        "offset": w / len(live),
                        "start": start,
                        "warmup": args.warmup,
                        "duration": args.duration,
                        "grace": args.grace,
                    }
                )
            label = self.step_label(step, rate, start)
            budget = START_DELAY_S + args.warmup + args.duration + args.grace + 30
            parts = self.gather("step", len(live), label, budget)
            self.progress.done()
            result = self.merge_step(step, rate, parts, connect)
            # The measured window on the wall clock, for tools that read other processes' CPU
            # over exactly that time (benchmarks/run.py).
            result["window_unix"] = [round(start + args.warmup, 3), round(start + args.warmup + args.duration, 3)]
            results.append(result)
            if not args.quiet and args.ramp:
                self.progress.note(self.step_line(result))
            if not args.ramp or not result["good"]:
                break
            rate = round(rate * args.ramp_factor, 3)
        return results

    def step_label(self, step: int, rate: float, start: float) -> Callable[[], str]:
        args = self.args

        def label() -> str:
            t = time.time() - start
            head = f"step {step + 1} @ {rate:g}/s " if args.ramp else ""
            if args.scenario == "idle":
                return f"{head}holding {min(t, args.warmup + args.duration):.0f}/{args.warmup + args.duration:g} s"
            if t < 0:
                return f"{head}starting"
            if t < args.warmup:
                return f"{head}warmup {t:.0f}/{args.warmup:g} s"
            if t < args.warmup + args.duration:
                return f"{head}measure {t - args.warmup:.0f}/{args.duration:g} s"
            return f"{head}grace"

        return label

    # ------------------------------------------------------------------ merging

    def merge_connect(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
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

    def merge_step(
        self, step: int, rate: float, parts: list[dict[str, Any]], connect: dict[str, Any]
    ) -> dict[str, Any]:
        args = self.args
        errors: Counter[str] = Counter()
        for p in parts:
            errors.update(p["errors"])
        if args.scenario == "idle":
            still = sum(p["pongs"] for p in parts)
            ping = [x for p in parts for x in array("d", p["ping_ms"])]
            return {
                "step": step,
                "connections": connect["ok"],
                "still_connected": still,
                "dropped": connect["ok"] - still,
                "held_seconds": args.warmup + args.duration,
                "ping_all_ms": round(max(ping), 3) if ping else None,
                "errors": dict(errors),
                "cpu_seconds": round(sum(p["cpu"] for p in parts), 3),
                "good": still == connect["ok"] and not errors,
            }

        def numbers(key: str) -> list[float]:
            out = array("d")
            for p in parts:
                out.frombytes(p[key])
            return out.tolist()

        acked_bits: dict[int, bytes] = {}
        delivered_bits: dict[int, dict[int, bytes]] = {}
        receivers: list[int] = []
        for p in parts:
            acked_bits.update(p["acked_bits"])
            delivered_bits.update(p["delivered_bits"])
            receivers.extend(p["receivers"])
        acked = sum(p["acked"] for p in parts)
        lost = 0
        if args.scenario == "private":
            expected = acked
            for gid, bits in acked_bits.items():
                lost += ones(bits) - both(bits, delivered_bits.get(gid, {}).get(gid, b""))
        else:
            expected = acked * len(receivers)
            for rid in receivers:
                got = delivered_bits.get(rid, {})
                for gid, bits in acked_bits.items():
                    lost += ones(bits) - both(bits, got.get(gid, b""))
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
            "acked": acked,
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

    def step_line(self, r: dict[str, Any]) -> str:
        lat = r["latency_ms"]
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
        verdict = "ok" if r["good"] else "; ".join(r["problems"])
        return (
            f"step {r['step'] + 1}: {r['target_rate']:g}/s  sent {r['sent']}  delivered {r['delivered']}  "
            f"lost {r['lost']}  p99 {p99} ms  -> {verdict}"
        )

    # ------------------------------------------------------------------ the report

    def report(
        self, connect: dict[str, Any], steps: list[dict[str, Any]], cpu: float, elapsed: float, procs: int
    ) -> dict[str, Any]:
        args = self.args
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
            "prefix": self.prefix,
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
            for second, slot in sorted(self.timeline.items())
            if second >= 0
        ]
        if args.ramp:
            ok = report["ramp"]["last_good_rate"] is not None and connect["failed"] == 0
        else:
            ok = last["good"] and connect["failed"] == 0
        report["ok"] = ok
        report["exit_code"] = 0 if ok else 1
        report["hints"] = self.hints(report, steps)
        return report

    def hints(self, report: dict[str, Any], steps: list[dict[str, Any]]) -> list[str]:
        """What the figures suggest to look at, for the table and the JSON."""
        args = self.args
        hints = []
        errors: Counter[str] = Counter()
        for s in steps:
            errors.update(s["errors"])
        if errors["rate_limited"]:
            senders = max(1, report["connect"]["senders"])
            hints.append(
                f"the server rate-limited sends ({errors['rate_limited']}): each sender sent up to "
                f"{max(s.get('target_rate', 0) for s in steps) / senders:.0f} msg/s; spread the rate over more "
                "--users, or raise the per-connection and per-user limits of the cluster under test"
            )
        first_error = report["connect"]["first_error"] or ""
        if any(f"HTTP {code}" in first_error for code in (429, 503)):
            hints.append("connections were refused by a server limit or a server not ready: see first connect error")
        busy = report["generator"]["cpu_percent_of_one_core"] or 0
        if busy > 70 * report["procs"]:
            hints.append(
                f"the load generator was busy ({busy:.0f}% of one core over {report['procs']} process(es)): "
                "its own queueing is part of the latency; use --procs or another machine"
            )
        if any(s.get("still_arriving") for s in steps):
            p99 = max(s["latency_ms"]["p99"] or 0 for s in steps)
            hints.append(
                "deliveries were still arriving when the grace period ended: some 'lost' may only be late "
                f"(latency p99 {p99:.0f} ms); rerun with a --grace above that to tell loss from lateness"
            )
        lag = max((s["send_lag_ms"]["p99"] or 0) for s in steps if "send_lag_ms" in s) if "sent" in report else 0
        if lag > 50:
            hints.append(
                f"the generator fell behind its own schedule (send lag p99 {lag:.0f} ms): this machine is short "
                "of CPU, so latency figures include waiting for it"
            )
        if any(s.get("late") for s in steps):
            hints.append("some deliveries arrived after their step had ended (counted as lost)")
        if args.scenario == "public" and args.users * args.rate > 20000:
            hints.append("public fan-out multiplies: users x rate deliveries per second must reach this machine")
        return hints


# ================================================================================ output


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
