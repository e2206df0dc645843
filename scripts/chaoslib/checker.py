"""The checker: what every client saw, held against what the protocol promises.

Pure code over records (no cluster, no clock): ``load(DIR)`` reads what a run wrote, ``check``
returns a ``Verdict`` with a table per fault kind and every violation found. In the spirit of
Jepsen's set and queue workloads, each logical client (one that reconnects and resumes across
sessions) is checked on its own, then every acked message against everyone who should have it.

Records. ``meta.json`` names the clients (``{client: {"user": name}}``), the rooms (``{room:
[users]}``), the faults (``[{"kind", "start", "end"}]``, seconds from the start of the run) and
``settle`` (how long after a fault its effects are still counted against it). ``clients/<c>.jsonl``
holds one event a line, in the order the client saw them: ``{"t", "e": "connect", "s"}`` (a new
session), ``{"t", "e": "in", "s", "f": frame}`` (every frame received), ``{"t", "e": "out", "s",
"f": frame}`` (every frame sent), ``{"t", "e": "closed", "s", "code"}``.

The rules, per client and channel (and epoch: a channel whose offsets were reset starts over):

- doubled / reordered: message offsets grow strictly across the client's whole life, and after
  a ``resume`` they grow strictly from the resume offset; an offset seen again is doubled, a
  lower one never seen is reordered. A session that resumed late on purpose (``{"e":
  "late_resume"}``: after the server stopped waiting, so live messages came first) is judged from
  where its replay starts (the first offset at or below one the session already had; a frame
  can be in flight while the resume is), or from its ``resumed`` if the replay never goes back:
  what it got before counts as seen (for lost) but not for order or gaps, so the sequence after
  the resume must bring it again, in its place (the contract's seam), or it is a gap.
- gaps: every offset between the client's baseline (the first welcome's position) and its final
  position is a message it saw, or its own send (acked, or unacked but found by its unique text
  in anyone's records), or lies in a range the server declared lost (``recovered: false`` naming
  the channel: from the resume offset up to the ``positions`` given, or to the next offset seen).
- lost: every acked message is seen by every client of its audience whose range covers its offset
  (public: everyone; room: the members' clients; private: the recipient's clients and the sender's
  other clients). An acked message inside a declared-lost range is still lost.
- A session whose ``resume`` was refused (an ``error`` with its cid: say Redis was down), or that
  never sent one (the run stopped its client after the welcome; the server's wait for the resume
  ran out and it went live from the welcome's position), never joined its seam: the client
  resumes from where it stood before on a later session, so the messages that session got count
  as seen (for lost) but not for order.
- phantom: a message whose text no client sent (or sent as another user, kind or channel).
- conflict: two ids at one (channel, offset), one id at two offsets, one send stored twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("none", "kill-server", "kafka-stop", "redis-restart", "scale")
VIOLATIONS = ("lost", "doubled", "reordered", "gaps", "phantom", "conflict")
COLUMNS = ("acked", "delivered", *VIOLATIONS, "unacked")
SEND_TYPES = ("public", "private", "room")

Key = tuple[str, str]  # (channel, segment): the segment is the channel's epoch ("" when unknown)


@dataclass
class Run:
    """Everything a run recorded: the input of ``check``."""

    clients: dict[str, str]  # logical client -> username
    rooms: dict[str, list[str]]  # room -> member usernames
    events: dict[str, list[dict[str, Any]]]  # logical client -> its events, in order
    faults: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "start", "end"}
    settle: float = 3.0


@dataclass
class Violation:
    kind: str  # one of VIOLATIONS
    fault: str  # the row of the table it counts in
    t: float
    client: str
    channel: str
    offsets: str
    ids: list[str]
    detail: str

    def line(self) -> str:
        ids = ",".join(self.ids) or "-"
        return (
            f"{self.kind} [{self.fault}] t={self.t:.2f}s client {self.client} {self.channel} "
            f"offset {self.offsets} id {ids}: {self.detail}"
        )


@dataclass
class Send:
    client: str
    user: str
    cid: str
    kind: str
    text: str
    to: str | None
    room: str | None
    first_t: float
    ack: dict[str, Any] | None = None
    ack_t: float | None = None
    ack_seg: str = ""
    ack_ids: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)  # error codes answered to it


@dataclass
class Seen:
    client: str
    session: int
    t: float
    channel: str
    seg: str
    offset: int
    id: str
    text: str
    sender: str
    kind: str


@dataclass
class Verdict:
    rows: dict[str, dict[str, int]]
    recover: dict[str, float | None]  # per kind: seconds, None = some send never acked
    events: dict[str, int]  # faults per kind
    violations: list[Violation]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations and self.total("acked") > 0

    def total(self, column: str) -> int:
        return sum(row[column] for row in self.rows.values())

    def table(self) -> str:
        head = ["fault", "events", *COLUMNS, "recover_s"]
        lines = []
        for kind in [*self.rows, "total"]:
            if kind == "total":
                cells = [str(self.total(c)) for c in COLUMNS]
                events, recover = str(sum(self.events.values())), _seconds(self._worst_recover())
            else:
                row = self.rows[kind]
                cells = [str(row[c]) for c in COLUMNS]
                events = str(self.events.get(kind, 0)) if kind != "none" else "-"
                recover = _seconds(self.recover.get(kind, 0.0)) if self.events.get(kind) else "-"
            lines.append([kind, events, *cells, recover])
        widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
        fmt = [f"{c:<{widths[i]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(head)]
        out = ["  ".join(fmt)]
        for r in lines:
            out.append("  ".join(f"{c:<{widths[i]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(r)))
        return "\n".join(out)

    def _worst_recover(self) -> float | None:
        worst = 0.0
        for kind, seconds in self.recover.items():
            if self.events.get(kind):
                if seconds is None:
                    return None
                worst = max(worst, seconds)
        return worst

    def report(self, first: int = 10) -> str:
        by_kind = {k: sum(1 for v in self.violations if v.kind == k) for k in VIOLATIONS}
        lines = [self.table(), ""]
        if self.violations:
            counts = ", ".join(f"{n} {k}" for k, n in by_kind.items() if n)
            shown = self.first(first)
            lines.append(f"FAIL: {len(self.violations)} violations ({counts}); the first of each kind:")
            lines += [f"  {v.line()}" for v in shown]
        elif self.total("acked") == 0:
            lines.append("FAIL: no message was acked: the run measured nothing")
        else:
            acked, delivered = self.total("acked"), self.total("delivered")
            lines.append(f"PASS: {acked} acked messages, {delivered} deliveries, no violation")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def first(self, n: int) -> list[Violation]:
        """Up to ``n`` violations, the earliest of each kind in turn, in time order."""
        queues = [sorted((v for v in self.violations if v.kind == k), key=lambda v: v.t) for k in VIOLATIONS]
        picked: list[Violation] = []
        while len(picked) < n and any(queues):
            for queue in queues:
                if queue and len(picked) < n:
                    picked.append(queue.pop(0))
        return sorted(picked, key=lambda v: v.t)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "totals": {c: self.total(c) for c in COLUMNS},
            "recover_s": self.recover,
            "events": self.events,
            "violations": [v.__dict__ for v in sorted(self.violations, key=lambda v: v.t)],
            "notes": self.notes,
        }


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------------------- loading


def load(out: Path) -> Run:
    """The records a run wrote under ``out`` (``meta.json`` and ``clients/*.jsonl``)."""
    meta = json.loads((out / "meta.json").read_text())
    events = {}
    for client in meta["clients"]:
        path = out / "clients" / f"{client}.jsonl"
        events[client] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Run(
        clients={c: info["user"] for c, info in meta["clients"].items()},
        rooms=meta.get("rooms", {}),
        events=events,
        faults=meta.get("faults", []),
        settle=float(meta.get("settle", 3.0)),
    )


# ---------------------------------------------------------------------------- one client's life


class _Client:
    """Replays one logical client's events: its segments, baselines, what it saw and when."""

    def __init__(self, name: str, user: str, sink: list[Violation]) -> None:
        self.name, self.user = name, user
        self.sink = sink
        self.segment: dict[str, str] = {}  # channel -> current segment
        self.baseline: dict[Key, int] = {}
        self.last: dict[Key, int] = {}
        self.floor: dict[Key, int] = {}  # the last resume's offset: later frames must be above it
        self.seen: dict[Key, dict[int, str]] = defaultdict(dict)  # offset -> id
        self.ids: dict[str, set[str]] = defaultdict(set)  # channel -> ids seen (any segment)
        self.own: dict[Key, set[int]] = defaultdict(set)  # offsets of its own acked sends
        self.declared: dict[Key, list[list[int | None]]] = defaultdict(list)  # lost (lo, hi]
        self.resume_at: dict[str, int] = {}
        self.first_welcome: float | None = None
        self.resets = 0
        self.session = 0
        self.resume_cid: str | None = None  # the current session's resume
        self.before_resume: dict[Key, int] = {}  # ``last`` when it was sent
        self.since_resume: list[tuple[Key, int]] = []  # offsets first seen since
        self.unsynced = 0  # a session whose resume was refused: its frames count as seen, not for order
        self.resuming: set[int] = set()  # sessions that sent a resume (``replay`` finds them)
        self.resumed_in = 0  # the session whose resume has been sent
        self.late: set[int] = set()  # sessions that resumed after the server stopped waiting
        # A late session's live frames, until its replay starts (an offset at or below one it
        # already had) or its ``resumed`` comes: then they are judged, or dropped as repeated.
        self.held_back: dict[Key, list[tuple[float, int, str]]] = defaultdict(list)
        self.pre_max: dict[Key, int] = {}  # the highest of those per channel
        self.placed: set[Key] = set()  # channels whose replay started: judged as they come
        self.settled = False  # the late session's ``resumed`` came: everything is judged
        self.replaying = False  # between a resume and its resumed
        self.observed: list[Seen] = []
        self.acks: list[tuple[float, dict[str, Any], str]] = []  # (t, ack frame, segment)

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        events = list(events)
        self.resuming = {  # sessions that sent a resume: the others never joined the seam
            int(ev.get("s", 0)) for ev in events if ev.get("e") == "out" and ev["f"].get("type") == "resume"
        }
        self.late = {int(ev.get("s", 0)) for ev in events if ev.get("e") == "late_resume"}
        for ev in events:
            kind, t = ev.get("e"), float(ev.get("t", 0.0))
            if kind == "connect":
                self.session = int(ev.get("s", self.session + 1))
                self.resume_cid, self.replaying = None, False
                self.held_back, self.pre_max, self.placed, self.settled = defaultdict(list), {}, set(), False
            elif kind == "out":
                self._sent(ev["f"])
            elif kind == "in":
                self._received(t, self.session, ev["f"])

    def _sent(self, frame: dict[str, Any]) -> None:
        if frame.get("type") != "resume":
            return
        self.resume_cid, self.replaying = str(frame.get("cid")), True
        self.resumed_in = self.session
        self.before_resume = dict(self.last)
        self.since_resume = []
        for channel, offset in (frame.get("positions") or {}).items():
            if channel in self.segment:
                key = (channel, self.segment[channel])
                self.floor[key] = int(offset)
                self.resume_at[channel] = int(offset)
                if self.session in self.late and key in self.last:  # its order starts at the resume
                    self.last[key] = min(self.last[key], int(offset))

    def _resume_refused(self) -> None:
        """The server could not resume this session (``error`` with the resume's cid): the client
        drops it and resumes from where it stood before, so what this session delivered will come
        again. It counts as seen (for lost), not for order."""
        self.unsynced = self.session
        for key, offset in self.since_resume:
            self.seen[key].pop(offset, None)
        self.last.update(self.before_resume)
        for (channel, seg), offset in self.before_resume.items():
            if self.segment.get(channel) == seg:
                self.floor[(channel, seg)] = offset
        self.since_resume = []

    def _received(self, t: float, session: int, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            epochs = frame.get("epochs") or {}
            for channel, offset in (frame.get("positions") or {}).items():
                if channel not in self.segment:  # new to this client: it starts from here
                    seg = str(epochs.get(channel, ""))
                    self.segment[channel] = seg
                    self.baseline[(channel, seg)] = self.last[(channel, seg)] = int(offset)
            if self.first_welcome is None:
                self.first_welcome = t
        elif kind == "message":
            self._message(t, session, frame)
        elif kind == "ack" and "id" in frame and "channel" in frame:
            seg = self.segment.get(frame["channel"], "")
            self.own[(frame["channel"], seg)].add(int(frame["offset"]))
            self.acks.append((t, frame, seg))
        elif kind == "resumed":
            self.replaying = False
            if not frame.get("recovered", True):
                self._declared_lost(frame)
            if session in self.late and session == self.resumed_in and not self.settled:
                self.settled = True  # no replay went back: what came live was the sequence
                for key, frames in self.held_back.items():
                    for at, offset, mid in frames:
                        self._judge(at, session, key, offset, mid)
                self.held_back = defaultdict(list)
        elif kind == "error" and self.resume_cid is not None and frame.get("cid") == self.resume_cid:
            self._resume_refused()

    def _declared_lost(self, frame: dict[str, Any]) -> None:
        positions, epochs = frame.get("positions") or {}, frame.get("epochs") or {}
        for channel in frame.get("gaps") or []:
            if channel not in self.segment:
                continue
            old = self.segment[channel]
            start = self.resume_at.get(channel, self.last.get((channel, old), 0))
            now = positions.get(channel)
            epoch = epochs.get(channel)
            if (epoch is not None and str(epoch) != old) or (now is not None and int(now) < start):
                self.resets += 1  # a new epoch: offsets start over, from the position given
                seg = str(epoch) if epoch is not None else f"{self.name}:reset{self.resets}"
                self.segment[channel] = seg
                self.baseline[(channel, seg)] = self.last[(channel, seg)] = int(now or 0)
            else:
                self.declared[(channel, old)].append([start, None if now is None else int(now)])

    def _message(self, t: float, session: int, frame: dict[str, Any]) -> None:
        channel, offset, mid = str(frame["channel"]), int(frame["offset"]), str(frame["id"])
        if channel not in self.segment:  # a channel no welcome named: start just below it
            self.segment[channel] = ""
            self.baseline[(channel, "")] = self.last[(channel, "")] = offset - 1
        seg = self.segment[channel]
        key = (channel, seg)
        for span in self.declared[key]:
            if span[1] is None:  # "up to the next offset seen"
                span[1] = max(int(span[0] or 0), offset - 1)
        text, sender, kind = str(frame.get("text", "")), str(frame.get("from", "")), str(frame.get("kind", ""))
        seen = Seen(self.name, session, t, channel, seg, offset, mid, text, sender, kind)
        self.observed.append(seen)
        self.ids[channel].add(mid)
        if session == self.unsynced or session not in self.resuming:
            return
        if session in self.late and not self.settled and key not in self.placed:
            # Live before a late resume, or in flight when the server read it: the sequence
            # after the resume must bring it again. The replay starts with the first offset at
            # or below one the session already had; from there the seam is judged.
            top = self.pre_max.get(key)
            if session == self.resumed_in and top is not None and offset <= top:
                self.placed.add(key)
                self.held_back.pop(key, None)
            else:
                self.pre_max[key] = offset if top is None else max(top, offset)
                if session == self.resumed_in:
                    self.held_back[key].append((t, offset, mid))
                return
        self._judge(t, session, key, offset, mid)

    def _judge(self, t: float, session: int, key: Key, offset: int, mid: str) -> None:
        """Offsets grow strictly: one seen again is doubled, a lower one never seen reordered."""
        channel = key[0]
        floor = max(self.last[key], self.floor.get(key, self.last[key]))
        if offset <= floor:
            before = self.seen[key].get(offset)
            how = "replayed after its resume" if self.replaying else "live"
            if before is not None:
                what = "doubled"
                detail = f"seen again in session {session}, {how}, after offset {floor} (first copy id {before})"
            else:
                what = "reordered"
                detail = f"arrived in session {session}, {how}, after offset {floor}"
                self.seen[key][offset] = mid
                self.since_resume.append((key, offset))
            self.sink.append(Violation(what, "", t, self.name, channel, str(offset), [mid], detail))
            return
        self.seen[key][offset] = mid
        self.last[key] = offset
        self.since_resume.append((key, offset))

    def explained(self, key: Key, offset: int, unacked: set[int]) -> bool:
        if offset in self.seen[key] or offset in self.own[key] or offset in unacked:
            return True
        return self.declared_lost(key, offset)

    def declared_lost(self, key: Key, offset: int) -> bool:
        return any(lo is not None and hi is not None and lo < offset <= hi for lo, hi in self.declared[key])

    def covers(self, key: Key, offset: int) -> bool:
        """Whether this client should see ``offset`` of ``key``: it is above its baseline."""
        return key in self.baseline and self.baseline[key] < offset


# ---------------------------------------------------------------------------- the whole run


def check(run: Run) -> Verdict:
    violations: list[Violation] = []
    clients = {name: _Client(name, user, violations) for name, user in run.clients.items()}
    for name, client in clients.items():
        client.replay(run.events.get(name, []))
    sends = _sends(run)
    for client in clients.values():
        for t, ack, seg in client.acks:
            send = sends.get((client.name, str(ack.get("cid"))))
            if send is not None:
                send.ack_ids.add(str(ack["id"]))
                if send.ack is None:
                    send.ack, send.ack_t, send.ack_seg = ack, t, seg
    index = _Index(clients, sends)
    _phantoms(index, run, violations)
    _conflicts(index, violations)
    _gaps(index, violations)
    delivered = _lost(index, run, violations)

    def fault_of(t: float) -> str:
        for fault in run.faults:
            if float(fault["start"]) <= t < float(fault["end"]) + run.settle:
                return str(fault["kind"])
        return "none"

    rows = {k: dict.fromkeys(COLUMNS, 0) for k in KINDS}
    for k in {str(f["kind"]) for f in run.faults} - set(rows):
        rows[k] = dict.fromkeys(COLUMNS, 0)
    for v in violations:
        v.fault = fault_of(index.sent_at(v.ids[0], v.t) if v.ids else v.t)
        rows[v.fault][v.kind] += _span_size(v.offsets) if v.kind == "gaps" else 1
    for send in sends.values():
        rows[fault_of(send.first_t)]["acked" if send.ack is not None else "unacked"] += 1
    for send, n in delivered:
        rows[fault_of(send.first_t)]["delivered"] += n
    notes = []
    refused = sorted({c for s in sends.values() if s.ack is None for c in s.refused})
    if refused:
        notes.append(f"unacked sends were refused with: {', '.join(refused)}")
    events: dict[str, int] = defaultdict(int)
    recover: dict[str, float | None] = {}
    for fault in run.faults:
        kind = str(fault["kind"])
        events[kind] += 1
        seconds, previous = _recovery(fault, sends.values()), recover.get(kind, 0.0)
        recover[kind] = None if seconds is None or previous is None else max(previous, seconds)
    return Verdict(rows, recover, dict(events), violations, notes)


class _Index:
    """Every observation of the run, by key, by id and by text; sends by text and by id."""

    def __init__(self, clients: dict[str, _Client], sends: dict[tuple[str, str], Send]) -> None:
        self.clients, self.sends = clients, sends
        self.seen = [o for c in clients.values() for o in c.observed]
        self.by_key: dict[Key, dict[int, list[Seen]]] = defaultdict(lambda: defaultdict(list))
        self.by_id: dict[str, list[Seen]] = defaultdict(list)
        self.by_text: dict[str, list[Seen]] = defaultdict(list)
        for o in self.seen:
            self.by_key[(o.channel, o.seg)][o.offset].append(o)
            self.by_id[o.id].append(o)
            self.by_text[o.text].append(o)
        self.send_of_text = {s.text: s for s in sends.values()}
        self.send_of_id = {mid: s for s in sends.values() for mid in s.ack_ids}

    def sent_at(self, mid: str, fallback: float) -> float:
        """When the message ``mid`` was first sent (by its ack, else by its text)."""
        send = self.send_of_id.get(mid)
        if send is None:
            texts = self.by_id.get(mid, [])
            send = self.send_of_text.get(texts[0].text) if texts else None
        return send.first_t if send is not None else fallback


def _gaps(index: _Index, sink: list[Violation]) -> None:
    """Every offset between a client's baseline and its final position is explained."""
    for client in index.clients.values():
        mine = [s for s in index.sends.values() if s.client == client.name and s.ack is None]
        for key, base in client.baseline.items():
            unacked = {o.offset for s in mine for o in index.by_text.get(s.text, []) if (o.channel, o.seg) == key}
            tops = [client.last.get(key, base), *client.own[key]]
            tops += [int(hi) for _, hi in client.declared[key] if hi is not None]
            missing = [o for o in range(base + 1, max(tops) + 1) if not client.explained(key, o, unacked)]
            for lo, hi in _ranges(missing):
                later = [s.t for s in client.observed if (s.channel, s.seg) == key and s.offset > hi]
                noticed = min(later, default=0.0)
                others = [o for off in range(lo, hi + 1) for o in index.by_key[key].get(off, [])]
                ids = sorted({o.id for o in others})
                t = min((index.sent_at(o.id, noticed) for o in others), default=noticed)
                span = str(lo) if lo == hi else f"{lo}-{hi}"
                detail = f"{hi - lo + 1} offset(s) never seen, not its own, not declared lost (baseline {base})"
                sink.append(Violation("gaps", "", t, client.name, key[0], span, ids[:5], detail))


def _lost(index: _Index, run: Run, sink: list[Violation]) -> list[tuple[Send, int]]:
    """Every acked message reaches its whole audience; returns the deliveries per send."""
    members = {room: set(users) for room, users in run.rooms.items()}
    delivered = []
    for send in index.sends.values():
        if send.ack is None:
            continue
        mid, n = str(send.ack["id"]), 0
        for target, channel, at in _audience(send, index, members):
            if mid in target.ids[channel]:
                n += 1
                continue
            if at is None:
                due = target.first_welcome is not None and target.first_welcome < send.first_t
                where = "?"
            else:
                key, offset = at
                due, where = target.covers(key, offset), str(offset)
                if target.declared_lost(key, offset):
                    where += " (declared lost by the server)"
            if due:
                detail = f"acked {send.kind} message of {send.client} ({send.user}) never reached {target.user}"
                sink.append(Violation("lost", "", send.first_t, target.name, channel, where, [mid], detail))
        delivered.append((send, n))
    return delivered


def _sends(run: Run) -> dict[tuple[str, str], Send]:
    sends: dict[tuple[str, str], Send] = {}
    for client, events in run.events.items():
        for ev in events:
            f = ev.get("f") or {}
            if ev.get("e") == "out" and f.get("type") in SEND_TYPES and f.get("cid") is not None:
                key = (client, str(f["cid"]))
                if key not in sends:
                    sends[key] = Send(
                        client, run.clients[client], str(f["cid"]), str(f["type"]), str(f.get("text", "")),
                        f.get("to"), f.get("room"), float(ev.get("t", 0.0)),
                    )  # fmt: skip
            elif ev.get("e") == "in" and f.get("type") == "error" and (client, str(f.get("cid"))) in sends:
                sends[(client, str(f["cid"]))].refused.append(str(f.get("code")))
    return sends


def _audience(
    send: Send, index: _Index, members: dict[str, set[str]]
) -> Iterable[tuple[_Client, str, tuple[Key, int] | None]]:
    """(client, channel, (key, offset), or None when unknown) for everyone who should see ``send``."""
    assert send.ack is not None
    own = ((str(send.ack["channel"]), send.ack_seg), int(send.ack["offset"]))
    clients = index.clients.values()
    if send.kind == "public":
        for c in clients:
            yield c, "public", own
    elif send.kind == "room":
        for c in clients:
            if c.user in members.get(send.room or "", set()):
                yield c, f"room:{send.room}", own
    else:
        theirs = f"user:{send.to}"
        found = next((o for o in index.by_id.get(str(send.ack["id"]), []) if o.channel == theirs), None)
        at = None if found is None else ((theirs, found.seg), found.offset)
        for c in clients:
            if c.user == send.to:
                yield c, theirs, at
            elif c.user == send.user and c.name != send.client:
                yield c, f"user:{send.user}", own


def _phantoms(index: _Index, run: Run, sink: list[Violation]) -> None:
    """Nothing arrives that was never sent, or arrives as something else than was sent."""
    for o in index.seen:
        send = index.send_of_text.get(o.text)
        if send is None:
            why = "no client sent this text"
        elif send.user != o.sender or send.kind != o.kind:
            why = f"{send.client} sent it as a {send.kind} message of {send.user}, it came as {o.kind} from {o.sender}"
        elif o.channel not in _channels_of(send):
            why = f"{send.client}'s {send.kind} message arrived in {o.channel}"
        else:
            continue
        sink.append(Violation("phantom", "", o.t, o.client, o.channel, str(o.offset), [o.id], why))


def _channels_of(send: Send) -> set[str]:
    if send.kind == "public":
        return {"public"}
    if send.kind == "room":
        return {f"room:{send.room}"}
    return {f"user:{send.to}", f"user:{send.user}"}


def _conflicts(index: _Index, sink: list[Violation]) -> None:
    """One id per (channel, offset), one offset per (channel, id), one id per send."""
    at: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)  # -> {id: first seen}
    where: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)  # -> {offset: first seen}
    for o in index.seen:
        at[(o.channel, o.seg, o.offset)].setdefault(o.id, o.t)
        where[(o.channel, o.seg, o.id)].setdefault(o.offset, o.t)
    for send in index.sends.values():
        if send.ack is not None and send.ack_t is not None:
            channel, offset = str(send.ack["channel"]), int(send.ack["offset"])
            at[(channel, send.ack_seg, offset)].setdefault(str(send.ack["id"]), send.ack_t)
            where[(channel, send.ack_seg, str(send.ack["id"]))].setdefault(offset, send.ack_t)
    for (channel, _, offset), ids in at.items():
        if len(ids) > 1:
            t = min(ids.values())
            sink.append(Violation("conflict", "", t, "-", channel, str(offset), sorted(ids), "two ids at one offset"))
    for (channel, _, mid), offsets in where.items():
        if len(offsets) > 1:
            span = ",".join(map(str, sorted(offsets)))
            t = min(offsets.values())
            sink.append(Violation("conflict", "", t, "-", channel, span, [mid], "one id at several offsets"))
    for send in index.sends.values():
        stored_as = send.ack_ids | {o.id for o in index.by_text.get(send.text, [])}
        if len(stored_as) > 1:
            detail = f"one send (cid {send.cid}) stored under {len(stored_as)} ids"
            sink.append(Violation("conflict", "", send.first_t, send.client, send.kind, "-", sorted(stored_as), detail))


def _recovery(fault: dict[str, Any], sends: Iterable[Send]) -> float | None:
    """Seconds from the fault's end until every send it caught (made before its end, not acked
    before its start) is acked; None when one of them never was."""
    start, end = float(fault["start"]), float(fault["end"])
    worst = 0.0
    for s in sends:
        if s.first_t > end or (s.ack_t is not None and s.ack_t < start):
            continue
        if s.ack_t is None:
            return None
        worst = max(worst, s.ack_t - end)
    return worst


def _ranges(offsets: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o in offsets:
        if out and out[-1][1] == o - 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


def _span_size(span: str) -> int:
    lo, _, hi = span.partition("-")
    return int(hi) - int(lo) + 1 if hi else 1
