"""Scaling a running cluster 2 -> 4 -> 1 -> 2 with scripts/scale.sh while users chat through nginx.

Removed servers drain (clients get 1001 and reconnect through nginx to the others), so the
test counts what users would notice: every acked message delivered, none twice, in order.
Bounded: a fixed pace for the duration of the scaling, every wait with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from tests.chatclient import ChatClient, ConnectionClosed
from tests.integration.test_scripts import Scripts, _login, scripts  # noqa: F401  (fixture)


@dataclass
class User:
    url: str
    name: str
    token: str = ""
    client: ChatClient | None = None
    position: int = 0
    got: list[dict[str, Any]] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)
    reconnects: int = 0

    async def connect(self) -> None:
        self.token = self.token or _login(self.url, self.name)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client = await ChatClient.connect(self.url, self.token)
                welcome = await self.client.recv_type("welcome")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        if self.position:
            await self.client.send({"type": "resume", "positions": {f"user:{self.name}": self.position}})
        else:
            self.position = welcome["positions"][f"user:{self.name}"]

    async def listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            assert self.client is not None
            try:
                frame = await self.client.recv(timeout=0.1)
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.reconnects += 1
                await self.connect()
                continue
            if frame["type"] == "message":
                self.got.append(frame)
                self.position = max(self.position, frame["offset"])
            elif frame["type"] == "ack":
                self.acked[frame["cid"]] = frame["id"]


async def send_until(sender: User, to: str, stop: asyncio.Event, interval: float) -> int:
    """Send one message per interval until ``stop``; after a reconnect, re-send what was not acked
    (same cid: the server recognises a retry). Returns how many were sent."""
    frames: dict[str, dict[str, Any]] = {}
    k = 0
    reconnects = sender.reconnects
    while not stop.is_set():
        if sender.reconnects != reconnects:  # first what the old connection may have lost, in order
            reconnects = sender.reconnects
            await resend_unacked(sender, frames)
        cid = f"{sender.name}-{k}"
        frames[cid] = {"type": "private", "to": to, "text": f"#{k}", "cid": cid}
        try:
            assert sender.client is not None
            await sender.client.send(frames[cid])
        except (WebSocketClosedError, StreamClosedError):
            pass  # the listener reconnects; the frame is re-sent then
        k += 1
        await asyncio.sleep(interval)
    deadline = time.monotonic() + 20
    while len(sender.acked) < len(frames) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        await resend_unacked(sender, frames)
    return len(frames)


async def resend_unacked(sender: User, frames: dict[str, dict[str, Any]]) -> None:
    """Send again what was not acked; a socket closed meanwhile is the listener's to reopen."""
    for cid, frame in frames.items():
        if cid not in sender.acked and sender.client is not None:
            try:
                await sender.client.send(frame)
            except (WebSocketClosedError, StreamClosedError):
                return


@pytest.mark.gen_test(timeout=240)
async def test_scaling_2_4_1_2_under_traffic_loses_nothing(scripts: Scripts) -> None:  # noqa: F811
    loop = asyncio.get_running_loop()
    up = await loop.run_in_executor(None, scripts.run, "up.sh", "2")
    assert up.returncode == 0, up.stderr
    url = f"http://127.0.0.1:{scripts.nginx_port}"
    pairs = 4
    senders = [User(url, f"sc-s{i}") for i in range(pairs)]
    receivers = [User(url, f"sc-r{i}") for i in range(pairs)]
    for user in senders + receivers:
        await user.connect()
    stop_listening, stop_sending = asyncio.Event(), asyncio.Event()
    listening = [asyncio.ensure_future(u.listen(stop_listening)) for u in senders + receivers]
    sending = asyncio.gather(
        *(send_until(s, r.name, stop_sending, 0.05) for s, r in zip(senders, receivers, strict=True))
    )
    steps = []
    for n in ("4", "1", "2"):
        await asyncio.sleep(1.0)
        started = time.monotonic()
        result = await loop.run_in_executor(None, scripts.run, "scale.sh", n)
        assert result.returncode == 0, result.stderr
        steps.append(f"{n}:{time.monotonic() - started:.1f}s")
    await asyncio.sleep(1.0)
    stop_sending.set()
    sent = sum(await sending)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        set(s.acked.values()) - {m["id"] for m in r.got} for s, r in zip(senders, receivers, strict=True)
    ):
        await asyncio.sleep(0.2)
    stop_listening.set()
    await asyncio.gather(*listening)

    acked = sum(len(s.acked) for s in senders)
    delivered = duplicates = 0
    for s, r in zip(senders, receivers, strict=True):
        ids = [m["id"] for m in r.got]
        duplicates += len(ids) - len(set(ids))
        delivered += len(set(ids))
        assert not set(s.acked.values()) - set(ids), f"{r.name} is missing acked messages"
        unique_offsets = list(dict.fromkeys(m["offset"] for m in r.got))
        assert unique_offsets == sorted(unique_offsets), f"{r.name}: out of order"
    reconnects = sum(u.reconnects for u in senders + receivers)
    print(
        f"\nscale 2->4->1->2 ({', '.join(steps)}): sent={sent} acked={acked} delivered={delivered} "
        f"lost=0 duplicates={duplicates} reconnects={reconnects}"
    )
    assert acked == sent
    assert reconnects > 0, "shrinking to 1 moved users: they reconnected"
