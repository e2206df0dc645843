"""Built-in accounts (CHAT_ACCOUNTS=1, protocol version 2): sign up, sign in with the password,
the same answer for a wrong password and an unknown name, attempts limited; off by default."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from chatserver.accounts import ATTEMPTS_PER_MINUTE
from tests.chatclient import ChatClient
from tests.inprocess.servers import cluster


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    try:
        response = await AsyncHTTPClient().fetch(url + path, method="POST", body=json.dumps(body))
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


@pytest.mark.gen_test(timeout=30)
async def test_sign_up_then_sign_in_with_the_password_and_chat() -> None:
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        status, body = await post(url, "/api/signup", {"username": "alice", "password": "correct horse"})
        assert (status, body["username"]) == (201, "alice")
        client = await ChatClient.connect(url, body["token"])
        assert (await client.recv())["user"] == "alice"
        status, body = await post(url, "/api/login", {"username": "alice", "password": "correct horse"})
        assert (status, body["username"]) == (200, "alice") and body["token"]
        assert (await post(url, "/api/signup", {"username": "alice", "password": "another one"}))[0] == 409
        assert (await post(url, "/api/signup", {"username": "bob", "password": "short"}))[0] == 400


@pytest.mark.gen_test(timeout=30)
async def test_a_name_alone_is_dev_login_and_answers_404_while_that_is_off() -> None:
    """The contract: dev login off answers 404, accounts or not. With accounts on it was a 400."""
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        status, body = await post(url, "/api/login", {"username": "alice"})
        assert (status, body["error"]["code"]) == (404, "not_found")
        assert "password" in body["error"]["message"]


@pytest.mark.gen_test(timeout=30)
async def test_a_wrong_password_and_an_unknown_name_get_the_same_answer() -> None:
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        await post(url, "/api/signup", {"username": "alice", "password": "correct horse"})
        wrong = await post(url, "/api/login", {"username": "alice", "password": "battery staple"})
        unknown = await post(url, "/api/login", {"username": "nobody", "password": "battery staple"})
        assert wrong == unknown == (401, {"error": {"code": "bad_credentials", "message": "wrong name or password"}})


@pytest.mark.gen_test(timeout=60)
async def test_guessing_a_password_is_limited() -> None:
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        await post(url, "/api/signup", {"username": "alice", "password": "correct horse"})
        codes = [
            (await post(url, "/api/login", {"username": "alice", "password": f"guess {i}"}))[0]
            for i in range(ATTEMPTS_PER_MINUTE + 2)
        ]
        assert codes[-1] == 429 and set(codes[: ATTEMPTS_PER_MINUTE - 1]) == {401}


@pytest.mark.gen_test(timeout=30)
async def test_accounts_are_off_by_default() -> None:
    async with cluster(1, dev_login=False) as [(url, _node)]:
        assert (await post(url, "/api/signup", {"username": "alice", "password": "correct horse"}))[0] == 404
        assert (await post(url, "/api/login", {"username": "alice", "password": "correct horse"}))[0] == 404


@pytest.mark.gen_test(timeout=30)
async def test_no_password_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with cluster(1, accounts=True, dev_login=False) as [(url, _node)]:
        await post(url, "/api/signup", {"username": "alice", "password": "hunter2-correct-horse"})
        await post(url, "/api/login", {"username": "alice", "password": "hunter2-correct-horse"})
        await post(url, "/api/login", {"username": "alice", "password": "hunter2-wrong-guess"})
        await post(url, "/api/signup", {"username": "bob", "password": "hunter2"})  # too short: refused
    assert any("/api/login" in r.getMessage() for r in caplog.records), "the access log was not captured"
    leaked = [r.getMessage() for r in caplog.records if "hunter2" in r.getMessage() or "hunter2" in str(r.args)]
    assert leaked == []
