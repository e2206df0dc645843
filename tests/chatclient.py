"""A small WebSocket chat client for tests: connect with a token, send frames, await frames."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import msgpack
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

Frame = dict[str, Any]


class ChatClient:
    def __init__(self, conn: WebSocketClientConnection, binary: bool) -> None:
        self.conn = conn
        self.binary = binary
        self.seen: list[Frame] = []  # every frame received, in order
        self._unread: list[Frame] = []  # received, skipped by recv_until, not yet returned

    @classmethod
    async def connect(
        cls,
        base_url: str,
        token: str | None,
        origin: str | None = None,
        msgpack_protocol: bool = False,
        receipts: bool = False,
    ) -> ChatClient:
        """Open ``/ws`` at ``base_url`` (http://host:port); raises ``HTTPClientError`` if refused."""
        ws_url = base_url.replace("http://", "ws://") + "/ws" + (f"?token={token}" if token else "")
        if receipts:
            ws_url += "&receipts=1"
        headers = {"Origin": origin or base_url}
        request = HTTPRequest(ws_url, headers=headers, connect_timeout=5, request_timeout=5)
        conn = await websocket_connect(
            request, subprotocols=["msgpack"] if msgpack_protocol else None, max_message_size=1 << 20
        )
        return cls(conn, binary=msgpack_protocol)

    async def send(self, frame: Frame | str | bytes) -> None:
        if isinstance(frame, dict):
            if self.binary:
                await self.conn.write_message(msgpack.packb(frame), binary=True)
            else:
                await self.conn.write_message(json.dumps(frame))
        else:
            await self.conn.write_message(frame, binary=isinstance(frame, bytes))

    async def _read(self, timeout: float) -> Frame:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            raise ConnectionClosed(self.conn.close_code, self.conn.close_reason)
        frame: Frame = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        self.seen.append(frame)
        return frame

    async def recv(self, timeout: float = 5.0) -> Frame:
        """The next unread frame; ``ConnectionClosed`` if the server closed; TimeoutError if none came."""
        if self._unread:
            return self._unread.pop(0)
        return await self._read(timeout)

    async def recv_until(self, match: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """The first unread frame that matches; the others stay unread, in order."""
        for i, frame in enumerate(self._unread):
            if match(frame):
                return self._unread.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._read(max(0.01, deadline - time.monotonic()))
            if match(frame):
                return frame
            self._unread.append(frame)

    async def recv_type(self, kind: str, timeout: float = 5.0) -> Frame:
        return await self.recv_until(lambda f: f.get("type") == kind, timeout)

    async def drain(self, seconds: float) -> list[Frame]:
        """Every frame that arrives within ``seconds``."""
        frames: list[Frame] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames.append(await self.recv(left))
            except TimeoutError:
                break
        return frames

    def close(self) -> None:
        self.conn.close()


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed by server: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


async def refused_status(base_url: str, token: str | None, origin: str | None = None) -> int:
    """The HTTP status of a refused handshake (fails the test if it was accepted)."""
    try:
        client = await ChatClient.connect(base_url, token, origin)
    except HTTPClientError as exc:
        return exc.code
    client.close()
    raise AssertionError("the handshake was accepted")
