"""Small seams (issue 13): a name is the whole string (not even a newline after it), and one bad
socket does not stop the keepalive of the others."""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

import jwt
import pytest

from chatserver import protocol as p
from chatserver.auth import AuthError, TokenAuthority
from chatserver.codec import JSON
from chatserver.config import ConfigError, Settings
from chatserver.web.socket import ChatSocket
from chatserver.web.timers import Keepalive

SECRET = "k" * 32

#: Valid names with something after them: ``$`` in a Python regex matches before a final "\n".
TRAILING = ["alice\n", "alice\r\n", "alice\nbob", "\nalice"]


def decode(obj: object) -> p.ClientFrame:
    return p.decode_frame(json.dumps(obj), JSON)


@pytest.mark.parametrize("name", TRAILING)
def test_frame_names_with_a_trailing_newline_are_refused(name: str) -> None:
    frames = [
        {"type": "private", "to": name, "text": "hi", "cid": "c"},
        {"type": "room", "room": name, "text": "hi", "cid": "c"},
        {"type": "join", "room": name, "cid": "c"},
        {"type": "typing", "to": name},
    ]
    for frame in frames:
        with pytest.raises(p.ProtocolError) as info:
            decode(frame)
        assert info.value.code == p.BAD_FRAME, frame


@pytest.mark.parametrize("channel", ["user:alice\n", "public\n", "room:lobby\n", "user:alice\nx"])
def test_channels_with_a_trailing_newline_are_refused(channel: str) -> None:
    for frame in (
        {"type": "history", "channel": channel, "cid": "h"},
        {"type": "resume", "positions": {channel: 0}, "cid": "r"},
    ):
        with pytest.raises(p.ProtocolError) as info:
            decode(frame)
        assert info.value.code == p.BAD_FRAME, frame


@pytest.mark.parametrize("name", TRAILING)
def test_tokens_never_name_a_user_with_a_trailing_newline(name: str) -> None:
    auth = TokenAuthority(SECRET, ttl_s=60)
    with pytest.raises(ValueError):
        auth.issue(name)
    forged_by_an_app = jwt.encode({"sub": name, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        auth.verify(forged_by_an_app)


def test_the_valid_names_still_pass() -> None:
    auth = TokenAuthority(SECRET, ttl_s=60)
    assert auth.verify(auth.issue("a.b-c_D9")) == "a.b-c_D9"
    assert decode({"type": "private", "to": "x" * 32, "text": "hi"}) == p.PrivateFrame("x" * 32, "hi", None)
    with pytest.raises(p.ProtocolError):
        decode({"type": "private", "to": "x" * 33, "text": "hi"})


@pytest.mark.parametrize(("variable", "value"), [("SERVER_ID", "ws-1\n"), ("CHAT_PREFIX", "t1-\n")])
def test_server_ids_and_prefixes_with_a_trailing_newline_are_refused(variable: str, value: str) -> None:
    # They name Kafka topics and Redis keys: "messages-ws-1\n" is not the topic others produce to.
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value, "CHAT_SECRET": "s" * 40})


class PingedSocket:
    """What the keepalive sees of a socket: it counts pings, or fails like a broken one."""

    def __init__(self, user: str, failure: Exception | None = None) -> None:
        self.user = user
        self.failure = failure
        self.pings = 0
        self.aborted = False

    def keepalive(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.pings += 1

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.gen_test(timeout=10)
async def test_one_socket_failing_its_ping_does_not_stop_the_pings_of_the_others() -> None:
    keepalive = Keepalive(0.02)
    good = [PingedSocket(f"good{i}") for i in range(3)]
    bad = PingedSocket("bad", RuntimeError("a bug in one connection"))
    for socket in [good[0], bad, *good[1:]]:
        keepalive.add(cast(ChatSocket, socket))
    deadline = time.monotonic() + 5.0
    while not all(s.pings >= 5 for s in good):
        assert time.monotonic() < deadline, f"pings stopped: {[s.pings for s in good]}"
        await asyncio.sleep(0.01)
    assert bad.aborted, "the socket that failed is dropped"
    for socket in good:
        keepalive.discard(cast(ChatSocket, socket))
