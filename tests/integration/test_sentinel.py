"""REDIS_URL may name a Sentinel: the server finds the master through it and works as usual."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.chatclient import ChatClient
from tests.conftest import free_port
from tests.integration.conftest import new_cluster


@pytest.mark.gen_test(timeout=60)
async def test_a_server_reaches_redis_through_sentinel(tmp_path: Path) -> None:
    master_port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen(
        ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor chatmaster 127.0.0.1 {master_port} 1\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    c = new_cluster(REDIS_URL=f"redis+sentinel://127.0.0.1:{sentinel_port}/chatmaster/0")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=sentinel_port).sentinel_get_master_addr_by_name("chatmaster"):
                    break
            except redis.RedisError:
                pass
            time.sleep(0.1)
        c.start(1)
        alice = await ChatClient.connect(c.url(1), c.token("sentinel-user"))
        await alice.recv_type("welcome")
        await alice.send({"type": "public", "text": "through sentinel", "cid": "s"})
        assert (await alice.recv_type("ack"))["channel"] == "public"
        keys = redis.Redis(port=master_port).keys(f"{c.prefix}*")
        assert keys, "the server wrote its registry and history to the master Sentinel named"
    finally:
        c.close()
        for proc in (sentinel, master):
            proc.terminate()
            proc.wait(10)
