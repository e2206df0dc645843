"""Tokens: only valid HS256 tokens with exp and a valid sub name a user."""

from __future__ import annotations

import time

import jwt
import pytest

from chatserver.auth import AuthError, TokenAuthority

SECRET = "k" * 32


def test_issued_token_verifies_to_its_user() -> None:
    auth = TokenAuthority(SECRET, ttl_s=60)
    assert auth.verify(auth.issue("alice")) == "alice"


#: An exp far ahead, so that each token below is refused for its own flaw, however long the suite takes.
FAR = int(time.time()) + 10 * 365 * 24 * 3600


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": "alice", "exp": FAR}, "w" * 32, algorithm="HS256"),  # wrong key
        jwt.encode({"sub": "alice", "exp": int(time.time()) - 120}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"sub": "bad name", "exp": FAR}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": FAR}, None, algorithm="none"),  # alg none
        jwt.encode({"sub": "alice", "exp": FAR}, SECRET, algorithm="HS512"),
        "garbage",
    ],
)
def test_forged_expired_and_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError):
        TokenAuthority(SECRET, ttl_s=60).verify(token)


def test_small_clock_skew_is_tolerated() -> None:
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    assert TokenAuthority(SECRET, ttl_s=60, leeway_s=30).verify(token) == "bob"


def test_a_token_past_its_exp_is_refused_by_default() -> None:
    """The contract: an expired token gets 401. A default leeway of 30 s let a token 10 s past
    its exp open a socket (found by an audit of the contract); skew is the operator's choice."""
    from chatserver.config import Settings

    token = jwt.encode({"sub": "bob", "exp": int(time.time()) - 2}, SECRET, algorithm="HS256")
    leeway = Settings.from_env({"CHAT_SECRET": SECRET}).token_leeway_s
    with pytest.raises(AuthError):
        TokenAuthority(SECRET, ttl_s=60, leeway_s=leeway).verify(token)
    with pytest.raises(AuthError):
        TokenAuthority(SECRET, ttl_s=60).verify(token)
