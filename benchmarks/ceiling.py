"""The ceiling: a bare Tornado WebSocket relay that does the least any chat server must.

It speaks just enough of docs/PROTOCOL.md for ``scripts/loadtest.py --scenario private``:
it answers ``/healthz``, checks the token, sends ``welcome``, and for each ``private`` frame parses the JSON, writes
the ``message`` to the recipient's sockets and the ``ack`` to the sender. No Redis, no Kafka,
no history, no limits, no metrics. What it carries on this machine, with the load generator
beside it, bounds what the real server (which does all of that too) can carry:

    python benchmarks/ceiling.py --port 8299 --secret S &
    python scripts/loadtest.py --url http://127.0.0.1:8299 --secret S --users 200 --rate 2000

``benchmarks/run.py --ceiling`` runs this for you and prints the same table as the matrix.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any, ClassVar

import jwt
import orjson
import tornado.web
import tornado.websocket


class Relay(tornado.websocket.WebSocketHandler):
    sockets: ClassVar[dict[str, set[Relay]]] = {}
    secret = ""

    def check_origin(self, origin: str) -> bool:
        return True

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            claims = jwt.decode(self.get_query_argument("token", ""), self.secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            self.set_status(401)
            self.finish()
            return
        self.user = str(claims["sub"])
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.sockets.setdefault(self.user, set()).add(self)
        self.write_message(orjson.dumps({"type": "welcome", "user": self.user, "server": "ceiling", "positions": {}}))

    def on_message(self, message: str | bytes) -> None:
        frame = orjson.loads(message)
        if frame.get("type") != "private":
            return
        ts = time.time_ns() // 1_000_000
        mid = uuid.uuid4().hex
        out = orjson.dumps(
            {
                "type": "message",
                "id": mid,
                "channel": "user:" + frame["to"],
                "offset": 0,
                "kind": "private",
                "from": self.user,
                "to": frame["to"],
                "text": frame["text"],
                "ts": ts,
            }
        ).decode()
        for peer in self.sockets.get(frame["to"], ()):
            peer.write_message(out)
        self.write_message(orjson.dumps({"type": "ack", "cid": frame.get("cid"), "id": mid, "ts": ts}).decode())

    def on_close(self) -> None:
        self.sockets.get(self.user, set()).discard(self)


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


async def serve(port: int, secret: str) -> None:
    Relay.secret = secret
    app = tornado.web.Application([(r"/ws", Relay), (r"/healthz", Health)], websocket_ping_interval=0)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8299)
    parser.add_argument("--secret", required=True, help="HS256 secret the load generator signs tokens with")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.secret))


if __name__ == "__main__":
    main()
