"""The load tool's pure parts (scripts/loadlib): who sends to whom, the texts that carry the
measurement, the loss and duplicate accounting, merging workers' parts, and the report."""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import pytest
from loadlib import options, report, stats
from loadlib.scenarios import Script, build_plans


def args(*argv: str) -> argparse.Namespace:
    return options.parse_args(list(argv))


class Sender:
    def __init__(self, gid: int) -> None:
        self.gid, self.rid = gid, -1
        self.pending: dict[int, tuple[int, bool]] = {}


def test_private_pairs_cross_servers_and_stay_in_one_worker() -> None:
    plans = build_plans(args("--url", "http://a", "--url", "http://b", "--users", "8", "--procs", "2"), "p", "r1")
    assert [p["worker"] for p in plans] == [0, 1]
    for plan in plans:
        senders = {u["gid"]: u for u in plan["users"] if u["gid"] >= 0}
        receivers = {u["rid"]: u for u in plan["users"] if u["rid"] >= 0}
        assert set(senders) == set(receivers), "a pair stays in one worker"
        for i, sender in senders.items():
            assert sender["peer"] == receivers[i]["name"] == f"p-r{i}"
            assert sender["url"] != receivers[i]["url"], "every message crosses servers"


def test_public_users_send_and_receive_and_idle_users_do_neither() -> None:
    [public] = build_plans(args("--scenario", "public", "--users", "3"), "p", "r1")
    assert [(u["gid"], u["rid"]) for u in public["users"]] == [(0, 0), (1, 1), (2, 2)]
    [idle] = build_plans(args("--scenario", "idle", "--users", "2"), "p", "r1")
    assert [(u["gid"], u["rid"]) for u in idle["users"]] == [(-1, -1), (-1, -1)]


def test_a_text_carries_sender_step_seq_phase_and_send_time_padded_to_its_size() -> None:
    script = Script("private", "abc", 64, "room", binary=False)
    text = script.text(7, 1, 42, "m", 1_700_000_000_123_456_789)
    assert len(text) == 64 and text.startswith("lt:abc:7:1:42:m:1700000000123456789:")
    assert script.ours(text) and not Script("private", "abd", 64, "room", False).ours(text)
    assert script.read_text(text) == (7, 1, 42, "m", 1_700_000_000_123_456_789)
    with pytest.raises(ValueError):
        script.read_text("lt:abc:7:x")


def payload(frame: bytes) -> bytes:
    """A client frame's payload (masked with a zero key: as it is)."""
    return frame[8 if frame[1] & 0x7F == 126 else 6 :]


def test_each_scenario_addresses_its_frame() -> None:
    private = orjson.loads(payload(Script("private", "r", 64, "the-room", False).message(3, "p-r3", 0, 5, True, 1)))
    assert private["type"] == "private" and private["to"] == "p-r3" and private["cid"] == "0.5"
    room = orjson.loads(payload(Script("room", "r", 64, "the-room", False).message(3, None, 1, 0, False, 1)))
    assert room["type"] == "room" and room["room"] == "the-room" and ":w:" in room["text"]
    public = orjson.loads(payload(Script("public", "r", 64, "the-room", False).message(3, None, 0, 0, True, 1)))
    assert public["type"] == "public" and "to" not in public and "room" not in public


@pytest.mark.parametrize("scenario", ["private", "public", "room"])
@pytest.mark.parametrize("text_bytes", [20, 64, 300])
def test_a_json_message_is_what_orjson_writes_for_its_frame(scenario: str, text_bytes: int) -> None:
    script = Script(scenario, "ab12cd", text_bytes, "p-room", False)
    written = payload(script.message(3, "p-r3", 1, 7, True, 1_700_000_000_123_456_789))
    frame = {"type": scenario, "text": script.text(3, 1, 7, "m", 1_700_000_000_123_456_789), "cid": "1.7"}
    frame |= {"to": "p-r3"} if scenario == "private" else {"room": "p-room"} if scenario == "room" else {}
    assert written == orjson.dumps(frame)
    binary = Script(scenario, "ab12cd", text_bytes, "p-room", True).message(3, "p-r3", 1, 7, True, 5)
    assert binary[0] == 0x82, "msgpack goes in a binary frame"


def test_the_tally_counts_acks_deliveries_duplicates_misrouting_and_late_frames() -> None:
    tally = stats.Tally(private=True)
    tally.stats = stats.StepStats(2)
    sender = Sender(gid=4)
    sender.pending = {0: (1_000_000, True), 1: (2_000_000, False)}
    tally.ack(sender, "2.0", 3_000_000)
    tally.ack(sender, "2.1", 3_000_000)
    tally.ack(sender, "1.0", 3_000_000)  # another step's
    assert (tally.stats.acked, tally.c_acked, list(tally.stats.ack_latency)) == (1, 2, [2.0])
    assert sender.pending == {}
    tally.delivery(4, 4, 2, 0, True, 5.0)
    tally.delivery(4, 4, 2, 0, True, 6.0)  # again
    tally.delivery(4, 3, 2, 1, True, 5.0)  # another sender's, to this receiver
    tally.delivery(4, 4, 1, 2, True, 5.0)  # a step that is over
    tally.delivery(4, 4, 2, 1, False, 5.0)  # during the warmup
    s = tally.stats
    assert (s.delivered, s.duplicates, s.misrouted, s.late, s.delivered_warmup) == (1, 1, 1, 1, 1)
    assert list(s.latency) == [5.0] and tally.c_delivered == 5
    tally.refused(sender, "rate_limited", "2.9")
    assert s.errors == {"rate_limited": 1}
    assert len(tally.take_samples()) == 5 and tally.take_samples() == []


def part(
    acked: dict[int, list[int]], delivered: dict[int, dict[int, list[int]]], receivers: list[int]
) -> dict[str, Any]:
    def bits(seqs: list[int]) -> bytes:
        out = bytearray(8)
        for seq in seqs:
            stats.mark(out, seq)
        return bytes(out)

    step = stats.StepStats(0)
    result = step.result(0.5)
    result.update(
        acked=sum(len(v) for v in acked.values()),
        sent=sum(len(v) for v in acked.values()),
        delivered=sum(len(v) for d in delivered.values() for v in d.values()),
        acked_bits={g: bits(v) for g, v in acked.items()},
        delivered_bits={r: {g: bits(v) for g, v in d.items()} for r, d in delivered.items()},
        receivers=receivers,
    )
    return result


def test_lost_is_acked_but_never_delivered_where_it_should_be() -> None:
    private = [part({0: [0, 1, 2]}, {0: {0: [0, 2]}}, [0]), part({1: [0]}, {1: {1: [0]}}, [1])]
    assert stats.lost_messages("private", private) == (4, 1)
    # public: every acked message to every receiver, whichever worker holds them
    public = [part({0: [0, 1]}, {0: {0: [0, 1], 1: [0]}}, [0]), part({1: [0]}, {1: {0: [0, 1]}}, [1])]
    # 3 acked messages x 2 receivers; receiver 1 (in the other worker) never got sender 1's
    assert stats.lost_messages("public", public) == (6, 1)
    assert stats.lost_messages("public", public[:1]) == (2, 0)


def test_a_step_with_loss_or_a_slow_ramp_step_is_not_good() -> None:
    a = args("--ramp", "--p99-bound-ms", "10", "--duration", "2")
    clean = part({0: [0, 1]}, {0: {0: [0, 1]}}, [0])
    result = stats.merge_step(0, 100.0, [clean], a)
    assert result["good"] and result["lost"] == 0 and result["send_rate"] == 1.0
    lossy = part({0: [0, 1]}, {0: {0: [0]}}, [0])
    assert stats.merge_step(0, 100.0, [lossy], a)["problems"] == ["lost 1"]


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert stats.percentiles(values) == {"p50": 50, "p95": 95, "p99": 99, "max": 100, "mean": 50.5}
    assert stats.percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    assert stats.percentiles([1.234567], points=(90,), digits=2) == {"p90": 1.23, "max": 1.23, "mean": 1.23}


def sample_report(**overrides: Any) -> dict[str, Any]:
    a = args("--url", "http://a", "--users", "4")
    step = stats.merge_step(0, 100.0, [part({0: [0, 1]}, {0: {0: [0, 1]}}, [0])], a)
    step["window_unix"] = [1.0, 2.0]
    connect = stats.merge_connect(
        [
            {
                "ok": 4,
                "failed": 0,
                "errors": [],
                "connect_seconds": 0.5,
                "login_seconds": 0.1,
                "connect_ms": [3.0, 4.0],
                "senders": 2,
                "receivers": 2,
            }
        ]
    )
    timeline = {0: {"sent": 2, "delivered": 2, "errors": 0, "lat": []}}
    built = report.build(a, "lt-x", connect, [step], timeline, (1, 4, 1))
    built.update(overrides)
    return built


def test_the_report_and_its_table() -> None:
    built = sample_report()
    assert built["ok"] is True and built["exit_code"] == 0 and built["pairs"] == 2
    assert built["generator"] == {"cpu_seconds": 1, "wall_seconds": 4, "cpu_percent_of_one_core": 25.0}
    assert built["timeline"] == [{"t": 0, "send_rate": 2, "delivered_rate": 2, "errors": 0, "p50": None, "p99": None}]
    text = report.table(built)
    assert "private · 4 users (2 pairs) · http://a · json · 1 process(es)" in text
    assert text.endswith("result: ok")
    assert report.measured(built)["delivered"] == 2


def test_a_ramp_bills_its_last_good_step() -> None:
    good = {"target_rate": 10, "sent": 1, "acked": 1, "delivered": 1, "lost": 0, "latency_ms": {}, "achieved_rate": 1}
    ramped = sample_report(ramp={"last_good_step": {**good, "window_unix": [5, 6]}})
    assert report.measured(ramped)["target_rate"] == 10 and report.measured(ramped)["window_unix"] == [5, 6]


def test_bad_options_are_refused() -> None:
    with pytest.raises(SystemExit):
        args("--users", "1")
    with pytest.raises(SystemExit):
        args("--url", "ftp://x")
    assert args("--url", "http://a/").url == ["http://a"]
