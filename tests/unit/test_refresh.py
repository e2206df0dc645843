"""``refresh`` (an addition to the protocol): an open session takes a new token of its own user
and lives until that token's exp; anything else is refused and changes nothing."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from chatserver import protocol as p
from chatserver.auth import TokenAuthority
from chatserver.codec import JSON
from tests.fakes import MemoryCluster

SECRET = "r" * 40


def _token(user: str, exp: float, secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(exp)}, secret, algorithm="HS256")


async def _cluster() -> MemoryCluster:
    return await MemoryCluster(1, auth=TokenAuthority(SECRET, ttl_s=60, leeway_s=5)).start()


@pytest.mark.gen_test
async def test_a_token_of_the_same_user_renews_the_session_until_its_exp() -> None:
    cluster = await _cluster()
    alice = await cluster.join("alice", 1)
    exp = int(time.time()) + 600
    await cluster.send(alice, 1, {"type": "refresh", "token": _token("alice", exp), "cid": "t1"})
    assert alice.of_type("refreshed") == [{"type": "refreshed", "user": "alice", "exp": exp, "cid": "t1"}]
    assert alice.deadline == exp + 5, "the session ends at the token's exp and the clock leeway"
    assert alice.closed is None and alice.of_type("error") == []


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("user", "exp_in_s", "secret", "code", "needle"),
    [
        ("alice", -3600, SECRET, p.UNAUTHORIZED, "token expired"),
        ("alice", 600, "w" * 40, p.UNAUTHORIZED, "invalid token"),
        (None, 0, SECRET, p.UNAUTHORIZED, "invalid token"),
        ("mallory", 600, SECRET, p.FORBIDDEN, "a session keeps its user"),
    ],
)
async def test_a_token_that_does_not_renew_this_session_is_refused(
    user: str | None, exp_in_s: float, secret: str, code: str, needle: str
) -> None:
    # Minted when the test runs, not when it is collected: the suite may take longer than a token lives.
    token = "not-a-jwt" if user is None else _token(user, time.time() + exp_in_s, secret)
    cluster = await _cluster()
    alice = await cluster.join("alice", 1)
    await cluster.send(alice, 1, {"type": "refresh", "token": token, "cid": "t2"})
    (refusal,) = alice.of_type("error")
    assert (refusal["code"], refusal["cid"]) == (code, "t2") and needle in refusal["message"]
    assert alice.deadline is None and alice.of_type("refreshed") == [] and alice.closed is None


@pytest.mark.gen_test
async def test_a_server_without_an_authority_renews_nothing() -> None:
    cluster = await MemoryCluster(1).start()
    alice = await cluster.join("alice", 1)
    await cluster.send(alice, 1, {"type": "refresh", "token": _token("alice", time.time() + 600)})
    assert [f["code"] for f in alice.of_type("error")] == [p.UNAUTHORIZED] and alice.deadline is None


@pytest.mark.parametrize("token", [None, "", 42, "x" * (p.MAX_TOKEN_CHARS + 1)])
def test_a_refresh_without_a_token_is_a_bad_frame(token: object) -> None:
    frame = {"type": "refresh", "cid": "t3"} | ({} if token is None else {"token": token})
    with pytest.raises(p.ProtocolError) as refused:
        p.decode_frame(json.dumps(frame), JSON)
    assert (refused.value.code, refused.value.cid) == (p.BAD_FRAME, "t3")


def test_a_refresh_decodes_to_its_token() -> None:
    assert p.decode_frame('{"type": "refresh", "token": "abc"}', JSON) == p.RefreshFrame(token="abc")
