"""Bytes between servers: each server consumes one topic of its own and publishes to others'.

``publish(server_id, payload)`` returns a future that resolves once the payload is durably
written (Kafka: the delivery report of an ``acks=all`` idempotent producer) and fails with
``BusError`` otherwise. Received payloads are handed to the ``on_message`` callback on the
IOLoop thread, in topic order.

The Kafka implementation is ``kafkabus.KafkaBus``; ``MemoryBus`` here is its in-process twin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

OnMessage = Callable[[bytes], None]


class BusError(Exception):
    """A payload could not be published; the client may retry."""


class Bus(Protocol):
    async def start(self, on_message: OnMessage) -> None:
        """Begin consuming this server's topic; returns without waiting for readiness."""

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        """Send ``payload`` to the topic of ``server_id``; the future says when it is durable."""
        ...

    def status(self) -> tuple[bool, str]:
        """(ready, reason): ready while this server demonstrably consumes its topic."""
        ...

    def lag(self) -> int:
        """Messages in this server's topic not consumed yet (as last reported)."""
        ...

    async def close(self) -> None:
        """Deliver what is in flight (bounded), then leave."""


class MemoryBroker:
    """Topics in this process, shared by in-process servers: the single-node default and test fake."""

    def __init__(self) -> None:
        self.handlers: dict[str, OnMessage] = {}
        self.backlog: dict[str, list[bytes]] = {}

    def deliver(self, server_id: str, payload: bytes) -> None:
        handler = self.handlers.get(server_id)
        if handler is None:
            self.backlog.setdefault(server_id, []).append(payload)
        else:
            handler(payload)


class MemoryBus:
    def __init__(self, broker: MemoryBroker, server_id: str) -> None:
        self._broker = broker
        self._server_id = server_id

    async def start(self, on_message: OnMessage) -> None:
        self._broker.handlers[self._server_id] = on_message
        for payload in self._broker.backlog.pop(self._server_id, []):
            on_message(payload)

    def publish(self, server_id: str, payload: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Delivered on a later loop turn, as from a real broker.
        loop.call_soon(self._broker.deliver, server_id, payload)
        future.set_result(None)
        return future

    def status(self) -> tuple[bool, str]:
        return True, "ok"

    def lag(self) -> int:
        return 0

    async def close(self) -> None:
        self._broker.handlers.pop(self._server_id, None)
