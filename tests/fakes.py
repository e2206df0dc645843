"""Test doubles that the chatserver code talks to through its small protocols."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from chatserver import protocol as p

_ids = itertools.count(1)


class FakeSession:
    """A hub session that records what it was sent, as decoded JSON frames."""

    def __init__(self, user: str, server: str = "ws-1", codec: p.Codec = p.JSON, receipts: bool = True) -> None:
        self._id = p.session_id(server, next(_ids))
        self.wants_receipts = receipts
        self._user = user
        self._codec = codec
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def user(self) -> str:
        return self._user

    @property
    def codec(self) -> p.Codec:
        return self._codec

    def send(self, frame: p.OutFrame) -> None:
        self.frames.append(json.loads(p.JSON.dumps(frame.body)))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]


class FailingBus:
    """A bus whose every publish fails, as Kafka does when it is down past the send timeout."""

    async def start(self, on_message: Any) -> None:
        return None

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        from chatserver.bus import BusError

        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_exception(BusError("kafka: all brokers down"))
        return future

    def status(self) -> tuple[bool, str]:
        return False, "kafka: all brokers down"

    async def close(self) -> None:
        return None


class HeldBus:
    """A bus that answers no publish until ``release()``: Kafka slower than the senders."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future[None]] = []

    async def start(self, on_message: Any) -> None:
        return None

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append(future)
        return future

    def release(self) -> None:
        for future in self.held:
            future.set_result(None)
        self.held = []

    def status(self) -> tuple[bool, str]:
        return True, "ok"

    async def close(self) -> None:
        return None


async def settle(turns: int = 20) -> None:
    """Let callbacks scheduled on the loop (bus deliveries, acks) run."""
    for _ in range(turns):
        await asyncio.sleep(0)
