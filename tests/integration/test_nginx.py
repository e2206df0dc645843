"""Through nginx, as users reach the cluster: one address, WebSockets spread over servers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.chatclient import ChatClient, refused_status
from tests.conftest import free_port
from tests.fakes import until
from tests.integration.conftest import NginxFront, RealCluster


def login(url: str, user: str) -> str:
    request = urllib.request.Request(url + "/api/login", data=json.dumps({"username": user}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        token: str = json.loads(response.read())["token"]
        return token


@pytest.mark.gen_test(timeout=30)
async def test_users_behind_nginx_land_on_both_servers_and_chat(cluster: RealCluster, nginx: NginxFront) -> None:
    clients, servers = [], set()
    for user in ("ann", "ben", "cat", "dan"):
        client = await ChatClient.connect(nginx.url, login(nginx.url, user))
        welcome = await client.recv()
        servers.add(welcome["server"])
        clients.append(client)
    assert servers == {cluster.server_id(1), cluster.server_id(2)}, "least_conn spreads sockets over servers"
    ann, ben, _cat, dan = clients
    await ann.send({"type": "private", "to": "dan", "text": "via nginx", "cid": "1"})
    assert (await dan.recv_type("message"))["text"] == "via nginx"
    await ben.send({"type": "public", "text": "to all via nginx"})
    for client in clients:
        assert (await client.recv_type("message"))["text"] == "to all via nginx"


@pytest.mark.gen_test(timeout=30)
async def test_nginx_passes_the_host_so_origin_checks_hold(cluster: RealCluster, nginx: NginxFront) -> None:
    token = login(nginx.url, "eve")
    assert await refused_status(nginx.url, token, origin="http://evil.example") == 403
    assert await refused_status(nginx.url, None) == 401
    client = await ChatClient.connect(nginx.url, token, origin=nginx.url)
    assert (await client.recv())["type"] == "welcome"


def test_the_page_is_served_through_nginx(nginx: NginxFront) -> None:
    with urllib.request.urlopen(nginx.url + "/", timeout=5) as response:
        assert response.status == 200
        assert b'<script type="module" src="/static/js/main.js' in response.read()
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def answer(url: str) -> tuple[int, str, dict[str, str]]:
    """Status, Content-Type and, for a refusal, its ``error`` object, of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.headers["Content-Type"], {}
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["Content-Type"], json.loads(refused.read())["error"]


@pytest.mark.gen_test(timeout=30)
async def test_nginx_answers_its_own_errors_in_json_too(cluster: RealCluster, nginx: NginxFront) -> None:
    """Every HTTP error of the chat is JSON, nginx's own included: they were its HTML pages."""
    status, kind, error = answer(nginx.url + "/metrics")  # scraped from each server, not here
    assert (status, kind, error["code"]) == (404, "application/json", "not_found") and error["message"]
    nginx.set_upstream([free_port()])  # no chat server behind it
    try:
        answers: list[tuple[int, str, dict[str, str]]] = []

        def refused() -> bool:  # until the reload reaches every worker, some answer with the servers
            answers.append(answer(nginx.url + "/readyz"))
            return answers[-1][0] == 502

        await until(refused, "a 502 once nginx reloaded")
        status, kind, error = answers[-1]
        assert (kind, error["code"]) == ("application/json", "not_ready") and "retry" in error["message"]
    finally:
        nginx.set_upstream([server.port for server in cluster.servers.values()])
    await until(lambda: answer(nginx.url + "/healthz")[0] == 200, "the servers behind nginx again")
