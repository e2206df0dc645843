"""Hostile clients against in-process servers: floods, too many connections, spoofed
addresses, bad tokens, a client that never reads, and fuzzed frames through the router."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import jwt
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from chatserver.accounts import ATTEMPTS_PER_MINUTE
from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.history import MemoryHistory
from chatserver.hub import Hub
from chatserver.limits import Limits, MemoryUserLimiter
from chatserver.metrics import Metrics
from chatserver.registry import MemoryRegistry
from chatserver.router import Router
from tests.chatclient import ChatClient, ConnectionClosed, refused_status
from tests.fakes import FakeSession, settle
from tests.inprocess.servers import SECRET, cluster, connect, login


@pytest.mark.gen_test(timeout=30)
async def test_a_flooding_connection_is_rate_limited_then_closed_and_others_are_unaffected() -> None:
    async with cluster(1, conn_rate_per_s=10.0, conn_burst=5, flood_strikes=30) as [(url, _node)]:
        flooder, calm = await connect(url, "flooder"), await connect(url, "calm")
        for i in range(10):
            await flooder.send({"type": "ping", "cid": f"f{i}"})
        frames = [await flooder.recv() for _ in range(10)]
        limited = [f for f in frames if f["type"] == "error"]
        assert limited and all(f["code"] == "rate_limited" for f in limited)
        assert {f["cid"] for f in limited} <= {f"f{i}" for i in range(10)}, "refusals echo the cid"
        assert sum(f["type"] == "pong" for f in frames) >= 5, "the burst goes through"
        await calm.send({"type": "ping", "cid": "ok"})
        assert await calm.recv_type("pong") == {"type": "pong", "cid": "ok"}
        await asyncio.sleep(0.3)  # tokens come back: the connection was kept
        await flooder.send({"type": "ping", "cid": "later"})
        assert (await flooder.recv_until(lambda f: f.get("cid") == "later"))["type"] == "pong"
        for _ in range(60):  # keeps flooding after errors
            await flooder.send({"type": "ping"})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await flooder.recv(timeout=5)
        assert closed.value.code == 1008
        await calm.send({"type": "ping", "cid": "still"})
        assert (await calm.recv_type("pong"))["cid"] == "still"


@pytest.mark.gen_test(timeout=30)
async def test_the_per_user_limit_spans_sessions() -> None:
    limiter = MemoryUserLimiter(per_second=3, clock=lambda: 1000.0)  # one window throughout
    router = Router("ws-1", Hub(), MemoryRegistry(30), MemoryHistory(), MemoryBus(MemoryBroker(), "ws-1"), Metrics(),
                    Limits(user=limiter))  # fmt: skip
    await router.parts.bus.start(router.on_bus_message)
    phone, laptop = FakeSession("ann"), FakeSession("ann")
    await router.connect(phone)
    await router.connect(laptop)
    for i in range(3):
        for session in (phone, laptop):
            await router.handle(session, json.dumps({"type": "public", "text": "x", "cid": f"{session.id}-{i}"}))
    await settle()
    acks = phone.of_type("ack") + laptop.of_type("ack")
    limited = [f for f in phone.frames + laptop.frames if f["type"] == "error" and f["code"] == "rate_limited"]
    assert len(acks) == 3 and len(limited) == 3
    assert "across your sessions" in limited[0]["message"]


@pytest.mark.gen_test(timeout=30)
async def test_connections_per_user_are_limited_with_a_clear_429() -> None:
    async with cluster(1, max_sessions_per_user=2) as [(url, _node)]:
        token = await login(url, "many")
        first = await ChatClient.connect(url, token)
        second = await ChatClient.connect(url, token)
        assert await refused_status(url, token) == 429
        first.close()
        await asyncio.sleep(0.2)
        third = await ChatClient.connect(url, token)  # a slot is free again
        assert (await third.recv())["type"] == "welcome"
        second.close()


async def _connect_from(url: str, token: str, real_ip: str) -> int:
    request = HTTPRequest(
        url.replace("http", "ws") + f"/ws?token={token}", headers={"Origin": url, "X-Real-IP": real_ip}
    )
    try:
        conn = await websocket_connect(request)
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    return 101


@pytest.mark.gen_test(timeout=30)
async def test_x_real_ip_is_believed_only_from_trusted_proxies() -> None:
    async with cluster(1, max_conns_per_ip=1, trusted_proxies=("127.0.0.1",)) as [(url, _node)]:
        a, b = await login(url, "ipa"), await login(url, "ipb")
        held = await ChatClient.connect(url, a)  # from 127.0.0.1 itself
        assert await _connect_from(url, b, "203.0.113.7") == 101, "a proxied client is counted by its address"
        held.close()
    async with cluster(1, max_conns_per_ip=1, trusted_proxies=()) as [(url, _node)]:
        a, b = await login(url, "ipa"), await login(url, "ipb")
        held = await ChatClient.connect(url, a)
        assert await _connect_from(url, b, "203.0.113.7") == 429, "a spoofed X-Real-IP is ignored"
        held.close()


async def _open_from(url: str, token: str, real_ip: str) -> WebSocketClientConnection | int:
    """A WebSocket that a proxy opened for client ``real_ip``, or the status that refused it."""
    request = HTTPRequest(
        url.replace("http", "ws") + f"/ws?token={token}", headers={"Origin": url, "X-Real-IP": real_ip}
    )
    try:
        return await websocket_connect(request)
    except HTTPClientError as exc:
        return exc.code


@pytest.mark.gen_test(timeout=30)
async def test_a_trusted_proxy_network_has_its_clients_counted_each_by_their_address() -> None:
    """CHAT_TRUSTED_PROXIES=127.0.0.0/8: a proxy anywhere in that network speaks for its clients,
    so the per-address limit counts each client, not the proxy."""
    async with cluster(1, max_conns_per_ip=1, trusted_proxies=("127.0.0.0/8",)) as [(url, _node)]:
        a, b, c = await login(url, "pa"), await login(url, "pb"), await login(url, "pc")
        first = await _open_from(url, a, "203.0.113.7")
        assert not isinstance(first, int), f"refused with {first}"
        assert await _open_from(url, b, "203.0.113.7") == 429, "the same client twice is over its limit"
        other = await _open_from(url, c, "203.0.113.8")
        assert not isinstance(other, int), f"another client behind the same proxy was refused ({other})"
        first.close()
        other.close()


@pytest.mark.gen_test(timeout=30)
async def test_sign_in_attempts_behind_a_trusted_proxy_are_limited_per_client() -> None:
    async with cluster(1, accounts=True, dev_login=False, trusted_proxies=("127.0.0.0/8",)) as [(url, _node)]:

        async def attempt(user: str, ip: str) -> int:
            body = json.dumps({"username": user, "password": "not the password"})
            request = HTTPRequest(url + "/api/login", method="POST", body=body, headers={"X-Real-IP": ip})
            try:
                await AsyncHTTPClient().fetch(request)
            except HTTPClientError as exc:
                return exc.code
            return 200

        guesses = [await attempt(f"user{i}", "198.51.100.1") for i in range(ATTEMPTS_PER_MINUTE + 1)]
        assert guesses[:ATTEMPTS_PER_MINUTE] == [401] * ATTEMPTS_PER_MINUTE and guesses[-1] == 429, guesses
        assert await attempt("user0", "198.51.100.2") == 401, "another client behind the proxy is not limited"


@pytest.mark.gen_test(timeout=30)
async def test_forged_expired_none_and_wrong_key_tokens_get_401() -> None:
    async with cluster(1) as [(url, _node)]:
        now = int(time.time())
        tokens = [
            jwt.encode({"sub": "eve", "exp": now + 60}, "w" * 40, algorithm="HS256"),
            jwt.encode({"sub": "eve", "exp": now - 3600}, SECRET, algorithm="HS256"),
            jwt.encode({"sub": "eve", "exp": now + 60}, None, algorithm="none"),
            jwt.encode({"sub": "eve"}, SECRET, algorithm="HS256"),
            jwt.encode({"sub": "../etc", "exp": now + 60}, SECRET, algorithm="HS256"),
        ]
        for token in tokens:
            assert await refused_status(url, token) == 401


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_never_reads_is_dropped_and_others_keep_receiving() -> None:
    # No wait for a resume after welcome (CHAT_RESUME_WAIT_MS=0): the sloth never sends one, and
    # held back for the wait, it would not be the first to fill its buffer.
    async with cluster(1, max_send_buffer=64 * 1024, conn_rate_per_s=0.0, resume_wait_ms=0) as [(url, node)]:
        port = int(url.rsplit(":", 1)[1])
        token = await login(url, "sloth")
        loop = asyncio.get_running_loop()
        sloth = socket.socket()
        sloth.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sloth.setblocking(False)  # the server runs on this very loop: never block it
        await loop.sock_connect(sloth, ("127.0.0.1", port))
        await loop.sock_sendall(
            sloth,
            (
                f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        assert await loop.sock_recv(sloth, 12) == b"HTTP/1.1 101"  # upgraded; from now on it never reads
        reader, writer = await connect(url, "reader"), await connect(url, "writer")
        text = "z" * 4000
        sent = 0
        # Kernel buffers on loopback absorb a few MB before the server's own buffer grows:
        # keep sending (at most ~16 MB) until the server gives up on the client.
        while node.hub.has_user("sloth") and sent < 4000:
            for _ in range(100):
                await writer.send({"type": "public", "text": text, "cid": str(sent)})
                sent += 1
            for _ in range(100):
                await writer.recv_type("ack", timeout=10)
        assert not node.hub.has_user("sloth"), f"the client that never read was not dropped after {sent} messages"
        got = 0
        while got < sent:
            frame = await reader.recv(timeout=10)
            got += frame["type"] == "message"
        assert got == sent, "the reading client got everything"
        print(f"\nnever-reading client dropped after {sent} messages of 4000 characters")
        sloth.close()


@st.composite
def hostile_frames(draw: st.DrawFn) -> str | bytes:
    value = st.one_of(
        st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)
    )
    frame = draw(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["public", "private", "ping", "history", "resume", "join", "x"])},
            optional={
                "text": value | st.text(min_size=1, max_size=30),
                "to": value | st.sampled_from(["bob", "alice"]),
                "from": value | st.just("bob"),
                "cid": value,
                "channel": value | st.sampled_from(["public", "user:bob", "user:alice"]),
                "positions": st.dictionaries(st.text(max_size=12), value, max_size=3),
            },
        )
    )
    choices: list[str | bytes] = [json.dumps(frame), json.dumps(frame)[:-1], b"\x93\x01", "[]", _packed(frame)]
    return draw(st.sampled_from(choices))


def _packed(frame: dict[str, Any]) -> bytes:
    """The frame as msgpack: on a JSON connection, refused as binary, never a crash."""
    try:
        return bytes(msgpack.packb(frame))
    except OverflowError:
        return b"\xc1"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_frames(), min_size=1, max_size=8))
def test_fuzzed_frames_never_escape_never_close_and_never_speak_for_another_user(frames: list[Any]) -> None:
    async def scenario() -> None:
        registry, history, broker = MemoryRegistry(30), MemoryHistory(), MemoryBroker()
        router = Router("ws-1", Hub(), registry, history, MemoryBus(broker, "ws-1"), Metrics())
        await router.parts.bus.start(router.on_bus_message)
        await router.heartbeat(live=True)
        alice, bob = FakeSession("alice"), FakeSession("bob")
        await router.connect(alice)
        await router.connect(bob)
        for raw in frames:
            before = len(alice.frames)
            await router.handle(alice, raw)  # must not raise
            await settle()
            assert len(alice.frames) > before, "every frame gets an answer (a reply or an error)"
        assert alice.closed is None and bob.closed is None
        for session in (alice, bob):
            for frame in session.of_type("message"):
                assert frame["from"] == "alice", "a message can only come from its sender"
            for frame in session.of_type("history"):
                assert all(m["from"] == "alice" for m in frame["messages"])

    asyncio.run(scenario())
