"""The chaos workload: logical clients that send, drop their connection at random moments, come
back on a random server (directly or through nginx) with ``resume``, and record everything.

A logical client is one user's device: it keeps, across its sessions, the last offset it saw per
channel (its position), the epochs it knows, and its unacked sends. Several logical clients may
share a username. Every text is unique (``<run>-<client>-<n>-<random>``) and every send has a
``cid``; a send refused with ``internal`` or ``rate_limited``, or cut off by a disconnect before
its ack, is sent again with the same ``cid`` and text (at most ``max_attempts`` times, then once
more when the run drains). Each client writes one JSONL file: the events ``checker`` reads.

The client speaks the public protocol only (``wsclient``: the load generator's lean client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wsclient import ClientConnection, ConnectionClosed, InvalidHandshake, InvalidStatus, connect

RETRYABLE = frozenset({"internal", "rate_limited"})
IGNORED = frozenset({"presence", "typing", "pong", "receipt", "who"})  # recorded, not acted on


@dataclass
class Options:
    rate_per_client: float  # sends per second, Poisson
    session_mean_s: float  # mean time between the client's own disconnects
    nginx_share: float  # share of connections opened through nginx (when there is one)
    resume_delay_s: float = 0.1  # half the sessions wait up to this long between welcome and resume
    late_resume_share: float = 0.0  # of all sessions, those that wait late_resume_s instead
    late_resume_s: float = 1.5  # beyond the server's wait for a resume (CHAT_RESUME_WAIT_MS, 1 s)
    max_attempts: int = 8
    max_pending: int = 4
    kinds: tuple[tuple[str, float], ...] = (("public", 0.3), ("private", 0.4), ("room", 0.3))


class Recorder:
    """One client's JSONL file: ``{"t", "e", ...}`` a line, ``t`` in seconds from the run's start."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self._file: IO[str] = path.open("w")
        self.clock = clock

    def __call__(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"t": round(self.clock(), 4), "e": event, **fields}) + "\n")

    def close(self) -> None:
        self._file.close()


class Targets:
    """Where a client may connect: the chat servers (refreshed as faults change them) and nginx."""

    def __init__(self, servers: Callable[[], list[str]], nginx: str | None, nginx_share: float) -> None:
        self._servers, self.nginx, self._share = servers, nginx, nginx_share

    def pick(self, rng: random.Random) -> str:
        servers = self._servers()
        if self.nginx and (not servers or rng.random() < self._share):
            return self.nginx
        return rng.choice(servers)


@dataclass
class _Send:
    cid: str
    frame: dict[str, Any]
    attempts: int = 0
    session: int = 0  # the session it was last sent on
    due: float | None = None  # when to send it again after a refusal
    gave_up: bool = False


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that swallowed
    the cancellation (Python 3.11's ``asyncio.wait_for`` does when what it waits for completes
    in the same turn, and a loop around it then goes on)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


def http_login(url: str, user: str, timeout_s: float = 30.0) -> str:
    """A token from ``POST /api/login`` (dev login); 429 and 503 are retried with backoff."""
    body = json.dumps({"username": user}).encode()
    request = urllib.request.Request(url + "/api/login", body, {"Content-Type": "application/json"}, method="POST")
    deadline, delay = time.monotonic() + timeout_s, 0.1
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return str(json.loads(response.read())["token"])
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or time.monotonic() > deadline:
                raise RuntimeError(f"login of {user} at {url}: HTTP {exc.code}") from None
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"login of {user} at {url}: {exc}") from None
        time.sleep(delay)
        delay = min(1.0, delay * 2)


def _ws_url(target: str, token: str) -> str:
    return "ws" + target.removeprefix("http") + "/ws?token=" + token


async def join_rooms(target: str, token: str, rooms: list[str], timeout_s: float = 10.0) -> None:
    """Make the token's user a member of ``rooms`` (durable), before the workload starts: its
    clients' welcome then names those channels, so their baseline covers them from the start."""
    conn = await connect(_ws_url(target, token), open_timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            waiting = set()
            for room in rooms:
                await conn.send(json.dumps({"type": "join", "room": room, "cid": f"join-{room}"}))
                waiting.add(f"join-{room}")
            while waiting:
                frame = json.loads(await conn.recv())
                if frame.get("type") == "error" and frame.get("cid") in waiting:
                    raise RuntimeError(f"join refused: {frame}")
                if frame.get("type") in ("ack", "presence"):  # v2 acks a join; v1 answers with presence
                    waiting.discard(frame.get("cid"))
    finally:
        await conn.close()


class Client:
    def __init__(
        self,
        name: str,
        user: str,
        token: str,
        peers: list[str],
        rooms: list[str],
        targets: Targets,
        rng: random.Random,
        rec: Recorder,
        run_id: str,
        opts: Options,
    ) -> None:
        self.name, self.user, self.token = name, user, token
        self.peers, self.rooms, self.targets, self.rng, self.rec = peers, rooms, targets, rng, rec
        self.run_id, self.opts = run_id, opts
        self.seen_max: dict[str, int] = {}  # channel -> highest offset seen (or declared)
        self.own: dict[str, set[int]] = {}  # channel -> offsets of its acked private sends
        self.epochs: dict[str, str] = {}
        self.pending: dict[str, _Send] = {}
        self.sent = 0
        self.session = 0
        self.conn: ClientConnection | None = None
        self.ready = False  # welcome seen and resume sent on the current session
        self.closed = asyncio.Event()
        self.closed.set()
        self._welcome: asyncio.Future[dict[str, Any]] | None = None
        self._at_welcome: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._resumed = asyncio.Event()
        self._resume_cid = ""
        self._unsynced = 0  # a session whose resume was refused: its messages move no position
        self._resumed_in = 0  # the session that sent its resume: no other one's messages move a position
        self._before_resume: dict[str, int] = {}
        # A session that resumes late gets live frames first, some even after its resume is sent
        # (in flight): they move no position until the replay goes back below them (it brings
        # them again) or ``resumed`` says there was no replay to wait for.
        self._late = False
        self._live_max: dict[str, int] = {}  # channel -> highest such live offset
        self._in_flight: dict[str, int] = {}  # the same, of those that came after the resume
        self._replaying: set[str] = set()  # channels whose replay has started
        self._close_after_send = False
        self.stats: dict[str, int] = {"sessions": 0, "connect_failures": 0, "gave_up": 0}

    # ------------------------------------------------------------------ positions

    def positions(self) -> dict[str, int]:
        """Per channel, the offset to resume from: the highest seen, carried over its own sends."""
        out = {}
        for channel, seen in self.seen_max.items():
            mine = self.own.get(channel, set())
            while seen + 1 in mine:
                seen += 1
            out[channel] = seen
        return out

    # ------------------------------------------------------------------ one session

    async def open(self, timeout_s: float = 5.0) -> bool:
        """Connect to a random target, take the welcome, send resume; False when that failed."""
        target = self.targets.pick(self.rng)
        try:
            conn = await connect(_ws_url(target, self.token), open_timeout=timeout_s)
        except InvalidStatus as exc:
            self.stats["connect_failures"] += 1
            self.rec("connect_failed", target=target, error=f"HTTP {exc.response.status_code}")
            return False
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            self.stats["connect_failures"] += 1
            self.rec("connect_failed", target=target, error=repr(exc)[:200])
            return False
        self.session += 1
        self.stats["sessions"] += 1
        session = self.session
        self.rec("connect", s=session, target=target)
        self.conn, self.ready = conn, False
        self.closed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._late, self._live_max, self._in_flight, self._replaying = False, {}, {}, set()
        self._welcome = asyncio.get_running_loop().create_future()
        conn.handle_with(lambda raw: self._on_message(session, raw), lambda: self._on_closed(session, conn))
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancellation
                await asyncio.shield(self._welcome)
        except (TimeoutError, ConnectionError) as exc:
            self.rec("no_welcome", s=session, error=repr(exc)[:200])
            await self.drop(abrupt=True)
            return False
        # Resume from where the client stood when the welcome came, even if it takes its time
        # (half the sessions do) and live traffic arrives meanwhile: that is the seam under test.
        # Some resume after the server stopped waiting: their live messages came first, and
        # after the resume they must come again, in order (the contract's seam).
        self._before_resume, positions = self._at_welcome
        roll = self.rng.random()
        if roll < 0.5:
            late = roll < self.opts.late_resume_share
            delay = self.rng.uniform(0.0, self.opts.resume_delay_s)
            if late:
                self._late = True
                self.rec("late_resume", s=session)
            await asyncio.sleep(self.opts.late_resume_s + delay if late else delay)
            if self.closed.is_set():
                return False
        self._resume_cid = f"r{session}"
        resume: dict[str, Any] = {"type": "resume", "positions": positions, "cid": self._resume_cid}
        if self.epochs:
            resume["epochs"] = dict(self.epochs)
        if not await self._write(resume):
            return False
        self._resumed_in = session
        self.ready = True
        return True

    async def drop(self, abrupt: bool) -> None:
        """End the current session: a close frame, or the TCP connection cut with none."""
        conn = self.conn
        if conn is None or self.closed.is_set():
            return
        self.ready = False
        self.rec("drop", s=self.session, abrupt=abrupt)
        if abrupt:
            transport = getattr(conn, "_transport", None)
            if transport is not None:
                transport.abort()
        else:
            await conn.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.closed.wait()

    async def _write(self, frame: dict[str, Any]) -> bool:
        conn = self.conn
        if conn is None or self.closed.is_set():
            return False
        try:
            await conn.send(json.dumps(frame))
        except (ConnectionClosed, ConnectionError):
            return False
        self.rec("out", s=self.session, f=frame)
        return True

    def _on_closed(self, session: int, conn: ClientConnection) -> None:
        if session != self.session or self.closed.is_set():
            return
        self.ready = False
        self.rec("closed", s=session, code=conn.close_code, reason=conn.close_reason[:100])
        self.closed.set()
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(ConnectionError(f"closed with {conn.close_code} before welcome"))

    def _on_message(self, session: int, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            self.rec("garbage", s=session, raw=str(raw)[:200])
            return
        self.rec("in", s=session, f=frame)
        kind = frame.get("type")
        if kind in IGNORED:
            return
        if kind == "welcome":
            epochs = frame.get("epochs") or {}
            for channel, offset in (frame.get("positions") or {}).items():
                if channel not in self.seen_max:  # a channel new to this client starts here
                    self.seen_max[channel] = int(offset)
                    if channel in epochs:
                        self.epochs[channel] = str(epochs[channel])
            if self._welcome is not None and not self._welcome.done():
                # Where the client stands when the welcome is read, before anything live: the
                # positions it resumes from, however long it then takes to send the resume.
                self._at_welcome = (dict(self.seen_max), self.positions())
                self._welcome.set_result(frame)
        elif kind == "message":
            channel, offset = frame.get("channel"), frame.get("offset")
            if session == self._unsynced or not isinstance(channel, str) or not isinstance(offset, int):
                return
            late = self._late and session == self.session and not self._resumed.is_set()
            if late and channel not in self._replaying:
                top = self._live_max.get(channel)
                if session != self._resumed_in or top is None or offset > top:
                    self._live_max[channel] = offset if top is None else max(top, offset)
                    if session == self._resumed_in:
                        self._in_flight[channel] = self._live_max[channel]
                    return
                self._replaying.add(channel)  # the replay went back: it counts from here
            if session != self._resumed_in:
                return
            if offset > self.seen_max.get(channel, -1):
                self.seen_max[channel] = offset
        elif kind == "ack":
            self._acked(frame)
        elif kind == "error":
            self._refused(frame)
        elif kind == "resumed":
            self._on_resumed(frame)

    def _acked(self, frame: dict[str, Any]) -> None:
        send = self.pending.pop(str(frame.get("cid")), None)
        if send is None or "id" not in frame:
            return
        channel = frame.get("channel")
        if send.frame["type"] == "private" and isinstance(channel, str) and isinstance(frame.get("offset"), int):
            self.own.setdefault(channel, set()).add(int(frame["offset"]))

    def _refused(self, frame: dict[str, Any]) -> None:
        if frame.get("cid") == self._resume_cid:
            # The server could not resume (Redis down, say): this session never joined the seam.
            # Start over from where the client stood before it, on a new session.
            self.seen_max.update(self._before_resume)
            self.ready, self._unsynced = False, self.session
            transport = getattr(self.conn, "_transport", None)
            if transport is not None:
                asyncio.get_running_loop().call_later(self.rng.uniform(0.2, 0.6), transport.abort)
            return
        send = self.pending.get(str(frame.get("cid")))
        if send is None:
            return
        if frame.get("code") in RETRYABLE:
            send.due = time.monotonic() + min(4.0, 0.25 * 2 ** min(send.attempts, 4)) * (0.5 + self.rng.random())
        else:
            self._give_up(send, f"refused: {frame.get('code')}")

    def _on_resumed(self, frame: dict[str, Any]) -> None:
        self._resumed.set()
        if frame.get("recovered", True):
            # A late session whose replay never went back below its in-flight frames: they were
            # the sequence after its resume (only a late session has any).
            for channel, top in self._in_flight.items():
                if channel not in self._replaying and top > self.seen_max.get(channel, -1):
                    self.seen_max[channel] = top
            return
        positions, epochs = frame.get("positions") or {}, frame.get("epochs") or {}
        for channel in frame.get("gaps") or []:
            if channel in epochs and str(epochs[channel]) != self.epochs.get(channel):
                self.epochs[channel] = str(epochs[channel])
                self.own.pop(channel, None)
                self.seen_max[channel] = int(positions.get(channel, 0))
            elif isinstance(positions.get(channel), int):
                self.seen_max[channel] = max(self.seen_max.get(channel, 0), int(positions[channel]))

    def _give_up(self, send: _Send, why: str) -> None:
        send.gave_up = True
        self.stats["gave_up"] += 1
        self.rec("gave_up", cid=send.cid, why=why, attempts=send.attempts)

    # ------------------------------------------------------------------ sending

    def unanswered(self) -> int:
        """Sends still waiting for an ack (those given up on not counted)."""
        return sum(not s.gave_up for s in self.pending.values())

    def _new_send(self) -> _Send:
        self.sent += 1
        cid = f"{self.name}-{self.sent}"
        text = f"{self.run_id}-{cid}-{self.rng.getrandbits(32):08x}"
        kind = self.rng.choices([k for k, _ in self.opts.kinds], [w for _, w in self.opts.kinds])[0]
        if kind == "room" and not self.rooms:
            kind = "public"
        frame: dict[str, Any] = {"type": kind, "text": text, "cid": cid}
        if kind == "private":
            frame["to"] = self.rng.choice(self.peers)
        elif kind == "room":
            frame["room"] = self.rng.choice(self.rooms)
        send = _Send(cid, frame)
        self.pending[cid] = send
        return send

    async def _transmit(self, send: _Send) -> None:
        if send.attempts >= self.opts.max_attempts:
            self._give_up(send, "attempts exhausted")
            return
        send.attempts += 1
        send.session, send.due = self.session, None
        if not await self._write(send.frame):
            send.session = 0  # not out: send it on the next session
            return
        if self._close_after_send:  # a disconnect before the ack, on purpose
            self._close_after_send = False
            await self.drop(abrupt=self.rng.random() < 0.5)

    async def _pump(self) -> None:
        """(Re)send what is due: sends not yet out on this session, and refused ones after backoff."""
        while True:
            now = time.monotonic()
            for send in list(self.pending.values()):
                if not self.ready:  # not yet, or no longer: a send may have dropped the session
                    break
                if send.gave_up or send.cid not in self.pending:
                    continue
                if send.session != self.session or (send.due is not None and now >= send.due):
                    await self._transmit(send)
            await asyncio.sleep(0.05)

    async def _keep_connected(self) -> None:
        while True:
            await self.closed.wait()
            await asyncio.sleep(self.rng.uniform(0.02, 0.3))
            if not await self.open():
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.opts.rate_per_client))
            if self.unanswered() < self.opts.max_pending:
                send = self._new_send()
                if self.ready:
                    await self._transmit(send)

    async def _chaos_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(1.0 / self.opts.session_mean_s))
            if not self.ready:
                continue
            roll = self.rng.random()
            if roll < 0.3:
                self._close_after_send = True  # the next send is cut off before its ack
            else:
                await self.drop(abrupt=roll < 0.65)

    # ------------------------------------------------------------------ phases

    async def start(self, deadline: float) -> bool:
        """The first session, before anyone sends: its welcome is the client's baseline."""
        while time.monotonic() < deadline:
            if await self.open():
                return True
            await asyncio.sleep(0.3)
        return False

    async def live(self, stop: asyncio.Event) -> None:
        """Send, drop, reconnect and resume until ``stop``."""
        tasks = [
            asyncio.create_task(c)
            for c in (self._keep_connected(), self._pump(), self._send_loop(), self._chaos_loop())
        ]
        try:
            await stop.wait()
        finally:
            await cancel_and_wait(tasks)
            self._close_after_send = False

    async def drain(self, deadline: float) -> None:
        """No new sends: give each unacked send one more chance, and wait for the acks."""
        for send in self.pending.values():
            if send.gave_up:
                send.gave_up, send.session, send.due = False, 0, None
                send.attempts = self.opts.max_attempts - 1  # one more attempt
        if not self.ready:  # a session stopped before its resume: start one that resumes
            await self.drop(abrupt=False)
        tasks = [asyncio.create_task(c) for c in (self._keep_connected(), self._pump())]
        try:
            while time.monotonic() < deadline and self.unanswered():  # noqa: ASYNC110 (a poll with a deadline)
                await asyncio.sleep(0.1)
        finally:
            await cancel_and_wait(tasks)
        for send in self.pending.values():
            if not send.gave_up:
                self._give_up(send, "no ack when the run ended")
        await self.drop(abrupt=False)

    async def final(self, deadline: float) -> bool:
        """Reconnect once more, resume, and wait until every channel reaches the welcome's
        position (the latest): late messages are then seen, not counted lost."""
        self.rec("final")
        reached, latest = False, {}
        while not reached and time.monotonic() < deadline:
            if not await self.open(timeout_s=max(0.5, min(5.0, deadline - time.monotonic()))):
                await asyncio.sleep(0.3)
                continue
            welcome = self._welcome.result() if self._welcome is not None and self._welcome.done() else {}
            latest = {c: int(o) for c, o in (welcome.get("positions") or {}).items()}
            while time.monotonic() < deadline and not self.closed.is_set():
                mine = self.positions()
                if self._resumed.is_set() and all(mine.get(c, -1) >= o for c, o in latest.items()):
                    reached = True
                    break
                await asyncio.sleep(0.05)
        self.rec("final_done", reached=reached, positions=self.positions(), latest=latest)
        await self.drop(abrupt=False)
        return reached
