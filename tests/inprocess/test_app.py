"""In-process tier: the HTTP routes, the WebSocket handshake and sessions across two real
Tornado servers over the in-memory parts (``tests.inprocess.servers``)."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import cast

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamBufferFullError

from chatserver.bus import Bus, MemoryBroker, MemoryBus
from chatserver.registry import MemoryRegistry, RegistryError
from chatserver.web.socket import ChatSocket
from tests.chatclient import ChatClient, ConnectionClosed, refused_status
from tests.fakes import until
from tests.inprocess.servers import SECRET, T, cluster, connect, login


@pytest.mark.gen_test(timeout=20)
async def test_page_health_ready_and_metrics_answer() -> None:
    async with cluster(1) as [(url, _node)]:
        http = AsyncHTTPClient()
        page = await http.fetch(url + "/")
        assert b"<html" in page.body.lower() and "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert json.loads((await http.fetch(url + "/healthz")).body) == {"status": "ok"}
        assert (await http.fetch(url + "/readyz")).code == 200
        metrics = (await http.fetch(url + "/metrics")).body.decode()
        assert "chat_connections" in metrics and "chat_messages_routed_total" in metrics


@pytest.mark.gen_test(timeout=20)
async def test_page_modules_are_revalidated_so_an_upgrade_never_mixes_old_and_new() -> None:
    """The page loads main.js by a versioned URL (cached for long) and main.js imports the other
    modules by plain URLs: those must be checked with the server on every load (no-cache, a 304
    when unchanged), or a browser could run a new main.js with modules of the old release."""
    async with cluster(1) as [(url, _node)]:
        http = AsyncHTTPClient()
        page = (await http.fetch(url + "/")).body.decode()
        assert '<script type="module" src="/static/js/main.js?v=' in page
        main = (await http.fetch(url + "/static/js/main.js")).body.decode()
        imported = sorted(set(re.findall(r"from '\./([a-z]+\.js)';", main)))
        assert "connection.js" in imported, imported
        for name in imported:
            module = await http.fetch(f"{url}/static/js/{name}")
            assert module.headers.get("Cache-Control") == "no-cache", (name, module.headers.get("Cache-Control"))
            assert "javascript" in module.headers["Content-Type"]
            again = await http.fetch(
                f"{url}/static/js/{name}", headers={"If-None-Match": module.headers["Etag"]}, raise_error=False
            )
            assert again.code == 304, name
        versioned = await http.fetch(url + re.findall(r'src="(/static/js/main\.js\?v=[^"]+)"', page)[0])
        assert "max-age" in versioned.headers["Cache-Control"]


@pytest.mark.gen_test(timeout=20)
async def test_login_issues_tokens_and_refuses_bad_names_with_json_errors() -> None:
    async with cluster(1) as [(url, _node)]:
        http = AsyncHTTPClient()
        for body in ('{"username": "no spaces"}', '{"username": ""}', "[]", "not json", '{"username": 5}'):
            with pytest.raises(HTTPClientError) as info:
                await http.fetch(url + "/api/login", method="POST", body=body)
            assert info.value.code == 400
            assert info.value.response is not None
            assert json.loads(info.value.response.body)["error"]["code"] in {"bad_username", "bad_request"}
        with pytest.raises(HTTPClientError) as missing:
            await http.fetch(url + "/nowhere")
        assert missing.value.code == 404
        assert missing.value.response is not None
        assert json.loads(missing.value.response.body)["error"]["code"] == "not_found"


@pytest.mark.gen_test(timeout=20)
async def test_dev_login_can_be_turned_off() -> None:
    async with cluster(1, dev_login=False) as [(url, _node)]:
        with pytest.raises(HTTPClientError) as info:
            await login(url, "alice")
        assert info.value.code == 404


@pytest.mark.gen_test(timeout=20)
async def test_handshake_without_a_valid_token_or_from_a_foreign_origin_is_refused() -> None:
    async with cluster(1) as [(url, _node)]:
        assert await refused_status(url, None) == 401
        assert await refused_status(url, "not-a-jwt") == 401
        token = await login(url, "alice")
        assert await refused_status(url, token[:-3] + "AAA") == 401
        assert await refused_status(url, token, origin="http://evil.example") == 403
        client = await ChatClient.connect(url, token)  # same origin: accepted
        assert (await client.recv())["type"] == "welcome"


@pytest.mark.gen_test(timeout=20)
async def test_a_refused_handshake_says_why_in_json_like_every_http_error() -> None:
    async with cluster(1) as [(url, _node)]:
        token = await login(url, "alice")
        handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
        handshake["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
        for headers, status, code in (
            ({**handshake, "Origin": "http://evil.example"}, 403, "forbidden_origin"),
            ({}, 400, "not_websocket"),  # a plain GET of /ws
        ):
            with pytest.raises(HTTPClientError) as info:
                await AsyncHTTPClient().fetch(f"{url}/ws?token={token}", headers=headers)
            assert info.value.code == status
            assert info.value.response is not None
            error = json.loads(info.value.response.body)["error"]
            assert error["code"] == code and error["message"]


@pytest.mark.gen_test(timeout=20)
async def test_every_http_error_is_json_the_page_files_metrics_and_handshake_included() -> None:
    """The contract: errors over HTTP are JSON. Tornado's own answers were HTML: a missing file,
    a method a route does not take, and the handshake checks it makes after ``prepare``."""
    async with cluster(1) as [(url, _node)]:
        token = await login(url, "alice")
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
        upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
        cases: list[tuple[str, str, dict[str, str], int, str]] = [
            ("GET", "/static/nope.js", {}, 404, "not_found"),
            ("POST", "/", {}, 405, "method_not_allowed"),
            ("DELETE", "/", {}, 405, "method_not_allowed"),
            ("POST", "/metrics", {}, 405, "method_not_allowed"),
            ("GET", f"/ws?token={token}", {**upgrade, "Connection": "keep-alive"}, 400, "not_websocket"),
            ("GET", f"/ws?token={token}", {**upgrade, "Sec-WebSocket-Version": "12"}, 426, "unsupported_version"),
            (
                "GET",
                f"/ws?token={token}",
                {k: v for k, v in upgrade.items() if k != "Sec-WebSocket-Key"},
                400,
                "not_websocket",
            ),
        ]
        for method, path, headers, status, code in cases:
            body = "" if method == "POST" else None
            with pytest.raises(HTTPClientError) as info:
                await AsyncHTTPClient().fetch(url + path, method=method, headers=headers, body=body)
            assert info.value.code == status, (method, path)
            assert info.value.response is not None
            assert info.value.response.headers["Content-Type"].startswith("application/json"), (method, path)
            error = json.loads(info.value.response.body)["error"]
            assert error["code"] == code and error["message"], (method, path, error)


@pytest.mark.gen_test(timeout=20)
async def test_configured_origins_are_allowed() -> None:
    async with cluster(1, allowed_origins=("https://chat.example",)) as [(url, _node)]:
        token = await login(url, "alice")
        client = await ChatClient.connect(url, token, origin="https://chat.example")
        assert (await client.recv())["type"] == "welcome"
        assert await refused_status(url, token, origin="https://other.example") == 403


@pytest.mark.gen_test(timeout=20)
async def test_private_and_public_messages_cross_servers() -> None:
    async with cluster(2) as [(url1, _), (url2, _)]:
        alice, bob = await connect(url1, "alice"), await connect(url2, "bob")
        await alice.send({"type": "private", "to": "bob", "text": "hi bob", "cid": "1", "from": "mallory"})
        msg = await bob.recv_type("message")
        assert (msg["from"], msg["to"], msg["text"]) == ("alice", "bob", "hi bob")
        assert (await alice.recv_type("ack"))["id"] == msg["id"]
        await bob.send({"type": "public", "text": "hello all"})
        for client in (alice, bob):
            got = await client.recv_type("message")
            assert (got["kind"], got["from"], got["text"]) == ("public", "bob", "hello all")


@pytest.mark.gen_test(timeout=20)
async def test_bad_frames_get_errors_and_the_connection_lives() -> None:
    async with cluster(1) as [(url, _node)]:
        alice = await connect(url, "alice")
        cases: list[tuple[str | bytes, str]] = [
            ("nonsense", "bad_frame"),
            ('{"type": "teleport", "cid": "t"}', "unknown_type"),
            (json.dumps({"type": "public", "text": "x" * 4001}), "too_large"),
            (b"\x00\x01binary", "bad_frame"),
        ]
        for raw, code in cases:
            await alice.send(raw)
            assert (await alice.recv_type("error"))["code"] == code
        await alice.send({"type": "ping", "cid": "still-here"})
        assert await alice.recv_type("pong") == {"type": "pong", "cid": "still-here"}


@pytest.mark.parametrize("msgpack_protocol", [False, True])
@pytest.mark.gen_test(timeout=20)
async def test_a_text_frame_that_is_not_utf8_gets_an_error_and_the_connection_lives(msgpack_protocol: bool) -> None:
    """The contract: a bad frame gets an error, never a dropped connection. Tornado drops one
    whose text is not valid UTF-8, with no close frame and no word of why."""
    async with cluster(1) as [(url, _node)]:
        alice = await ChatClient.connect(url, await login(url, "alice"), msgpack_protocol=msgpack_protocol)
        assert (await alice.recv())["type"] == "welcome"
        await alice.conn.write_message(b'{"type": "public", "text": "\xff"}', binary=False)
        error = await alice.recv_type("error")
        assert error["code"] == "bad_frame" and error["message"]
        await alice.send({"type": "ping", "cid": "still-here"})
        assert await alice.recv_type("pong") == {"type": "pong", "cid": "still-here"}


@pytest.mark.gen_test(timeout=20)
async def test_frame_over_64_kib_closes_with_1009() -> None:
    async with cluster(1) as [(url, _node)]:
        alice = await connect(url, "alice")
        await alice.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as info:
            await alice.recv()
        assert info.value.code == 1009


@pytest.mark.gen_test(timeout=20)
async def test_msgpack_subprotocol_speaks_binary_maps() -> None:
    async with cluster(1) as [(url, _node)]:
        token = await login(url, "alice")
        alice = await ChatClient.connect(url, token, msgpack_protocol=True)
        assert (await alice.recv())["type"] == "welcome"
        await alice.send({"type": "public", "text": "packed", "cid": "m"})
        assert (await alice.recv_type("message"))["text"] == "packed"


@pytest.mark.gen_test(timeout=20)
async def test_graceful_stop_closes_sessions_with_1001_and_reports_not_ready() -> None:
    async with cluster(1) as [(url, node)]:
        alice = await connect(url, "alice")
        await node.stop()
        with pytest.raises(ConnectionClosed) as info:
            await alice.recv()
        assert info.value.code == 1001
        with pytest.raises(HTTPClientError) as ready:
            await AsyncHTTPClient().fetch(url + "/readyz")
        assert ready.value.code == 503


@pytest.mark.gen_test(timeout=20)
async def test_the_operator_page_is_off_by_default_and_guarded_by_its_token() -> None:
    async with cluster(1) as [(url, _node)]:
        with pytest.raises(HTTPClientError) as off:
            await AsyncHTTPClient().fetch(url + "/admin")
        assert off.value.code == 404
    token = "operator-token-0123456789"
    async with cluster(2, admin_token=token) as [(url, _node), (_url2, _node2)]:
        http = AsyncHTTPClient()
        page = await http.fetch(url + "/admin")
        assert b"admin.js" in page.body and "script-src 'self'" in page.headers["Content-Security-Policy"]
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            with pytest.raises(HTTPClientError) as refused:
                await http.fetch(url + "/admin/api/cluster", headers=headers)
            assert refused.value.code == 401
        alice = await connect(url, "alice")
        await _node.router.heartbeat(live=True)
        await _node.registry.publish_stats("ws-1", _node.stats())
        await _node2.registry.publish_stats("ws-2", _node2.stats())
        body = json.loads(
            (await http.fetch(url + "/admin/api/cluster", headers={"Authorization": f"Bearer {token}"})).body
        )
        assert set(body["servers"]) == {"ws-1", "ws-2"}
        assert body["servers"]["ws-1"]["connections"] == "1" and body["servers"]["ws-1"]["state"] == "ready"
        metrics = (await http.fetch(url + "/metrics")).body.decode()
        assert "chat_consumer_lag 0.0" in metrics
        assert 'chat_frames_out_total{type="welcome"} 1.0' in metrics
        assert 'chat_registry_ops_total{op="add"} 1.0' in metrics
        assert "chat_sessions_per_user_bucket" in metrics
        alice.close()


@pytest.mark.gen_test(timeout=20)
async def test_keepalive_pings_every_socket_and_closes_one_that_never_answers() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import wsclient  # the load generator's client: it lets a test swallow pings

    async with cluster(1, ping_interval_s=0.3) as [(url, _)]:
        answering = await connect(url, "pinged")  # tornado's client answers pings itself
        silent = await wsclient.connect(url.replace("http", "ws") + "/ws?token=" + await login(url, "mute"))
        original = silent._on_frame
        pings = []

        def no_pongs(fin: bool, opcode: int, payload: bytes) -> None:
            if opcode == 9:
                pings.append(payload)  # a ping: swallowed, never answered
                return
            original(fin, opcode, payload)

        silent._on_frame = no_pongs  # type: ignore[method-assign]
        await answering.drain(1.5)  # keeps reading: tornado's client stops (and pongs late) on a full queue
        assert pings, "the server pings"
        assert silent.close_code is not None, "a peer that never answers is closed"
        await answering.send({"type": "ping", "cid": "still-there"})
        assert (await answering.recv_type("pong"))["cid"] == "still-there", "one that answers stays"


@pytest.mark.gen_test(timeout=20)
async def test_a_name_with_a_trailing_newline_gets_no_token_and_no_session() -> None:
    async with cluster(1) as [(url, _node)]:
        with pytest.raises(HTTPClientError) as info:
            await login(url, "alice\n")
        assert info.value.code == 400
        assert info.value.response is not None
        assert json.loads(info.value.response.body)["error"]["code"] == "bad_username"
        # A token another application issued with the same secret, naming no valid user.
        token = jwt.encode({"sub": "alice\n", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        assert await refused_status(url, token) == 401


async def until_async(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """Call ``probe`` until ``done`` holds for its answer; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"{what}: last {got!r}"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=20)
async def test_an_open_socket_keeps_nothing_of_its_handshake_and_still_works() -> None:
    async with cluster(1, ping_interval_s=0.2) as [(url, node)]:
        held = await connect(url, "held")
        [session] = [s for s in node.hub.sessions() if s.user == "held"]
        socket = cast(ChatSocket, session)
        assert len(socket.request.headers) == 0, "the handshake's headers are emptied once it is open"
        assert not socket.request.arguments and not socket.request.query_arguments, "the token is not kept"
        assert "token=" not in socket.request.path
        other = await connect(url, "other")
        await other.send({"type": "private", "to": "held", "text": "still reachable", "cid": "c1"})
        assert (await held.recv_type("message"))["text"] == "still reachable"
        await held.drain(0.6)  # pinged and answered meanwhile: the keepalive needs no header
        await held.send({"type": "ping", "cid": "after"})
        assert (await held.recv_type("pong"))["cid"] == "after"


@pytest.mark.gen_test(timeout=20)
async def test_a_socket_whose_ping_fails_is_dropped_and_the_others_are_still_pinged() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import wsclient

    async with cluster(1, ping_interval_s=0.2) as [(url, node)]:
        stuck = await connect(url, "stuck")
        watchers = []
        for name in ("w1", "w2", "w3"):
            watcher = await wsclient.connect(url.replace("http", "ws") + "/ws?token=" + await login(url, name))
            pings: list[bytes] = []
            original = watcher._on_frame

            def counting(
                fin: bool,
                opcode: int,
                payload: bytes,
                pings: list[bytes] = pings,
                original: Callable[[bool, int, bytes], None] = original,
            ) -> None:
                if opcode == 9:
                    pings.append(payload)
                original(fin, opcode, payload)  # answers the ping

            watcher._on_frame = counting  # type: ignore[method-assign]
            watchers.append((watcher, pings))
        [session] = [s for s in node.hub.sessions() if s.user == "stuck"]
        conn = cast(ChatSocket, session).ws_connection
        assert conn is not None

        def full(data: bytes) -> None:  # what a ping to a client that reads nothing meets
            raise StreamBufferFullError("Reached maximum write buffer size")

        conn.write_ping = full  # type: ignore[method-assign]
        await until(lambda: all(len(p) >= 4 for _, p in watchers), "every other socket keeps being pinged")
        with pytest.raises(ConnectionClosed):  # dropped, like a client that does not read its messages
            await stuck.recv_until(lambda frame: False, timeout=3.0)
        for watcher, _ in watchers:
            assert watcher.close_code is None, "sockets that answer stay open"


async def readyz(url: str) -> tuple[int, str]:
    """The status of /readyz and, when not ready, its reason."""
    response = await AsyncHTTPClient().fetch(url + "/readyz", raise_error=False)
    if response.code == 200:
        return 200, ""
    return response.code, json.loads(response.body)["error"]["message"]


class FlakyRegistry(MemoryRegistry):
    """A registry whose heartbeats fail with ``failure`` while it is set."""

    failure: Exception | None = None

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        if self.failure is not None:
            raise self.failure
        await super().heartbeat(server_id, users, live)


@pytest.mark.gen_test(timeout=30)
async def test_readiness_reports_failing_heartbeats_of_any_kind_and_recovers_with_them() -> None:
    registry = FlakyRegistry(ttl_s=30)
    async with cluster(1, registry=registry, heartbeat_s=0.05) as [(url, _node)]:
        await until_async(lambda: readyz(url), lambda got: got[0] == 200, 5.0, "ready at first")
        # Not only RegistryError: a bug, a reply the client cannot parse, a closed pool ...
        for failure in (ValueError("unexpected reply from redis"), RegistryError("redis: connection refused")):
            registry.failure = failure
            _code, reason = await until_async(lambda: readyz(url), lambda got: got[0] == 503, 5.0, f"503 on {failure}")
            assert "heartbeat" in reason and str(failure) in reason, reason
            assert await refused_status(url, await login(url, "newcomer")) == 503, "no new sessions meanwhile"
            registry.failure = None
            await until_async(lambda: readyz(url), lambda got: got[0] == 200, 5.0, "the heartbeat recovers")
        await connect(url, "newcomer")


@pytest.mark.gen_test(timeout=30)
async def test_readiness_reports_a_heartbeat_task_that_ended() -> None:
    async with cluster(1, heartbeat_s=0.05) as [(url, node)]:
        await until_async(lambda: readyz(url), lambda got: got[0] == 200, 5.0, "ready at first")
        task = node._heartbeat_task
        assert task is not None
        task.cancel()  # however it ends: nothing refreshes this server's entries any more
        _code, reason = await until_async(lambda: readyz(url), lambda got: got[0] == 503, 5.0, "503 once it ended")
        assert "heartbeat" in reason and "stopped" in reason, reason


class StallingBus(MemoryBus):
    """A memory bus whose probe can be made to stall (Kafka slow); messages still flow."""

    stalled = False

    def status(self) -> tuple[bool, str]:
        return (False, "kafka: no probe came back for 20s") if self.stalled else (True, "ok")


@pytest.mark.gen_test(timeout=30)
async def test_a_server_whose_probe_stalls_past_the_ttl_still_gets_public_messages_but_no_new_sessions() -> None:
    shift = [0.0]
    registry = MemoryRegistry(ttl_s=15, clock=lambda: time.monotonic() + shift[0])
    buses: dict[str, StallingBus] = {}

    def bus(broker: MemoryBroker, server_id: str) -> Bus:
        buses[server_id] = StallingBus(broker, server_id)
        return buses[server_id]

    async with cluster(2, registry=registry, bus=bus, heartbeat_s=0.05) as [(url1, _), (url2, _)]:
        for url in (url1, url2):
            await until_async(functools.partial(readyz, url), lambda got: got[0] == 200, 5.0, "both ready")
        alice, bob = await connect(url1, "alice"), await connect(url2, "bob")
        buses["ws-2"].stalled = True
        shift[0] += 20.0  # the TTL passes while ws-2's probe stalls; bob's session stays open

        async def heartbeats_after_the_stall() -> tuple[set[str], set[str]]:
            return (await registry.servers_of(["alice", "bob"]))["bob"], await registry.live_servers()

        # Both servers heartbeat again (bob's entry comes back), ws-1 is announced again.
        await until_async(
            heartbeats_after_the_stall,
            lambda got: got[0] == {"ws-2"} and "ws-1" in got[1],
            5.0,
            "both servers heartbeat after the stall",
        )
        code, reason = await readyz(url2)
        assert code == 503 and "probe" in reason, "readiness still follows the probe"
        assert await refused_status(url2, await login(url2, "carol")) == 503, "no new sessions there"
        await alice.send({"type": "public", "text": "to everyone", "cid": "p"})
        assert (await alice.recv_type("ack"))["cid"] == "p"
        got = await bob.recv_type("message")
        assert (got["from"], got["text"]) == ("alice", "to everyone"), "acked means delivered to bob too"
