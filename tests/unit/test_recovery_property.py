"""Property: whatever the interleaving of connects, disconnects and sends across servers, a
device that resumes from what it has seen ends with every message of its channels exactly once.

A device (a browser, a phone) keeps its positions across connections, like the page does: on
each connect it resumes from them (or, the first time, adopts ``welcome.positions``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatserver.bus import MemoryBroker, MemoryBus
from chatserver.history import MemoryHistory
from chatserver.hub import Hub
from chatserver.metrics import Metrics
from chatserver.registry import MemoryRegistry
from chatserver.router import Router
from tests.fakes import FakeSession, settle

USERS = ["ann", "ben", "cy"]
DEVICES = [("ann", 0), ("ann", 1), ("ben", 0), ("cy", 0)]
SERVERS = 2


@dataclass
class Device:
    user: str
    positions: dict[str, int] | None = None  # per channel: everything up to here was seen
    session: FakeSession | None = None
    server: int = 0
    read: int = 0  # frames of the current session already taken in
    got: list[tuple[str, int, str]] = field(default_factory=list)  # (channel, offset, id)
    baseline: dict[str, int] = field(default_factory=dict)

    def take_in(self) -> None:
        """Record the new frames of the session, as a client should: its own messages from their
        acks, and a position per channel that only advances over offsets it has all seen."""
        assert self.session is not None and self.positions is not None
        for frame in self.session.frames[self.read :]:
            if frame["type"] in ("message", "ack"):
                self.got.append((frame["channel"], frame["offset"], frame["id"]))
        self.read = len(self.session.frames)
        for channel in self.positions:
            seen = {o for c, o, _ in self.got if c == channel}
            while self.positions[channel] + 1 in seen:
                self.positions[channel] += 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, len(DEVICES) - 1), st.integers(1, SERVERS)),
        st.tuples(st.just("disconnect"), st.integers(0, len(DEVICES) - 1)),
        st.tuples(st.just("public"), st.integers(0, len(DEVICES) - 1)),
        st.tuples(st.just("private"), st.integers(0, len(DEVICES) - 1), st.sampled_from(USERS)),
        st.tuples(st.just("settle")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_device_ends_with_every_message_exactly_once(script: list[tuple[Any, ...]]) -> None:
    asyncio.run(run(script))


async def run(script: list[tuple[Any, ...]]) -> None:
    registry, history, broker = MemoryRegistry(ttl_s=60), MemoryHistory(), MemoryBroker()
    routers = []
    for n in range(1, SERVERS + 1):
        router = Router(f"ws-{n}", Hub(), registry, history, MemoryBus(broker, f"ws-{n}"), Metrics())
        await router._bus.start(router.on_bus_message)
        await router.heartbeat(live=True)
        routers.append(router)
    devices = [Device(user) for user, _ in DEVICES]
    sent = 0

    async def connect(device: Device, server: int) -> None:
        device.session, device.server, device.read = FakeSession(device.user, f"ws-{server}"), server, 0
        await routers[server - 1].connect(device.session)
        welcome = device.session.frames[0]
        device.read = 1
        if device.positions is None:  # first connection of this device: history before is not ours
            device.positions = dict(welcome["positions"])
            device.baseline = dict(welcome["positions"])
        else:
            resume = {"type": "resume", "positions": device.positions}
            await routers[server - 1].handle(device.session, json.dumps(resume))
        device.take_in()

    for op in script:
        if op[0] == "settle":
            await settle()
            continue
        device = devices[op[1]]
        if op[0] == "connect":
            if device.session is None:
                await connect(device, op[2])
        elif op[0] == "disconnect":
            if device.session is not None:
                device.take_in()
                routers[device.server - 1].disconnect(device.session)
                device.session = None
        elif device.session is not None:
            sent += 1
            frame = {"type": "public", "text": f"m{sent}"}
            if op[0] == "private":
                frame = {"type": "private", "to": op[2], "text": f"m{sent}"}
            await routers[device.server - 1].handle(device.session, json.dumps(frame))
        for d in devices:
            if d.session is not None:
                d.take_in()

    await settle()
    for device in devices:  # finally every device comes back and resumes
        if device.session is None and device.positions is not None:
            await connect(device, 1)
        elif device.session is not None:
            device.take_in()
        await settle()
        if device.session is not None:
            device.take_in()

    for device in devices:
        if device.positions is None:
            continue  # never connected: it has no history of its own to check
        channels = ["public", f"user:{device.user}"]
        latest = await history.latest(channels)
        for channel in channels:
            got = [(o, i) for c, o, i in device.got if c == channel]
            expected = list(range(device.baseline[channel] + 1, latest[channel] + 1))
            assert sorted({o for o, _ in got}) == expected, f"{device.user}: {channel} got {got}, expected {expected}"
            # A copy twice is allowed only as the same message (same id): clients drop it by id.
            assert len({o for o, _ in got}) == len({i for _, i in got}), f"{device.user}: {channel}: {got}"
