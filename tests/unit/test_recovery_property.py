"""Property: whatever the interleaving of connects, resumes, disconnects, sends and store resets
across servers, a device that resumes from what it has seen gets every message of its channels
exactly once and in offset order, or is told which channels have a gap.

A device (a browser, a phone) keeps its positions and epochs across connections, like the page:
it connects, gets ``welcome``, and sends ``resume`` later (other traffic may run in between:
that is the seam), before it sends anything itself. The first time, it adopts
``welcome.positions``. A store that loses its data (``lose_everything``: a Redis restarted
empty) closes the sessions reading a reset channel; the device reconnects and hears of the gap
in ``resumed``, and counts from the new position.
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
    epochs: dict[str, str] = field(default_factory=dict)
    session: FakeSession | None = None
    server: int = 0
    resumed: bool = False  # the current session sent its resume
    read: int = 0  # frames of the current session already taken in
    got: list[tuple[str, str, int, str]] = field(default_factory=list)  # (epoch, channel, offset, id)
    frames: list[tuple[str, str, int]] = field(default_factory=list)  # message frames: (epoch, channel, offset)
    baseline: dict[tuple[str, str], int] = field(default_factory=dict)  # (epoch, channel) -> counted from

    def take_in(self) -> None:
        """Record the new frames of the session, as a client should: its own messages from their
        acks, and a position per channel that only advances over offsets it has all seen."""
        assert self.session is not None and self.positions is not None
        for frame in self.session.frames[self.read :]:
            if frame["type"] in ("message", "ack") and "channel" in frame:
                epoch = self.epochs[frame["channel"]]
                self.got.append((epoch, frame["channel"], frame["offset"], frame["id"]))
                if frame["type"] == "message":
                    self.frames.append((epoch, frame["channel"], frame["offset"]))
            elif frame["type"] == "resumed":
                for channel in frame.get("gaps", []):  # counted again from where it stands now
                    self.epochs[channel] = frame["epochs"][channel]
                    self.positions[channel] = frame["positions"][channel]
                    self.baseline[(self.epochs[channel], channel)] = frame["positions"][channel]
        self.read = len(self.session.frames)
        for channel in self.positions:
            seen = {o for e, c, o, _ in self.got if c == channel and e == self.epochs[channel]}
            while self.positions[channel] + 1 in seen:
                self.positions[channel] += 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, len(DEVICES) - 1), st.integers(1, SERVERS)),
        st.tuples(st.just("resume"), st.integers(0, len(DEVICES) - 1)),
        st.tuples(st.just("disconnect"), st.integers(0, len(DEVICES) - 1)),
        st.tuples(st.just("public"), st.integers(0, len(DEVICES) - 1)),
        st.tuples(st.just("private"), st.integers(0, len(DEVICES) - 1), st.sampled_from(USERS)),
        st.tuples(st.just("settle")),
        st.tuples(st.just("lose_everything")),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_device_ends_with_every_message_exactly_once_in_order(script: list[tuple[Any, ...]]) -> None:
    asyncio.run(run(script))


async def run(script: list[tuple[Any, ...]]) -> None:
    registry, history, broker = MemoryRegistry(ttl_s=60), MemoryHistory(), MemoryBroker()
    routers = []
    for n in range(1, SERVERS + 1):
        router = Router(f"ws-{n}", Hub(), registry, history, MemoryBus(broker, f"ws-{n}"), Metrics(), resume_wait_s=60)
        await router.parts.bus.start(router.on_bus_message)
        await router.heartbeat(live=True)
        routers.append(router)
    devices = [Device(user) for user, _ in DEVICES]
    sent = 0

    async def connect(device: Device, server: int) -> None:
        device.session, device.server, device.read, device.resumed = (
            FakeSession(device.user, f"ws-{server}"),
            server,
            0,
            False,
        )
        await routers[server - 1].connect(device.session)
        welcome = device.session.frames[0]
        device.read = 1
        if device.positions is None:  # first connection of this device: history before is not ours
            device.positions = dict(welcome["positions"])
            device.epochs = dict(welcome["epochs"])
            device.baseline = {(welcome["epochs"][c], c): o for c, o in welcome["positions"].items()}

    async def resume(device: Device) -> None:
        assert device.session is not None and device.positions is not None
        device.resumed = True
        frame = {"type": "resume", "positions": device.positions, "epochs": device.epochs}
        await routers[device.server - 1].handle(device.session, json.dumps(frame))
        device.take_in()

    def disconnect(device: Device) -> None:
        assert device.session is not None
        device.take_in()
        routers[device.server - 1].disconnect(device.session)
        device.session = None

    for op in script:
        if op[0] == "settle":
            await settle()
        elif op[0] == "lose_everything":
            history.lose_everything()
        else:
            device = devices[op[1]]
            if op[0] == "connect":
                if device.session is None:
                    await connect(device, op[2])
            elif op[0] == "resume":
                if device.session is not None and not device.resumed:
                    await resume(device)
            elif op[0] == "disconnect":
                if device.session is not None:
                    disconnect(device)
            elif device.session is not None and device.resumed:  # a client resumes, then sends
                sent += 1
                frame = {"type": "public", "text": f"m{sent}"}
                if op[0] == "private":
                    frame = {"type": "private", "to": op[2], "text": f"m{sent}"}
                await routers[device.server - 1].handle(device.session, json.dumps(frame))
        for d in devices:
            if d.session is not None:
                d.take_in()
                if d.session.closed is not None:  # told to resume (a channel was reset)
                    disconnect(d)

    await settle()
    for _ in range(2):  # finally every device comes back (if it must) and resumes, even one
        for device in devices:  # that did (its store may have lost everything since)
            if device.session is not None and device.session.closed is not None:
                disconnect(device)
            if device.session is None and device.positions is not None:
                await connect(device, 1)
            if device.session is not None:
                await resume(device)
            await settle()
    for device in devices:
        if device.session is not None:
            device.take_in()
            assert device.session.closed is None

    for device in devices:
        if device.positions is None:
            continue  # never connected: it has no history of its own to check
        for channel in ["public", f"user:{device.user}"]:
            epoch = device.epochs[channel]
            latest = (await history.heads([channel]))[channel]
            assert latest.epoch == epoch, f"{device.user}: {channel} was reset and nobody said so"
            got = [(o, i) for e, c, o, i in device.got if c == channel and e == epoch]
            expected = list(range(device.baseline[(epoch, channel)] + 1, latest.offset + 1))
            assert sorted({o for o, _ in got}) == expected, f"{device.user}: {channel} got {got}, expected {expected}"
            frames = [o for e, c, o in device.frames if c == channel and e == epoch]
            assert frames == sorted(set(frames)), f"{device.user}: {channel}: frames out of order or twice: {frames}"
            assert len({o for o, _ in got}) == len({i for _, i in got}), f"{device.user}: {channel}: {got}"
