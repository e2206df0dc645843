"""A worker's users: logging them in (or minting their tokens), opening their WebSockets (welcome,
then resume), joining the room, and closing them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .client import ClientConnection, ConnectionClosed, InvalidHandshake, connect
from .cluster import Fatal, describe_connect_error, http_login, mint_token, ws_url
from .scenarios import Script

CONNECT_TIMEOUT_S = 10.0
WELCOME_TIMEOUT_S = 10.0


class Conn:
    """One WebSocket user. ``gid`` >= 0: it sends as sender ``gid``; ``rid`` >= 0: it counts what
    it receives as receiver ``rid``."""

    __slots__ = ("connected", "gid", "name", "next_seq", "peer", "pending", "reader", "rid", "url", "ws")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.url: str = spec["url"]
        self.gid: int = spec["gid"]
        self.rid: int = spec["rid"]
        self.peer: str | None = spec.get("peer")
        self.ws: ClientConnection | None = None
        self.connected = False
        self.reader: asyncio.Task[None] | None = None
        self.next_seq = 0
        self.pending: dict[int, tuple[int, bool]] = {}  # seq -> (send time ns, measured)


async def connect_all(plan: dict[str, Any], conns: list[Conn], script: Script) -> dict[str, Any]:
    """Log every user in and open its connection, ``connect_concurrency`` at a time; what it
    took, for the parent (``type: connected``, without the sender and receiver counts)."""
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
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, ValueError) as exc:
                errors.append(f"{conn.url}: {describe_connect_error(exc)}")
                return
            connect_ms.append((time.perf_counter() - t) * 1000)

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
    ws = await connect(
        f"{ws_url(conn.url)}?token={token}",
        subprotocols=["msgpack"] if script.binary else None,
        open_timeout=CONNECT_TIMEOUT_S,
        max_size=1 << 20,
    )
    try:
        if script.binary and ws.subprotocol != "msgpack":
            raise ValueError("the server did not accept the msgpack subprotocol")
        frame = script.decode(await asyncio.wait_for(ws.recv(), WELCOME_TIMEOUT_S))
        if not isinstance(frame, dict) or frame.get("type") != "welcome":
            raise ValueError(f"expected a welcome frame, got {str(frame)[:200]}")
        # Resuming from where welcome stands ends the server's wait for a resume at once:
        # without it, this connection's live messages would be held CHAT_RESUME_WAIT_MS.
        await ws.send(script.encode({"type": "resume", "positions": frame.get("positions") or {}}))
    except BaseException:
        await ws.close()
        raise
    conn.ws = ws
    conn.connected = True


async def join_room(conns: list[Conn], script: Script) -> None:
    for conn in conns:
        if conn.ws is not None and conn.connected:
            await conn.ws.send(script.join())
    await asyncio.sleep(1.0)  # joins are not acked by the contract; let them land


async def close_all(conns: list[Conn]) -> None:
    live = [c.ws for c in conns if c.ws is not None]
    if live:
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in live), return_exceptions=True), 5.0)
    for conn in conns:
        if conn.reader is not None:
            conn.reader.cancel()
