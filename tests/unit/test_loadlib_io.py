"""The load worker's I/O without a cluster: frames (scripts/loadlib/wire.py), a Link read on a
real loopback TCP socket with the kernel's arrival stamps, the worker's quick reading of acks and
messages against the full parse, and the pacing of sends."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from loadlib import pacing, wire
from loadlib.link import SO_TIMESTAMPNS, Link, Poller
from loadlib.scenarios import Script
from loadlib.stats import StepStats, Tally
from loadlib.users import Conn
from loadlib.worker import Worker


def server_frame(payload: bytes, opcode: int = wire.TEXT, fin: bool = True) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_frames_of_every_length_are_found_whole(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = server_frame(payload) + server_frame(b"next")[:3]  # and the start of another
    frames, used = wire.split(data, 1 << 20)
    assert [(b0, bytes(data[s:e])) for b0, s, e in frames] == [(0x81, payload)]
    assert used == len(server_frame(payload)), "an incomplete frame waits for more"


def test_frames_no_server_may_send_are_refused() -> None:
    with pytest.raises(wire.ProtocolError, match="masked"):
        wire.split(wire.frame(wire.TEXT, b"x"), 1 << 20)  # a client's frame
    with pytest.raises(wire.ProtocolError, match="limit"):
        wire.split(server_frame(b"x" * 200), 100)


def test_a_client_frame_is_masked_with_a_zero_key() -> None:
    assert wire.frame(wire.TEXT, b"hi") == b"\x81\x82\x00\x00\x00\x00hi"
    long = wire.frame(wire.BINARY, b"y" * 300)
    assert long[:8] == b"\x82\xfe\x01\x2c\x00\x00\x00\x00" and long[8:] == b"y" * 300


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a loopback TCP connection, the client non-blocking and
    stamping arrivals as the load worker's sockets do."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    yield server, client
    server.close()
    client.close()


def wait_readable(sock: socket.socket) -> None:
    import select

    select.select([sock], [], [], 2.0)


def test_a_link_stamps_each_read_with_when_it_arrived_not_when_it_is_read(tcp_pair: Any) -> None:
    server, client = tcp_pair
    got: list[tuple[bytes, int, bool]] = []
    link = Link(client, None, b"", 1 << 20)
    link.on_frame = lambda _link, payload, now, binary: got.append((payload, now, binary))
    # The kernel turns stamping on a moment after the first socket of the machine asks for it
    # (a deferred job): until then a read takes the clock when it reads, as it would without.
    for _ in range(100):
        server.sendall(server_frame(b"warm-up"))
        wait_readable(client)
        time.sleep(0.01)
        before = time.time_ns()
        link.read()
        if got.pop()[1] < before:
            break
    sent = time.time_ns()
    server.sendall(server_frame(b'{"a":1}') + server_frame(b"\x91\x01", wire.BINARY))
    wait_readable(client)
    time.sleep(0.05)
    read_at = time.time_ns()
    link.read()
    assert [(p, b) for p, _, b in got] == [(b'{"a":1}', False), (b"\x91\x01", True)]
    stamp = got[0][1]
    assert sent <= stamp < read_at - 40_000_000, "the kernel's arrival time, 50 ms before the read"


def test_a_link_keeps_a_partial_frame_answers_pings_and_ends_on_close(tcp_pair: Any) -> None:
    server, client = tcp_pair
    got: list[bytes] = []
    closed: list[int | None] = []
    link = Link(client, None, b"", 1 << 20)
    link.on_frame = lambda _link, payload, _now, _binary: got.append(payload)
    link.on_closed = lambda lk: closed.append(lk.close_code)
    whole = server_frame(b"x" * 300)
    for part in (whole[:100], whole[100:] + server_frame(b"ping!", wire.PING)):
        server.sendall(part)
        wait_readable(client)
        time.sleep(0.01)
        link.read()
    assert got == [b"x" * 300]
    assert server.recv(100) == wire.frame(wire.PONG, b"ping!"), "a ping is answered at once"
    server.sendall(server_frame((1001).to_bytes(2, "big") + b"bye", wire.CLOSE))
    wait_readable(client)
    link.read()
    assert closed == [1001] and link.closed
    assert server.recv(100) == wire.frame(wire.CLOSE, (1001).to_bytes(2, "big"))


def test_what_the_socket_does_not_take_waits_for_room(tcp_pair: Any) -> None:
    server, client = tcp_pair

    async def main() -> None:
        poller = Poller()
        link = Link(client, None, b"", 1 << 20)
        poller.add(link, lambda *_: None, lambda _lk: None)
        chunk = b"z" * 65536
        while not link.out:  # until the kernel's buffers are full
            link.send(chunk)
        queued = len(link.out)
        received = 0
        while link.out:
            received += len(server.recv(1 << 20))
            poller.poll()
        poller.close()
        assert queued > 0 and not link.out

    asyncio.run(main())


RUN = "ab12cd"


def worker() -> Worker:
    w = Worker.__new__(Worker)  # no process, no queues: only what on_frame needs
    w.script = Script("private", RUN, 64, "p-room", False)
    w.text_field = b'"text":"' + w.script.marker.encode()
    w.tally = Tally(private=True)
    w.tally.stats = StepStats(0)
    w.changed = asyncio.Event()
    return w


class FakeLink:
    def __init__(self, owner: Conn) -> None:
        self.owner = owner
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def frames_as_written(text: str) -> list[bytes]:
    """An ack and a message as the server writes them, and the same written otherwise (other
    key order, spaces): both must count the same."""
    ack: dict[str, Any] = {"type": "ack", "cid": "0.7", "id": "x", "ts": 1, "channel": "user:p-s3", "offset": 1}
    message: dict[str, Any] = {"type": "message", "id": "y", "channel": "user:p-r3", "kind": "private", "from": "p-s3"}
    message |= {"text": text, "ts": 1, "to": "p-r3", "offset": 8}
    server = [orjson.dumps(ack), orjson.dumps(message)]
    return server + [orjson.dumps(dict(reversed(list(f.items()))), option=orjson.OPT_INDENT_2) for f in (ack, message)]


@pytest.mark.parametrize("written", ["by the server", "otherwise"])
def test_acks_and_messages_count_the_same_however_they_are_written(written: str) -> None:
    w = worker()
    sender = Conn({"name": "p-s3", "url": "u", "gid": 3, "rid": -1})
    receiver = Conn({"name": "p-r3", "url": "u", "gid": -1, "rid": 3})
    sender.pending[7] = (1_000_000_000, True)
    text = w.script.text(3, 0, 7, "m", 1_000_000_000)
    frames = frames_as_written(text)
    ack, message = frames[:2] if written == "by the server" else frames[2:]
    w.on_frame(FakeLink(sender), ack, 1_004_000_000, False)
    w.on_frame(FakeLink(receiver), message, 1_005_000_000, False)
    w.on_frame(FakeLink(receiver), message, 1_006_000_000, False)
    s = w.tally.stats
    assert (s.acked, list(s.ack_latency), s.delivered, list(s.latency), s.duplicates) == (1, [4.0], 1, [5.0], 1)


def test_other_runs_texts_garbled_texts_and_errors() -> None:
    w = worker()
    receiver = Conn({"name": "p-r3", "url": "u", "gid": -1, "rid": 3})
    other = frames_as_written(Script("private", "ffffff", 64, "r", False).text(3, 0, 1, "m", 5))[1]
    w.on_frame(FakeLink(receiver), other, 10, False)
    garbled = frames_as_written(f"lt:{RUN}:3:0:x:m:5:")[1]
    w.on_frame(FakeLink(receiver), garbled, 10, False)
    w.on_frame(FakeLink(receiver), b'{"type":"error","code":"rate_limited","cid":"0.1"}', 10, False)
    w.on_frame(FakeLink(receiver), b"not json", 10, False)
    assert w.tally.stats.delivered == 0
    assert w.tally.stats.errors == {"undecodable_text": 1, "rate_limited": 1, "undecodable_frame": 1}


class FakePoller:
    polls = 0

    def poll(self) -> None:
        self.polls += 1

    def arm(self) -> None: ...

    def disarm(self) -> None: ...


def test_the_pacer_sends_on_schedule_and_measures_only_the_window() -> None:
    senders = [Conn({"name": f"p-s{i}", "url": "u", "gid": i, "rid": -1, "peer": f"p-r{i}"}) for i in range(4)]
    for conn in senders:
        conn.link, conn.connected = FakeLink(conn), True  # type: ignore[assignment]
    tally = Tally(private=True)
    tally.stats = StepStats(0)
    command = {"step": 0, "rate": 400.0, "offset": 0.0, "start": time.time() + 0.05}
    command |= {"warmup": 0.1, "duration": 0.25, "grace": 0.0}
    ticks: list[float] = []
    script = Script("private", RUN, 64, "r", False)
    pacer = pacing.Pacer(senders, script, tally, FakePoller(), command, lambda: True)  # type: ignore[arg-type]
    started = time.perf_counter()
    pacer.run(lambda: ticks.append(time.perf_counter()), 0.1)
    took = time.perf_counter() - started
    s = tally.stats
    assert (s.sent_warmup, s.sent) == (40, 100), "400/s: 0.1 s of warmup, 0.25 s measured"
    assert [c.next_seq for c in senders] == [0, 0, 0, 0], "the next step numbers from 0 again"
    assert sum(len(c.pending) for c in senders) == 140 and 0.39 < took < 2.0
    on_time = [lag for lag in s.lag if 0 <= lag < 1000 * pacing.PULSE_MIN_S + 2]
    assert len(on_time) >= len(s.lag) / 2, "most sends less than a pulse late (a busy machine wakes late)"
    assert len(ticks) >= 2, "progress ticks while the step runs"
    sent = [orjson.loads(data[8 if data[1] & 0x7F == 126 else 6 :]) for data in senders[1].link.sent]  # type: ignore[union-attr]
    assert [m["cid"] for m in sent] == [f"0.{i}" for i in range(35)] and sent[0]["to"] == "p-r1"


def test_the_pacer_driven_by_asyncio_sends_the_same() -> None:
    senders = [Conn({"name": f"p-s{i}", "url": "u", "gid": i, "rid": -1, "peer": f"p-r{i}"}) for i in range(2)]
    for conn in senders:
        conn.link, conn.connected = FakeLink(conn), True  # type: ignore[assignment]
    tally = Tally(private=True)
    tally.stats = StepStats(0)
    command = {"step": 0, "rate": 200.0, "offset": 0.5, "start": time.time() + 0.02}
    command |= {"warmup": 0.0, "duration": 0.2, "grace": 0.0}
    script = Script("private", RUN, 64, "r", False)
    pacer = pacing.Pacer(senders, script, tally, FakePoller(), command, lambda: True)  # type: ignore[arg-type]
    asyncio.run(pacer.run_async())
    assert tally.stats.sent == 40 and tally.c_sent == 40


async def tiny_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough of a WebSocket server: accept the upgrade, send two frames, close."""
    import base64
    import hashlib

    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    key = next(
        line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("sec-websocket-key")
    )
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    answer = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        f"Sec-WebSocket-Accept: {base64.b64encode(digest).decode()}",
    ]
    writer.write(("\r\n".join(answer) + "\r\n\r\n").encode())
    writer.write(server_frame(b'{"type":"welcome"}') + server_frame(b'{"type":"pong"}'))
    writer.write(server_frame((1000).to_bytes(2, "big"), wire.CLOSE))
    await writer.drain()
    await reader.read()  # until the client closes
    writer.close()


@pytest.mark.parametrize("plain_socket", [True, False], ids=["Link", "StreamLink"])
def test_both_kinds_of_link_open_and_hand_over_the_same_frames(plain_socket: bool) -> None:
    from loadlib.client import connect
    from loadlib.link import StreamLink, open_link

    async def main() -> list[Any]:
        server = await asyncio.start_server(tiny_server, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        got: list[Any] = []
        closed = asyncio.get_running_loop().create_future()

        def on_frame(_link: Any, payload: Any, _now: int, binary: bool) -> None:
            got.append((payload.encode() if isinstance(payload, str) else payload, binary))

        if plain_socket:
            link, welcome, binary = await open_link(url, None, 1 << 20)
            got.append((welcome, binary))
            poller = Poller()
            poller.add(link, on_frame, lambda lk: closed.set_result(lk.close_code))
            poller.arm()
        else:
            stream = StreamLink(await connect(url))
            stream.start(on_frame, lambda lk: closed.set_result(lk.close_code))
        got.append(await asyncio.wait_for(closed, 5))
        server.close()
        return got

    assert asyncio.run(main()) == [(b'{"type":"welcome"}', False), (b'{"type":"pong"}', False), 1000]


@pytest.mark.gen_test
async def test_a_handshake_answered_after_the_opener_gave_up_is_no_error() -> None:
    """A chaos run at 2,000 msg/s: a connect timed out as the server's 101 arrived, and the
    client set the result of its cancelled handshake ("Fatal error: protocol.buffer_updated()")."""
    from loadlib.client import ClientConnection, upgrade

    up = upgrade("ws://127.0.0.1:1/ws")
    conn = ClientConnection(up.request, up.accept, 1 << 20)
    conn.handshake.cancel()  # the opener's wait_for timed out
    conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + up.accept + b"\r\n\r\n")
    assert conn.handshake.cancelled()


def test_a_connection_lost_during_a_handshake_nobody_awaits_logs_no_error() -> None:
    """A chaos run at 3,000 msg/s printed "Future exception was never retrieved ... connection
    lost during the handshake": its opener had been cancelled before it awaited the handshake,
    so the failure had nobody to go to. It is no error of the run's."""
    from loadlib.client import ClientConnection, InvalidHandshake, upgrade

    logged: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: logged.append(context["message"]))
        up = upgrade("ws://127.0.0.1:1/ws")
        conn = ClientConnection(up.request, up.accept, 1 << 20)
        conn.connection_lost(None)
        del conn
        gc.collect()
        awaited = ClientConnection(up.request, up.accept, 1 << 20)  # an opener that waits still hears of it
        awaited.connection_lost(None)
        with pytest.raises(InvalidHandshake, match="connection lost during the handshake"):
            await awaited.handshake

    asyncio.run(main())
    assert logged == []
