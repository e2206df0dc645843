"""Frame decoding, validation and codecs: what a client sending a frame gets back."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import msgpack
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from chatserver import frames
from chatserver import protocol as p
from chatserver.codec import JSON, MSGPACK
from chatserver.envelope import Envelope, EnvelopeError


def decode(obj: object) -> p.ClientFrame:
    return p.decode_frame(json.dumps(obj), JSON)


def test_valid_frames_decode_to_typed_frames() -> None:
    assert decode({"type": "public", "text": "hi", "cid": "c1"}) == p.PublicFrame("hi", "c1")
    assert decode({"type": "private", "to": "bob", "text": "yo"}) == p.PrivateFrame("bob", "yo", None)
    assert decode({"type": "ping", "cid": "z"}) == p.PingFrame("z")


def test_unknown_fields_are_ignored_and_sender_fields_cannot_be_smuggled() -> None:
    frame = decode({"type": "public", "text": "hi", "from": "mallory", "extra": [1, 2]})
    assert frame == p.PublicFrame("hi")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", p.BAD_FRAME),
        ("[1, 2]", p.BAD_FRAME),
        ('"text"', p.BAD_FRAME),
        ("{}", p.BAD_FRAME),
        ('{"type": 5}', p.BAD_FRAME),
        ('{"type": "public"}', p.BAD_FRAME),
        ('{"type": "public", "text": ""}', p.BAD_FRAME),
        ('{"type": "public", "text": 12}', p.BAD_FRAME),
        ('{"type": "private", "text": "x"}', p.BAD_FRAME),
        ('{"type": "private", "to": "bad name!", "text": "x"}', p.BAD_FRAME),
        ('{"type": "private", "to": "' + "a" * 33 + '", "text": "x"}', p.BAD_FRAME),
        ('{"type": "public", "text": "x", "cid": 7}', p.BAD_FRAME),
        ('{"type": "public", "text": "x", "cid": "' + "c" * 65 + '"}', p.BAD_FRAME),
        ('{"type": "dance"}', p.UNKNOWN_TYPE),
        ('{"type": "public", "text": "' + "x" * 4001 + '"}', p.TOO_LARGE),
    ],
)
def test_bad_frames_are_refused_with_their_code(raw: str, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(raw, JSON)
    assert info.value.code == code


def test_text_of_exactly_4000_characters_is_accepted() -> None:
    assert decode({"type": "public", "text": "é" * 4000}) == p.PublicFrame("é" * 4000)


def test_errors_echo_the_cid_when_it_is_valid() -> None:
    with pytest.raises(p.ProtocolError) as info:
        decode({"type": "public", "text": "", "cid": "abc"})
    assert info.value.cid == "abc"


def test_json_connections_refuse_binary_frames_and_msgpack_ones_refuse_text() -> None:
    with pytest.raises(p.ProtocolError, match="msgpack"):
        p.decode_frame(b"\x81", JSON)
    with pytest.raises(p.ProtocolError, match="binary"):
        p.decode_frame('{"type": "ping"}', MSGPACK)


def test_msgpack_frames_decode_like_json_ones() -> None:
    raw = msgpack.packb({"type": "private", "to": "bob", "text": "hé", "cid": "1"})
    assert p.decode_frame(raw, MSGPACK) == p.PrivateFrame("bob", "hé", "1")


def test_msgpack_extension_types_and_bytes_are_refused() -> None:
    for raw in (msgpack.packb(msgpack.ExtType(1, b"xx")), msgpack.packb({"type": b"ping"})):
        with pytest.raises(p.ProtocolError):
            p.decode_frame(raw, MSGPACK)


def test_out_frame_is_encoded_once_per_codec() -> None:
    frame = frames.error("bad_frame", "nope", "c1")
    first = frame.encoded(JSON)
    assert frame.encoded(JSON) is first
    assert json.loads(first) == {"type": "error", "code": "bad_frame", "message": "nope", "cid": "c1"}
    assert msgpack.unpackb(frame.encoded(MSGPACK)) == json.loads(first)


def test_envelope_round_trips_and_renders_the_message_frame() -> None:
    env = Envelope(
        "private",
        "id1",
        "alice",
        "hi",
        123,
        to="bob",
        recipients=("bob", "alice"),
        origin="ws-1#4",
        offsets=(("user:bob", 7), ("user:alice", 3)),
    )
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert env.channels() == ("user:bob", "user:alice")
    assert env.message_frame("user:bob").body == {
        "type": "message",
        "id": "id1",
        "channel": "user:bob",
        "offset": 7,
        "kind": "private",
        "from": "alice",
        "to": "bob",
        "text": "hi",
        "ts": 123,
    }
    assert env.message_frame("user:alice").body["offset"] == 3


def test_a_placed_envelope_keeps_every_other_field() -> None:
    """``placed`` spells the fields out (for speed): a field added to Envelope must be added there."""
    env = Envelope(
        "edit", "tmp", "alice", "hi", 1, to="bob", recipients=("bob", "alice"), origin="ws-1#4", room="r",
        event={"x": 1}, receipt=True, ref="m0",
    )  # fmt: skip
    offsets, epochs = (("user:bob", 7), ("user:alice", 3)), (("user:bob", "e1"), ("user:alice", "e2"))
    assert env.placed("id1", 5, offsets, epochs) == dataclasses.replace(
        env, id="id1", ts=5, offsets=offsets, epochs=epochs
    )
    assert {f.name for f in dataclasses.fields(Envelope)} == {
        "kind", "id", "sender", "text", "ts", "to", "recipients", "origin", "offsets", "room", "event", "receipt",
        "epochs", "ref",
    }, "a new field: add it to Envelope.placed"  # fmt: skip


def test_history_and_resume_frames_validate_channels_and_offsets() -> None:
    assert decode({"type": "history", "channel": "public"}) == p.HistoryFrame("public", None, 50)
    assert decode({"type": "history", "channel": "user:bob", "before": 9, "limit": 200, "cid": "h"}) == (
        p.HistoryFrame("user:bob", 9, 200, "h")
    )
    frame = decode({"type": "resume", "positions": {"user:al": 3, "public": 0}})
    assert frame == p.ResumeFrame((("public", 0), ("user:al", 3)))
    for bad in (
        {"type": "history", "channel": "secret"},
        {"type": "history", "channel": "public", "limit": 201},
        {"type": "history", "channel": "public", "limit": 0},
        {"type": "history", "channel": "public", "before": 0},
        {"type": "history", "channel": "public", "before": True},
        {"type": "resume", "positions": []},
        {"type": "resume", "positions": {"public": -1}},
        {"type": "resume", "positions": {"user:": 1}},
        {"type": "resume", "positions": {f"user:u{i}": 1 for i in range(101)}},
    ):
        with pytest.raises(p.ProtocolError) as info:
            decode(bad)
        assert info.value.code == p.BAD_FRAME, bad


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb({"v": 2}), msgpack.packb({"v": 1, "k": "x"})])
def test_undecodable_envelopes_raise_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["public", "private", "ping", "join", "rooms", "who", "x"]) | st.text(max_size=8)},
    optional={"text": json_values, "to": json_values, "cid": json_values},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(frame_like, json_values))
@example({"type": "rooms"})  # a whole frame with no field: what Hypothesis found once in 20 runs
def test_any_json_value_decodes_or_raises_protocol_error(obj: object) -> None:
    try:
        frame = p.decode_frame(json.dumps(obj), JSON)
    except p.ProtocolError as exc:
        assert exc.code in {p.BAD_FRAME, p.UNKNOWN_TYPE, p.TOO_LARGE}
    else:
        assert isinstance(frame, p.ClientFrame), frame  # every frame type, not the few first written


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    for codec in (JSON, MSGPACK):
        with contextlib.suppress(p.ProtocolError):
            p.decode_frame(data, codec)


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_deeply_nested_frames_are_refused_cleanly(depth: int) -> None:
    nested_json = "[" * depth + "]" * depth
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame('{"type": "public", "text": "x", "cid": ' + nested_json + "}", JSON)
    assert info.value.code == p.BAD_FRAME
    nested_msgpack = b"\x91" * depth + b"\xc0"  # fixarray of one element, nested
    with pytest.raises(p.ProtocolError):
        p.decode_frame(nested_msgpack, MSGPACK)


@settings(max_examples=300, deadline=None)
@given(st.one_of(frame_like, json_values))
@example({"type": "rooms"})
def test_any_msgpack_value_decodes_or_raises_protocol_error(obj: object) -> None:
    try:
        raw = msgpack.packb(obj)
    except OverflowError:  # integers beyond 64 bits have no msgpack form
        assume(False)
    try:
        frame = p.decode_frame(raw, MSGPACK)
    except p.ProtocolError as exc:
        assert exc.code in {p.BAD_FRAME, p.UNKNOWN_TYPE, p.TOO_LARGE}
    else:
        assert isinstance(frame, p.ClientFrame), frame  # every frame type, not the few first written
