"""In-process servers for tests: real Tornado servers on unused ports over the in-memory
registry, history and bus (``cluster``), and a signed-in client of one (``connect``).

Two nodes share one in-memory registry and broker, so cross-server routing is exercised
through real HTTP and WebSocket handshakes without Kafka or Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from chatserver.app import make_app
from chatserver.bus import Bus, MemoryBroker, MemoryBus
from chatserver.config import Settings
from chatserver.history import MemoryHistory
from chatserver.node import ChatNode
from chatserver.registry import MemoryRegistry, Registry
from tests.chatclient import ChatClient
from tests.conftest import free_port

SECRET = "t" * 40
T = TypeVar("T")


@asynccontextmanager
async def cluster(
    count: int = 2,
    registry: Registry | None = None,
    bus: Callable[[MemoryBroker, str], Bus] = MemoryBus,
    **overrides: object,
) -> AsyncIterator[list[tuple[str, ChatNode]]]:
    """``count`` in-process servers sharing a registry and a broker: [(base_url, node)]."""
    history, broker = MemoryHistory(), MemoryBroker()
    registry = MemoryRegistry(ttl_s=30) if registry is None else registry
    nodes: list[tuple[str, ChatNode, HTTPServer]] = []
    for n in range(1, count + 1):
        port = free_port()
        options = {"dev_login": True, **overrides}  # tests sign in through POST /api/login
        settings = Settings(server_id=f"ws-{n}", port=port, secret=SECRET, backend="memory", **options)  # type: ignore[arg-type]
        node = ChatNode(settings, registry, history, bus(broker, settings.server_id))
        await node.start()
        server = make_app(node).listen(port, "127.0.0.1")
        nodes.append((f"http://127.0.0.1:{port}", node, server))
    try:
        yield [(url, node) for url, node, _ in nodes]
    finally:
        for _, node, server in nodes:
            server.stop()
            await node.stop()


async def login(base_url: str, username: str) -> str:
    response = await AsyncHTTPClient().fetch(
        base_url + "/api/login", method="POST", body=json.dumps({"username": username})
    )
    token: str = json.loads(response.body)["token"]
    return token


async def connect(base_url: str, username: str) -> ChatClient:
    client = await ChatClient.connect(base_url, await login(base_url, username))
    welcome = await client.recv()
    assert welcome["type"] == "welcome" and welcome["user"] == username
    return client
