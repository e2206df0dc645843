"""Who sends what to whom: the users of each scenario and their worker, the texts that carry the
measurement, and the frames sent.

- ``private``: users/2 pairs; sender i on url[i % n], its receiver on url[(i+1) % n] (with several
  URLs every message crosses servers); a pair stays in one worker process.
- ``public``: every user sends; every message should reach every connected user.
- ``room``: every user joins one room and sends to it; like public, within the room.
- ``idle``: users connect and hold; nobody sends.

Each text starts with ``lt:<run>:<sender>:<step>:<seq>:<phase>:<time_ns>:`` (padded to
--text-bytes): the receiver takes the sender, the sequence number and the send time from it.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgpack
import orjson

from .wire import BINARY, TEXT, frame


def build_plans(args: argparse.Namespace, prefix: str, run: str) -> list[dict[str, Any]]:
    """One plan per worker process: its users (name, URL, sender id ``gid``, receiver id
    ``rid``, private peer) and what every worker shares."""
    urls: list[str] = args.url
    n = len(urls)
    procs = args.procs
    users: list[list[dict[str, Any]]] = [[] for _ in range(procs)]
    if args.scenario == "private":
        for i in range(args.users // 2):
            sender, receiver = f"{prefix}-s{i}", f"{prefix}-r{i}"
            users[i % procs].append({"name": sender, "url": urls[i % n], "gid": i, "rid": -1, "peer": receiver})
            users[i % procs].append({"name": receiver, "url": urls[(i + 1) % n], "gid": -1, "rid": i})
    elif args.scenario in ("public", "room"):
        for j in range(args.users):
            users[j % procs].append({"name": f"{prefix}-u{j}", "url": urls[j % n], "gid": j, "rid": j})
    else:
        for j in range(args.users):
            users[j % procs].append({"name": f"{prefix}-i{j}", "url": urls[j % n], "gid": -1, "rid": -1})
    return [
        {
            "worker": w,
            "procs": procs,
            "scenario": args.scenario,
            "msgpack": args.msgpack,
            "text_bytes": args.text_bytes,
            "run": run,
            "room": f"{prefix}-room",
            "secret": args.secret,
            "connect_concurrency": args.connect_concurrency,
            "users": users[w],
        }
        for w in range(procs)
        if users[w]
    ]


class Script:
    """The frames of one worker's scenario, in its codec (JSON text or msgpack), ready to write."""

    def __init__(self, scenario: str, run: str, text_bytes: int, room: str, binary: bool) -> None:
        self.scenario = scenario
        self.marker = f"lt:{run}:"
        self.text_bytes = text_bytes
        self.room = room
        self.binary = binary
        # A JSON message is formatted as bytes: every part of it is ASCII that needs no escaping
        # (the run id is hex, user and room names are checked by --prefix), so it is exactly
        # what orjson.dumps writes for the frame, at a fraction of building and dumping a dict.
        self._head = b"%s%%d:%%d:%%d:%%s:%%d:" % self.marker.encode()
        self._json = {
            "private": b'{"type":"private","text":"%s","cid":"%d.%d","to":"%s"}',
            "public": b'{"type":"public","text":"%s","cid":"%d.%d"}',
            "room": b'{"type":"room","text":"%s","cid":"%d.%d","room":"%s"}',
        }.get(scenario, b"")
        self._names: dict[str | None, bytes] = {None: b"", room: room.encode()}

    def encode(self, message: dict[str, Any]) -> bytes:
        """One frame, ready to write."""
        if self.binary:
            return frame(BINARY, msgpack.packb(message, use_bin_type=True))
        return frame(TEXT, orjson.dumps(message))

    @staticmethod
    def decode(payload: Any, binary: bool) -> Any:
        if binary:
            return msgpack.unpackb(payload, raw=False)
        return orjson.loads(payload)

    def text(self, gid: int, step: int, seq: int, phase: str, t_ns: int) -> str:
        head = f"{self.marker}{gid}:{step}:{seq}:{phase}:{t_ns}:"
        return head + "x" * (self.text_bytes - len(head)) if len(head) < self.text_bytes else head

    def ours(self, text: str) -> bool:
        """A text of this run (the server also delivers others' traffic)."""
        return text.startswith(self.marker)

    @staticmethod
    def read_text(text: str) -> tuple[int, int, int, str, int]:
        """(sender, step, seq, phase, send time ns) of one of our texts; ValueError if garbled."""
        _, _, gid_s, step_s, seq_s, phase, t_s, _ = text.split(":", 7)
        return int(gid_s), int(step_s), int(seq_s), phase, int(t_s)

    def message(self, gid: int, peer: str | None, step: int, seq: int, measured: bool, t_ns: int) -> bytes:
        """Sender ``gid``'s message ``seq`` of ``step``, acked by cid ``<step>.<seq>``."""
        if self.binary:
            message: dict[str, Any] = {
                "type": self.scenario,
                "text": self.text(gid, step, seq, "m" if measured else "w", t_ns),
                "cid": f"{step}.{seq}",
            }
            if self.scenario == "private":
                message["to"] = peer
            elif self.scenario == "room":
                message["room"] = self.room
            return self.encode(message)
        text = self._head % (gid, step, seq, b"m" if measured else b"w", t_ns)
        if len(text) < self.text_bytes:
            text += b"x" * (self.text_bytes - len(text))
        if self.scenario == "public":
            return frame(TEXT, self._json % (text, step, seq))
        name = self._names.get(peer if self.scenario == "private" else self.room)
        if name is None:
            name = self._names[peer] = str(peer).encode()
        return frame(TEXT, self._json % (text, step, seq, name))

    def join(self) -> bytes:
        return self.encode({"type": "join", "room": self.room, "cid": "join"})
