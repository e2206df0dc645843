"""The chaos checker (scripts/chaoslib/checker.py) on small hand-made records: a clean record
passes, and each kind of violation is found, named and counted in the right row."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from chaoslib import checker
from chaoslib.checker import Run, check

USERS = {"a1": "alice", "a2": "alice", "b1": "bob"}
ROOMS = {"r": ["alice", "bob"]}


class Records:
    """Events of logical clients a1, a2 (alice) and b1 (bob), with a clock that ticks by itself."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.t = 0.0
        self.faults: list[dict[str, Any]] = []
        self.sessions: dict[str, int] = defaultdict(int)

    def _add(self, client: str, e: str, t: float | None = None, **fields: Any) -> None:
        self.t = self.t + 0.01 if t is None else t
        self.events[client].append({"t": self.t, "e": e, "s": self.sessions[client], **fields})

    def connect(self, client: str, positions: dict[str, int], epochs: dict[str, str] | None = None) -> None:
        """A new session: welcome with ``positions``, then resume from the client's own."""
        self.sessions[client] += 1
        self._add(client, "connect", target="ws://127.0.0.1:1")
        welcome: dict[str, Any] = {"type": "welcome", "user": USERS[client], "positions": positions}
        if epochs is not None:
            welcome["epochs"] = epochs
        self._add(client, "in", f=welcome)

    def resume(self, client: str, positions: dict[str, int]) -> None:
        self._add(client, "out", f={"type": "resume", "positions": positions, "cid": f"r{self.sessions[client]}"})

    def late(self, client: str) -> None:
        """The client waits past the server's wait for its resume (the workload says so)."""
        self._add(client, "late_resume")

    def resumed(self, client: str, **fields: Any) -> None:
        self._add(client, "in", f={"type": "resumed", "recovered": True, **fields})

    def send(self, client: str, kind: str, cid: str, text: str, t: float | None = None, **fields: Any) -> None:
        self._add(client, "out", t, f={"type": kind, "cid": cid, "text": text, **fields})

    def ack(self, client: str, cid: str, mid: str, channel: str, offset: int, t: float | None = None) -> None:
        frame = {"type": "ack", "cid": cid, "id": mid, "ts": 1, "channel": channel, "offset": offset}
        self._add(client, "in", t, f=frame)

    def error(self, client: str, cid: str, code: str) -> None:
        self._add(client, "in", f={"type": "error", "code": code, "message": "x", "cid": cid})

    def message(self, client: str, channel: str, offset: int, mid: str, text: str, sender: str, kind: str) -> None:
        frame = {"type": "message", "id": mid, "channel": channel, "offset": offset, "kind": kind}
        frame.update({"from": sender, "text": text, "ts": 1})
        if kind == "room":
            frame["room"] = channel.split(":", 1)[1]
        self._add(client, "in", f=frame)

    def run(self) -> Run:
        return Run(clients=USERS, rooms=ROOMS, events=dict(self.events), faults=self.faults, settle=1.0)


def start(rec: Records) -> None:
    """Every client connects: public at 10, user channels and the room empty."""
    for client, user in USERS.items():
        positions = {"public": 10, f"user:{user}": 0, "room:r": 0}
        rec.connect(client, positions)
        rec.resume(client, positions)
        rec.resumed(client)


def clean(rec: Records) -> None:
    """A public, a private and a room message, each acked and seen by its whole audience."""
    start(rec)
    rec.send("a1", "public", "a1-1", "a1-1-x")
    rec.ack("a1", "a1-1", "m1", "public", 11)
    for client in USERS:
        rec.message(client, "public", 11, "m1", "a1-1-x", "alice", "public")
    rec.send("a1", "private", "a1-2", "a1-2-x", to="bob")
    rec.ack("a1", "a1-2", "m2", "user:alice", 1)
    rec.message("b1", "user:bob", 1, "m2", "a1-2-x", "alice", "private")
    rec.message("a2", "user:alice", 1, "m2", "a1-2-x", "alice", "private")
    rec.send("b1", "room", "b1-1", "b1-1-x", room="r")
    rec.ack("b1", "b1-1", "m3", "room:r", 1)
    for client in USERS:
        rec.message(client, "room:r", 1, "m3", "b1-1-x", "bob", "room")


def kinds(verdict: checker.Verdict) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in verdict.violations:
        counts[v.kind] += 1
    return dict(counts)


def test_a_clean_record_passes() -> None:
    rec = Records()
    clean(rec)
    # a1 reconnects and resumes from what it saw: nothing is replayed, nothing is missing
    rec.connect("a1", {"public": 11, "user:alice": 1, "room:r": 1})
    rec.resume("a1", {"public": 11, "user:alice": 1, "room:r": 1})
    rec.resumed("a1")
    verdict = check(rec.run())
    assert verdict.violations == []
    assert verdict.ok
    assert verdict.rows["none"]["acked"] == 3
    assert verdict.rows["none"]["delivered"] == 3 + 2 + 3  # public to all, private to bob and a2, room to all
    assert "PASS" in verdict.report()


def test_nothing_acked_is_not_a_pass() -> None:
    rec = Records()
    start(rec)
    verdict = check(rec.run())
    assert not verdict.ok
    assert "no message was acked" in verdict.report()


def test_an_offset_seen_twice_is_doubled() -> None:
    rec = Records()
    clean(rec)
    # the seam bug: b1 reconnects, a live frame comes before its resume is replayed, then again
    rec.connect("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.send("a2", "public", "a2-1", "a2-1-x")
    rec.ack("a2", "a2-1", "m4", "public", 12)
    for client in USERS:
        rec.message(client, "public", 12, "m4", "a2-1-x", "alice", "public")
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.message("b1", "public", 12, "m4", "a2-1-x", "alice", "public")
    verdict = check(rec.run())
    assert kinds(verdict) == {"doubled": 1}
    (v,) = verdict.violations
    assert (v.client, v.channel, v.offsets, v.ids) == ("b1", "public", "12", ["m4"])
    assert not verdict.ok
    assert "doubled" in verdict.report() and "client b1 public offset 12 id m4" in verdict.report()


def test_a_frame_below_the_resume_offset_is_reordered() -> None:
    rec = Records()
    clean(rec)
    for n, (mid, text) in enumerate([("m4", "a2-1-x"), ("m5", "a2-2-x")], start=12):
        rec.send("a2", "public", text[:4], text)
        rec.ack("a2", text[:4], mid, "public", n)
        for client in ("a1", "a2"):
            rec.message(client, "public", n, mid, text, "alice", "public")
    rec.message("b1", "public", 13, "m5", "a2-2-x", "alice", "public")
    rec.message("b1", "public", 12, "m4", "a2-1-x", "alice", "public")  # lower than 13: reordered
    verdict = check(rec.run())
    assert kinds(verdict) == {"reordered": 1}
    assert verdict.violations[0].offsets == "12"


def test_the_first_frame_after_resume_must_be_above_the_resume_offset() -> None:
    rec = Records()
    start(rec)
    rec.send("a1", "public", "a1-1", "a1-1-x")
    rec.ack("a1", "a1-1", "m1", "public", 11)
    rec.message("a1", "public", 11, "m1", "a1-1-x", "alice", "public")
    rec.connect("a1", {"public": 11, "user:alice": 0, "room:r": 0})
    rec.resume("a1", {"public": 11, "user:alice": 0, "room:r": 0})
    rec.message("a1", "public", 11, "m1", "a1-1-x", "alice", "public")  # replayed although resumed from 11
    verdict = check(rec.run())
    assert "doubled" in kinds(verdict)


def test_a_missing_offset_is_a_gap_unless_explained() -> None:
    rec = Records()
    clean(rec)
    # an unacked send of a2 stored at 12 (a1 saw it); b1 sees 13 but never 12
    rec.send("a2", "public", "a2-1", "a2-1-x")
    rec.message("a1", "public", 12, "m4", "a2-1-x", "alice", "public")
    rec.send("a1", "public", "a1-9", "a1-9-x")
    rec.ack("a1", "a1-9", "m5", "public", 13)
    for client in USERS:
        rec.message(client, "public", 13, "m5", "a1-9-x", "alice", "public")
    verdict = check(rec.run())
    gaps = [v for v in verdict.violations if v.kind == "gaps"]
    assert {(v.client, v.channel, v.offsets, tuple(v.ids)) for v in gaps} == {("b1", "public", "12", ("m4",))}
    # a2 never saw 12 as a frame either, but it is its own (unacked) send, found by its text: no gap
    assert all(v.client != "a2" for v in gaps)
    assert verdict.rows["none"]["gaps"] == 1
    assert verdict.rows["none"]["unacked"] == 1


def test_own_acked_private_sends_explain_their_offsets() -> None:
    rec = Records()
    start(rec)
    rec.send("a1", "private", "a1-1", "a1-1-x", to="bob")
    rec.ack("a1", "a1-1", "m1", "user:alice", 1)  # the sending session gets no frame of it
    rec.message("b1", "user:bob", 1, "m1", "a1-1-x", "alice", "private")
    rec.message("a2", "user:alice", 1, "m1", "a1-1-x", "alice", "private")
    rec.send("b1", "private", "b1-1", "b1-1-x", to="alice")
    rec.ack("b1", "b1-1", "m2", "user:bob", 2)
    for client in ("a1", "a2"):
        rec.message(client, "user:alice", 2, "m2", "b1-1-x", "bob", "private")
    verdict = check(rec.run())
    assert verdict.violations == []
    assert verdict.rows["none"]["delivered"] == 2 + 2


def unacked_12_13(rec: Records) -> None:
    """Two sends of a2 stored at public 12 and 13, never acked; alice's clients see them."""
    for n, text in ((12, "a2-1-x"), (13, "a2-2-x")):
        rec.send("a2", "public", text[:4], text)
        for client in ("a1", "a2"):
            rec.message(client, "public", n, f"m{n}", text, "alice", "public")


def test_a_session_that_never_sent_its_resume_counts_as_seen_not_for_order() -> None:
    """A 2,000 msg/s run stopped a client between its welcome and its resume; the server's wait
    for the resume ran out and it went live from the welcome's position, above a hole. Those
    messages are not where the client stands: it resumes from before them on its next session."""

    def records(resumed_from_before: bool) -> Records:
        rec = Records()
        clean(rec)
        for n in (12, 13):
            rec.send("a2", "public", f"a2-{n - 11}", f"a2-{n - 11}-x")
            rec.ack("a2", f"a2-{n - 11}", f"m{n}", "public", n)
            for client in ("a1", "a2"):
                rec.message(client, "public", n, f"m{n}", f"a2-{n - 11}-x", "alice", "public")
        rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})  # never resumes
        rec.message("b1", "public", 13, "m13", "a2-2-x", "alice", "public")  # live, above 12
        rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})
        at = 11 if resumed_from_before else 13
        rec.resume("b1", {"public": at, "user:bob": 1, "room:r": 1})
        for n in range(at + 1, 14):
            rec.message("b1", "public", n, f"m{n}", f"a2-{n - 11}-x", "alice", "public")
        return rec

    assert check(records(resumed_from_before=True).run()).violations == []
    assert kinds(check(records(resumed_from_before=False).run())) == {"lost": 1}  # m12 never reached bob


def test_a_range_declared_lost_is_no_gap() -> None:
    rec = Records()
    clean(rec)
    unacked_12_13(rec)
    rec.connect("b1", {"public": 14, "user:bob": 1, "room:r": 1})
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.resumed("b1", recovered=False, gaps=["public"], positions={"public": 13})  # 12 and 13 are gone
    rec.send("a2", "public", "a2-3", "a2-3-x")
    rec.ack("a2", "a2-3", "m6", "public", 14)
    for client in USERS:
        rec.message(client, "public", 14, "m6", "a2-3-x", "alice", "public")
    assert check(rec.run()).violations == []


def test_a_declared_range_without_positions_runs_to_the_next_offset_seen() -> None:
    rec = Records()
    clean(rec)
    unacked_12_13(rec)
    rec.connect("b1", {"public": 14, "user:bob": 1, "room:r": 1})
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.resumed("b1", recovered=False, gaps=["public"])  # version 1: trimmed, no position given
    rec.send("a2", "public", "a2-3", "a2-3-x")
    rec.ack("a2", "a2-3", "m6", "public", 14)
    for client in USERS:
        rec.message(client, "public", 14, "m6", "a2-3-x", "alice", "public")
    assert check(rec.run()).violations == []


def test_an_acked_message_someone_never_saw_is_lost() -> None:
    rec = Records()
    clean(rec)
    rec.send("a1", "public", "a1-3", "a1-3-x")
    rec.ack("a1", "a1-3", "m7", "public", 12)
    for client in ("a1", "a2"):
        rec.message(client, "public", 12, "m7", "a1-3-x", "alice", "public")
    rec.send("a1", "private", "a1-4", "a1-4-x", to="bob")
    rec.ack("a1", "a1-4", "m8", "user:alice", 2)  # bob never sees it anywhere: its offset there is unknown
    rec.message("a2", "user:alice", 2, "m8", "a1-4-x", "alice", "private")
    verdict = check(rec.run())
    lost = sorted((v.client, v.channel, v.offsets, v.ids[0]) for v in verdict.violations if v.kind == "lost")
    assert lost == [("b1", "public", "12", "m7"), ("b1", "user:bob", "?", "m8")]
    assert kinds(verdict) == {"lost": 2}


def test_an_acked_message_declared_lost_is_still_lost() -> None:
    rec = Records()
    clean(rec)
    rec.send("a1", "public", "a1-3", "a1-3-x")
    rec.ack("a1", "a1-3", "m7", "public", 12)
    for client in ("a1", "a2"):
        rec.message(client, "public", 12, "m7", "a1-3-x", "alice", "public")
    rec.connect("b1", {"public": 12, "user:bob": 1, "room:r": 1})
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.resumed("b1", recovered=False, gaps=["public"], positions={"public": 12})
    verdict = check(rec.run())
    assert kinds(verdict) == {"lost": 1}
    assert "declared lost" in verdict.violations[0].offsets


def test_a_text_nobody_sent_is_a_phantom() -> None:
    rec = Records()
    clean(rec)
    rec.message("b1", "public", 12, "m9", "never-sent", "alice", "public")
    rec.message("a1", "public", 12, "m9", "never-sent", "alice", "public")
    rec.message("a2", "public", 12, "m9", "never-sent", "alice", "public")
    verdict = check(rec.run())
    assert kinds(verdict) == {"phantom": 3}
    # and a real text arriving as another user's
    rec2 = Records()
    clean(rec2)
    rec2.message("b1", "public", 12, "m1x", "a1-1-x", "bob", "public")
    assert "phantom" in kinds(check(rec2.run()))


def test_two_ids_at_one_offset_is_a_conflict() -> None:
    rec = Records()
    clean(rec)
    rec.send("a1", "public", "a1-3", "a1-3-x")
    rec.ack("a1", "a1-3", "m7", "public", 12)
    rec.send("b1", "public", "b1-3", "b1-3-x")
    rec.ack("b1", "b1-3", "m8", "public", 12)  # offset 12 given twice
    for client in ("a1", "a2"):
        rec.message(client, "public", 12, "m7", "a1-3-x", "alice", "public")
    rec.message("b1", "public", 12, "m8", "b1-3-x", "bob", "public")
    verdict = check(rec.run())
    conflicts = [v for v in verdict.violations if v.kind == "conflict"]
    assert [(v.channel, v.offsets, v.ids) for v in conflicts] == [("public", "12", ["m7", "m8"])]


def test_a_retry_stored_twice_is_a_conflict() -> None:
    rec = Records()
    start(rec)
    rec.send("a1", "public", "a1-1", "a1-1-x")
    rec.ack("a1", "a1-1", "m1", "public", 11)
    rec.send("a1", "public", "a1-1", "a1-1-x")  # the same cid and text again ...
    rec.ack("a1", "a1-1", "m2", "public", 12)  # ... stored again instead of recognised
    for client in USERS:
        rec.message(client, "public", 11, "m1", "a1-1-x", "alice", "public")
        rec.message(client, "public", 12, "m2", "a1-1-x", "alice", "public")
    verdict = check(rec.run())
    assert [v.detail for v in verdict.violations] == ["one send (cid a1-1) stored under 2 ids"]


def test_a_new_epoch_starts_the_channel_over() -> None:
    rec = Records()
    clean(rec)
    # Redis lost its data: offsets start again at 1, under a new epoch the server declares
    for client, user in USERS.items():
        mine = {"public": 11, f"user:{user}": 1, "room:r": 1}
        rec.connect(client, {"public": 0, f"user:{user}": 1, "room:r": 1}, epochs={"public": "e2"})
        rec.resume(client, mine)
        rec.resumed(client, recovered=False, gaps=["public"], positions={"public": 0}, epochs={"public": "e2"})
    rec.send("a1", "public", "a1-5", "a1-5-x")
    rec.ack("a1", "a1-5", "m10", "public", 1)
    for client in USERS:
        rec.message(client, "public", 1, "m10", "a1-5-x", "alice", "public")
    verdict = check(rec.run())
    assert verdict.violations == []
    # without the reset, offset 1 after 11 is reordered
    rec2 = Records()
    clean(rec2)
    rec2.send("a1", "public", "a1-5", "a1-5-x")
    rec2.ack("a1", "a1-5", "m10", "public", 1)
    for client in USERS:
        rec2.message(client, "public", 1, "m10", "a1-5-x", "alice", "public")
    assert "reordered" in kinds(check(rec2.run()))


def test_rows_follow_the_faults_and_time_to_recover() -> None:
    rec = Records()
    start(rec)
    rec.faults = [{"kind": "kafka-stop", "start": 5.0, "end": 8.0}]
    rec.send("a1", "public", "a1-1", "a1-1-x", t=6.0)
    rec.error("a1", "a1-1", "rate_limited")
    rec.send("a1", "public", "a1-1", "a1-1-x", t=8.5)
    rec.ack("a1", "a1-1", "m1", "public", 11, t=9.5)
    for client in USERS:
        rec.message(client, "public", 11, "m1", "a1-1-x", "alice", "public")
    rec.send("b1", "public", "b1-1", "b1-1-x", t=20.0)
    rec.ack("b1", "b1-1", "m2", "public", 12, t=20.1)
    for client in USERS:
        rec.message(client, "public", 12, "m2", "b1-1-x", "bob", "public")
    rec.message("b1", "public", 12, "m2", "b1-1-x", "bob", "public")  # doubled, counted under none
    verdict = check(rec.run())
    assert verdict.rows["kafka-stop"]["acked"] == 1
    assert verdict.rows["none"]["acked"] == 1
    assert verdict.rows["none"]["doubled"] == 1 and verdict.rows["kafka-stop"]["doubled"] == 0
    assert verdict.recover["kafka-stop"] == 1.5
    assert verdict.events == {"kafka-stop": 1}
    assert "kafka-stop" in verdict.table()


def test_a_send_never_acked_means_never_recovered() -> None:
    rec = Records()
    start(rec)
    rec.faults = [{"kind": "kill-server", "start": 5.0, "end": 8.0}]
    rec.send("a1", "public", "a1-1", "a1-1-x", t=6.0)
    verdict = check(rec.run())
    assert verdict.recover["kill-server"] is None
    assert verdict.rows["kill-server"]["unacked"] == 1
    assert "never" in verdict.table()


def test_load_reads_what_a_run_wrote(tmp_path: Path) -> None:
    rec = Records()
    clean(rec)
    (tmp_path / "clients").mkdir()
    meta = {"clients": {c: {"user": u} for c, u in USERS.items()}, "rooms": ROOMS, "faults": [], "settle": 1.0}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    for client, events in rec.events.items():
        (tmp_path / "clients" / f"{client}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    verdict = check(checker.load(tmp_path))
    assert verdict.ok
    assert verdict.rows["none"]["acked"] == 3


def test_a_session_whose_resume_was_refused_starts_over() -> None:
    def records(refused: bool) -> Records:
        rec = Records()
        clean(rec)
        unacked_12_13(rec)
        rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})
        rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
        rec.message("b1", "public", 13, "m13", "a2-2-x", "alice", "public")  # live, above a hole
        if refused:
            rec.error("b1", "r2", "internal")  # Redis was down: b1 drops the session ...
        rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})
        rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})  # ... and resumes from before it
        rec.message("b1", "public", 12, "m12", "a2-1-x", "alice", "public")
        rec.message("b1", "public", 13, "m13", "a2-2-x", "alice", "public")
        return rec

    assert check(records(refused=True).run()).violations == []
    assert kinds(check(records(refused=False).run())) == {"reordered": 1, "doubled": 1}


def late_resume(rec: Records, after_resume: list[int]) -> None:
    """b1 comes back while public 12-13 were sent, resumes late: 14 comes live first, then its
    resume from 11, then ``after_resume`` (its replay), then 15 live."""
    clean(rec)
    texts = {n: f"a2-{n}-x" for n in (12, 13, 14, 15)}

    def publish(n: int, to: tuple[str, ...]) -> None:
        rec.send("a2", "public", f"a2-{n}", texts[n])
        rec.ack("a2", f"a2-{n}", f"m{n}", "public", n)
        for client in to:
            rec.message(client, "public", n, f"m{n}", texts[n], "alice", "public")

    publish(12, ("a1", "a2"))
    publish(13, ("a1", "a2"))
    rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})
    rec.late("b1")
    publish(14, ("a1", "a2", "b1"))  # live: the server no longer waits for b1's resume
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    for n in after_resume:
        rec.message("b1", "public", n, f"m{n}", texts[n], "alice", "public")
    rec.resumed("b1")
    publish(15, ("a1", "a2", "b1"))


def test_a_late_resume_that_brings_the_live_message_again_in_its_place_passes() -> None:
    """The contract's seam: after resume, one increasing sequence with whatever was published
    between welcome, resume and resumed, the live 14 included (the client drops the copy)."""
    rec = Records()
    late_resume(rec, [12, 13, 14])
    verdict = check(rec.run())
    assert verdict.violations == [], verdict.report()


def test_a_late_resume_that_leaves_out_what_came_live_is_a_gap() -> None:
    """The bug of 2026-12-03: the replay skipped what had gone out live, so 14 came before 12."""
    rec = Records()
    late_resume(rec, [12, 13])
    verdict = check(rec.run())
    assert kinds(verdict) == {"gaps": 1}
    assert (verdict.violations[0].client, verdict.violations[0].offsets) == ("b1", "14")


def test_a_session_not_marked_late_may_not_get_a_message_twice() -> None:
    """Without the mark the old rule holds: a live message before the resume, then again, is
    doubled (the resume came while the server still waited: it should have held it)."""
    rec = Records()
    late_resume(rec, [12, 13, 14])
    rec.events["b1"] = [ev for ev in rec.events["b1"] if ev["e"] != "late_resume"]
    verdict = check(rec.run())
    assert "doubled" in kinds(verdict)


def test_a_live_frame_in_flight_as_a_late_resume_is_sent_comes_again_in_the_replay() -> None:
    """A frame the server wrote before it read the resume arrives after the client sent it; the
    replay that follows starts lower and brings it again. The seam is judged from the replay."""
    rec = Records()
    clean(rec)
    texts = {n: f"a2-{n}-x" for n in (12, 13, 14)}
    for n in (12, 13):
        rec.send("a2", "public", f"a2-{n}", texts[n])
        rec.ack("a2", f"a2-{n}", f"m{n}", "public", n)
        for client in ("a1", "a2"):
            rec.message(client, "public", n, f"m{n}", texts[n], "alice", "public")
    rec.connect("b1", {"public": 13, "user:bob": 1, "room:r": 1})
    rec.late("b1")
    rec.resume("b1", {"public": 11, "user:bob": 1, "room:r": 1})
    rec.send("a2", "public", "a2-14", texts[14])
    rec.ack("a2", "a2-14", "m14", "public", 14)
    for client in ("a1", "a2", "b1"):  # b1's copy was on its way before the server read the resume
        rec.message(client, "public", 14, "m14", texts[14], "alice", "public")
    for n in (12, 13, 14):
        rec.message("b1", "public", n, f"m{n}", texts[n], "alice", "public")
    rec.resumed("b1")
    verdict = check(rec.run())
    assert verdict.violations == [], verdict.report()
