"""A session lives as long as its token: closed with 4001 once the token's exp (and the clock
leeway) passes, unless the client renews it with ``refresh``; meanwhile nothing is lost."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.chatclient import ChatClient, ConnectionClosed
from tests.inprocess.servers import SECRET, cluster, connect


def _has_cid(cid: str, frame: dict[str, Any]) -> bool:
    return frame.get("cid") == cid


def _token(user: str, lifetime_s: float) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + lifetime_s)}, SECRET, algorithm="HS256")


async def _closed_code(client: ChatClient, timeout: float) -> int | None:
    """The close code, once the server closes the socket (frames before it are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await client.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.code
        except TimeoutError:
            break
    raise AssertionError(f"the server did not close the socket within {timeout} s")


@pytest.mark.gen_test(timeout=30)
async def test_a_session_whose_token_expires_is_closed_with_4001() -> None:
    async with cluster(1, token_leeway_s=0) as [(url, _node)]:
        client = await ChatClient.connect(url, _token("alice", 2))
        assert (await client.recv())["type"] == "welcome"
        assert await _closed_code(client, timeout=10) == 4001
        assert client.conn.close_reason == "token expired: get a new token, reconnect and resume"


@pytest.mark.gen_test(timeout=30)
async def test_a_renewed_session_outlives_its_first_token_and_misses_nothing() -> None:
    async with cluster(1, token_leeway_s=0) as [(url, _node)]:
        first_exp = int(time.time() + 2)
        first = jwt.encode({"sub": "alice", "exp": first_exp}, SECRET, algorithm="HS256")
        alice = await ChatClient.connect(url, first)
        assert (await alice.recv())["type"] == "welcome"
        bob = await connect(url, "bob")
        await alice.send({"type": "refresh", "token": _token("alice", 6), "cid": "r1"})
        assert (await alice.recv_type("refreshed"))["cid"] == "r1"
        # A conversation that goes on past the first token's exp (a few messages a second):
        # the session stays open, and every message arrives.
        sent = 0
        while time.time() < first_exp + 0.5:
            sent += 1
            cid = f"b{sent}"
            await bob.send({"type": "private", "to": "alice", "text": f"m{sent}", "cid": cid})
            assert (await bob.recv_until(partial(_has_cid, cid)))["type"] == "ack"
            await asyncio.sleep(0.2)  # pacing, not waiting for anything
        texts = [(await alice.recv_type("message"))["text"] for _ in range(sent)]
        assert texts == [f"m{i}" for i in range(1, sent + 1)]
        # The renewed token runs out in turn: the session ends then.
        assert await _closed_code(alice, timeout=10) == 4001
        bob.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_page_may_fetch_its_token_from_the_application_elsewhere() -> None:
    """CHAT_TOKEN_URL on another origin: the page's CSP lets it connect there, and nowhere else."""
    async with cluster(1, token_url="https://app.example:8443/chat/token") as [(url, _node)]:
        response = await AsyncHTTPClient().fetch(url + "/")
        csp = response.headers["Content-Security-Policy"]
        assert "connect-src 'self' https://app.example:8443;" in csp and "script-src 'self';" in csp
    async with cluster(1, token_url="/auth/chat-token") as [(url, _node)]:
        response = await AsyncHTTPClient().fetch(url + "/")
        assert "connect-src 'self';" in response.headers["Content-Security-Policy"]


@pytest.mark.gen_test(timeout=30)
async def test_the_page_is_told_how_to_sign_in() -> None:
    """The template's data-* attributes, which static/js/signin.js reads."""
    async with cluster(1, token_url="https://app.example/t", dev_login=False) as [(url, _node)]:
        page = (await AsyncHTTPClient().fetch(url + "/")).body.decode()
        assert '<body data-token-url="https://app.example/t" data-accounts="0" data-dev-login="0">' in page
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        page = (await AsyncHTTPClient().fetch(url + "/")).body.decode()
        assert '<body data-token-url="" data-accounts="1" data-dev-login="0">' in page
