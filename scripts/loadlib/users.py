"""A worker's users: logging them in (or minting their tokens), opening their WebSockets (welcome,
then resume), joining the room, and closing them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from .client import ConnectionClosed, InvalidHandshake, connect
from .cluster import Fatal, describe_connect_error, http_login, mint_token, ws_url
from .link import Link, StreamLink, open_link
from .scenarios import Script
from .wire import ProtocolError

CONNECT_TIMEOUT_S = 10.0  # a handshake and, over ws://, the welcome
WELCOME_TIMEOUT_S = 10.0  # the welcome after a wss:// handshake
MAX_SIZE = 1 << 20  # the largest frame accepted from the server


class Conn:
    """One WebSocket user. ``gid`` >= 0: it sends as sender ``gid``; ``rid`` >= 0: it counts what
    it receives as receiver ``rid``."""

    __slots__ = ("connected", "gid", "link", "name", "next_seq", "peer", "pending", "rid", "url")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.url: str = spec["url"]
        self.gid: int = spec["gid"]
        self.rid: int = spec["rid"]
        self.peer: str | None = spec.get("peer")
        self.link: Link | StreamLink | None = None
        self.connected = False
        self.next_seq = 0
        self.pending: dict[int, tuple[int, bool]] = {}  # seq -> (send time ns, measured)


async def connect_all(
    plan: dict[str, Any], conns: list[Conn], script: Script, attach: Callable[[Conn], None]
) -> dict[str, Any]:
    """Log every user in and open its connection, ``connect_concurrency`` at a time, handing
    each to ``attach`` once open; what it took, for the parent (``type: connected``, without
    the sender and receiver counts)."""
    started = time.perf_counter()
    tokens: dict[str, str] = {}
    login_errors: list[str] = []
    if plan["secret"]:
        for conn in conns:
            tokens[conn.name] = mint_token(plan["secret"], conn.name)
    else:
        gate = asyncio.Semaphore(16)

        async def login(conn: Conn) -> None:
            async with gate:
                try:
                    tokens[conn.name] = await asyncio.to_thread(http_login, conn.url, conn.name)
                except Fatal as exc:
                    login_errors.append(str(exc))

        await asyncio.gather(*(login(c) for c in conns))
    login_s = time.perf_counter() - started

    connect_ms: list[float] = []
    errors: list[str] = list(login_errors)
    gate = asyncio.Semaphore(plan["connect_concurrency"])
    connect_started = time.perf_counter()

    async def open_one(conn: Conn) -> None:
        token = tokens.get(conn.name)
        if token is None:
            return
        async with gate:
            t = time.perf_counter()
            try:
                await open_user(conn, token, script)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, ProtocolError, ValueError) as exc:
                errors.append(f"{conn.url}: {describe_connect_error(exc)}")
                return
            connect_ms.append((time.perf_counter() - t) * 1000)
            attach(conn)

    await asyncio.gather(*(open_one(c) for c in conns))
    connect_s = time.perf_counter() - connect_started
    return {
        "type": "connected",
        "ok": sum(c.connected for c in conns),
        "failed": len(conns) - sum(c.connected for c in conns),
        "errors": errors[:5],
        "error_count": len(errors),
        "login_seconds": login_s,
        "connect_seconds": connect_s,
        "connect_ms": connect_ms,
    }


async def open_user(conn: Conn, token: str, script: Script) -> None:
    """Open ``conn``'s WebSocket (a plain-socket ``Link`` for ws://), read its welcome and resume
    from where it stands."""
    url = f"{ws_url(conn.url)}?token={token}"
    subprotocols = ["msgpack"] if script.binary else None
    link: Link | StreamLink
    if url.startswith("ws://"):
        opening = open_link(url, subprotocols, MAX_SIZE)
        link, welcome, binary = await asyncio.wait_for(opening, CONNECT_TIMEOUT_S + WELCOME_TIMEOUT_S)
    else:
        link = StreamLink(await connect(url, subprotocols, open_timeout=CONNECT_TIMEOUT_S, max_size=MAX_SIZE))
    try:
        if script.binary and link.subprotocol != "msgpack":
            raise ValueError("the server did not accept the msgpack subprotocol")
        if isinstance(link, StreamLink):
            raw = await asyncio.wait_for(link.ws.recv(), WELCOME_TIMEOUT_S)
            welcome, binary = (raw, True) if isinstance(raw, bytes) else (raw.encode(), False)
        frame = script.decode(welcome, binary)
        if not isinstance(frame, dict) or frame.get("type") != "welcome":
            raise ValueError(f"expected a welcome frame, got {str(frame)[:200]}")
        # Resuming from where welcome stands ends the server's wait for a resume at once:
        # without it, this connection's live messages would be held CHAT_RESUME_WAIT_MS.
        link.send(script.encode({"type": "resume", "positions": frame.get("positions") or {}}))
    except BaseException:
        await link.close()
        raise
    link.owner = conn
    conn.link = link
    conn.connected = True


async def join_room(conns: list[Conn], script: Script) -> None:
    join = script.join()
    for conn in conns:
        if conn.link is not None and conn.connected:
            with contextlib.suppress(ConnectionClosed):  # the worker records the disconnect
                conn.link.send(join)
    await asyncio.sleep(1.0)  # joins are not acked by the contract; let them land


async def close_all(conns: list[Conn]) -> None:
    live = [c.link for c in conns if c.link is not None]
    if live:
        await asyncio.wait_for(asyncio.gather(*(link.close() for link in live), return_exceptions=True), 5.0)
