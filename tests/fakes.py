"""Test doubles that the chatserver code talks to through its small protocols."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from chatserver import protocol as p
from chatserver.codec import JSON, Codec, OutFrame

_ids = itertools.count(1)


class FakeSession:
    """A hub session that records what it was sent, as decoded JSON frames."""

    def __init__(self, user: str, server: str = "ws-1", codec: Codec = JSON, receipts: bool = True) -> None:
        self._id = p.session_id(server, next(_ids))
        self.wants_receipts = receipts
        self._user = user
        self._codec = codec
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.deadline: float | None = None  # when its token ends it (set by renew)

    @property
    def id(self) -> str:
        return self._id

    @property
    def user(self) -> str:
        return self._user

    @property
    def codec(self) -> Codec:
        return self._codec

    def send(self, frame: OutFrame) -> None:
        self.frames.append(json.loads(JSON.dumps(frame.body)))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def renew(self, deadline: float) -> None:
        self.deadline = deadline

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

    def lag(self) -> int:
        return 0

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

    def lag(self) -> int:
        return 0

    async def close(self) -> None:
        return None


async def until(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def settle(turns: int = 20) -> None:
    """Let callbacks scheduled on the loop (bus deliveries, acks) run."""
    for _ in range(turns):
        await asyncio.sleep(0)


class MemoryCluster:
    """Routers over in-memory parts, sharing a registry, a history, rooms and a broker: a cluster
    in one process. ``resume_wait_s`` 0 (the Router's default) sends live messages right after
    welcome; production waits for the client's resume (see ``chatserver.router``)."""

    def __init__(
        self,
        count: int = 2,
        resume_wait_s: float = 0.0,
        gap_wait_s: float = 0.25,
        history: Any = None,
        registry: Any = None,
        presence_max_online: int = 0,
        auth: Any = None,
    ) -> None:
        from chatserver.bus import MemoryBroker, MemoryBus
        from chatserver.history import MemoryHistory
        from chatserver.hub import Hub
        from chatserver.metrics import Metrics
        from chatserver.registry import MemoryRegistry
        from chatserver.rooms import MemoryRooms
        from chatserver.router import Router

        self.registry = registry or MemoryRegistry(ttl_s=30)
        self.history = history or MemoryHistory()
        self.rooms = MemoryRooms()
        self.broker = MemoryBroker()
        self.routers = [
            Router(
                f"ws-{n}",
                Hub(),
                self.registry,
                self.history,
                MemoryBus(self.broker, f"ws-{n}"),
                Metrics(),
                rooms=self.rooms,
                resume_wait_s=resume_wait_s,
                gap_wait_s=gap_wait_s,
                presence_max_online=presence_max_online,
                auth=auth,
            )
            for n in range(1, count + 1)
        ]

    async def start(self) -> MemoryCluster:
        for router in self.routers:
            await router.parts.bus.start(router.on_bus_message)
            await router.heartbeat(live=True)
        return self

    async def join(self, user: str, server: int) -> FakeSession:
        session = FakeSession(user, f"ws-{server}")
        await self.routers[server - 1].connect(session)
        return session

    async def send(self, session: FakeSession, server: int, frame: str | dict[str, Any]) -> None:
        await self.routers[server - 1].handle(session, frame if isinstance(frame, str) else json.dumps(frame))
        await settle()
