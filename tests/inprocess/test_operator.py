"""In-process tier: what the operator sees, ``/admin/api/cluster`` and ``/metrics``: every
server the cluster knows (live, stopped, dead), Redis and Kafka health, users counted once,
the build, connections and handshake refusals."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Collection
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from chatserver.build import build_info
from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.config import Settings
from chatserver.history import MemoryHistory
from chatserver.node import ChatNode
from chatserver.registry import MemoryRegistry, RegistryError
from tests.chatclient import refused_status
from tests.inprocess.servers import SECRET, cluster, connect

TOKEN = "operator-token-0123456789"


async def view(url: str) -> dict[str, Any]:
    response = await AsyncHTTPClient().fetch(url + "/admin/api/cluster", headers={"Authorization": f"Bearer {TOKEN}"})
    body: dict[str, Any] = json.loads(response.body)
    return body


async def until(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=30)
async def test_the_operator_sees_live_stopped_and_dead_servers_and_users_once() -> None:
    registry = MemoryRegistry(ttl_s=30)
    async with cluster(2, registry=registry, admin_token=TOKEN) as [(url1, node1), (url2, node2)]:
        # A third server that starts, is announced, and stops: it says "stopped" on its way out.
        settings = Settings(server_id="ws-3", port=1, secret=SECRET, backend="memory")
        node3 = ChatNode(settings, registry, MemoryHistory(), MemoryBus(MemoryBroker(), "ws-3"))
        await node3.start()

        async def announced() -> bool:
            return "ws-3" in await registry.live_servers()

        await until(announced, "ws-3 to be live")
        await node3.stop()
        # One that died without a word a minute ago: its last figures said ready.
        await registry.publish_stats("ws-9", {"ts": f"{time.time() - 60:.3f}", "state": "ready", "connections": "4"})

        alice_on_1, alice_on_2 = await connect(url1, "alice"), await connect(url2, "alice")
        for node in (node1, node2):
            await node.router.heartbeat(live=True)
            await registry.publish_stats(node.settings.server_id, node.stats())

        body = await view(url1)
        servers = body["servers"]
        assert set(servers) == {"ws-1", "ws-2", "ws-3", "ws-9"}
        assert {name: s["live"] for name, s in servers.items()} == {
            "ws-1": "yes",
            "ws-2": "yes",
            "ws-3": "no",
            "ws-9": "no",
        }
        assert servers["ws-3"]["state"] == "stopped" and float(servers["ws-3"]["ts"]) <= time.time()
        assert servers["ws-9"]["state"] == "ready" and servers["ws-9"]["connections"] == "4"
        for name in ("ws-1", "ws-2"):
            s = servers[name]
            assert s["state"] == "ready" and s["version"] == build_info().version, s
            assert 0 <= time.time() - float(s["started"]) < 60, "the start time gives the uptime"
            assert s["backlog"] == "0.000" and s["shed"] == "0" and s["redis"] == "ok" and s["kafka"] == "ok"
            assert s["users"] == "1"
        # Alice has a session on each server: the cluster counts her once.
        assert body["cluster"] == {"users": 1, "redis": "ok", "kafka": "ok", "answered_by": "ws-1"}
        alice_on_1.close()
        alice_on_2.close()


class FailingRegistry(MemoryRegistry):
    """A registry whose Redis stops answering when ``down`` is set."""

    down = False

    async def cluster_stats(self) -> dict[str, dict[str, str]]:
        if self.down:
            raise RegistryError("redis: Connection refused")
        return await super().cluster_stats()

    async def heartbeat(self, server_id: str, users: Collection[str], live: bool) -> None:
        if self.down:
            raise RegistryError("redis: Connection refused")
        await super().heartbeat(server_id, users, live)


@pytest.mark.gen_test(timeout=20)
async def test_the_operator_api_and_the_gauges_say_redis_is_down() -> None:
    registry = FailingRegistry(ttl_s=30)
    async with cluster(1, registry=registry, admin_token=TOKEN) as [(url, _node)]:
        assert (await view(url))["cluster"]["redis"] == "ok"
        registry.down = True
        with pytest.raises(HTTPClientError) as failed:
            await view(url)
        assert failed.value.code == 503 and failed.value.response is not None
        error = json.loads(failed.value.response.body)["error"]
        assert error["code"] == "not_ready" and "Redis does not answer" in error["message"]
        assert "Connection refused" in error["message"]

        async def gauges_dropped() -> bool:
            metrics = (await AsyncHTTPClient().fetch(url + "/metrics")).body.decode()
            return sample(metrics, "chat_redis_up") == 0.0 and sample(metrics, "chat_ready") == 0.0

        await until(gauges_dropped, "chat_redis_up and chat_ready to drop to 0")


def sample(metrics: str, series: str) -> float | None:
    found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.gen_test(timeout=20)
async def test_metrics_count_connections_refusals_and_say_what_runs() -> None:
    async with cluster(1) as [(url, node)]:
        http = AsyncHTTPClient()
        alice = await connect(url, "alice")
        assert await refused_status(url, "not-a-token") == 401
        alice.close()

        async def closed() -> bool:
            return len(node.hub) == 0

        await until(closed, "alice's session to close")
        metrics = (await http.fetch(url + "/metrics")).body.decode()
        assert sample(metrics, "chat_connections_opened_total") == 1.0
        assert sample(metrics, "chat_connections_closed_total") == 1.0
        assert sample(metrics, 'chat_handshake_refusals_total{reason="unauthorized"}') == 1.0
        build = build_info()
        info = f'chat_build_info{{commit="{build.commit}",python="{build.python}",version="{build.version}"}}'
        assert sample(metrics, info) == 1.0
        assert re.fullmatch(r"[0-9a-f]{12}|unknown", build.commit)
        for series in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
            assert (sample(metrics, series) or 0) > 0, series
        assert 'python_gc_collections_total{generation="0"}' in metrics and "python_info{" in metrics
        for gauge in ("chat_ready", "chat_redis_up", "chat_kafka_up"):
            assert sample(metrics, gauge) == 1.0, gauge
