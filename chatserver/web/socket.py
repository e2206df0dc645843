"""``/ws``: one ``ChatSocket`` per client connection, the hub's session for that client.

The handshake is refused (in JSON, with the contract's codes) before Tornado accepts it;
frames go to the router; frames out go through the outbox."""

from __future__ import annotations

import itertools
import json
import logging
import struct
from asyncio import Future
from dataclasses import dataclass, field
from urllib.parse import urlparse

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13, _WebSocketParams

from chatserver.auth import AuthError, TokenAuthority
from chatserver.codec import JSON, MSGPACK, Codec, OutFrame
from chatserver.frames import error
from chatserver.limits import ConnectionCounter
from chatserver.metrics import Metrics
from chatserver.parts import CLOSE_TOKEN_EXPIRED
from chatserver.protocol import INTERNAL, session_id
from chatserver.router import Router
from chatserver.web.endpoints import JsonErrors, Readiness, TrustedProxies, client_address
from chatserver.web.outbox import Outbox
from chatserver.web.timers import Deadlines, Keepalive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocketPolicy:
    """What the WebSocket handler needs of the settings: whose ``Origin`` may open ``/ws``,
    which peers' ``X-Real-IP`` to believe, and how many unread bytes a client may leave."""

    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    max_send_buffer: int = 1 << 20


class _Protocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, but a text frame that is not UTF-8 is a bad frame like any
    other: Tornado drops the connection without a word, and the contract says a bad frame gets an
    ``error``. It goes on as text that neither codec accepts (lone surrogates), so the router
    refuses it with ``bad_frame`` and counts it against the session's frame limit."""

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if opcode == 0x1 and not data.isascii() and not self.client_terminated:  # ASCII is UTF-8
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return self._run_callback(self.handler.on_message, data.decode("utf-8", "surrogateescape"))
        return super()._handle_message(opcode, data)


def _handshake_refusal(headers: HTTPHeaders) -> tuple[int, str, str] | None:
    """Status, code and message for a request that is no RFC 6455 handshake; None for one."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return 400, "not_websocket", "/ws is a WebSocket endpoint: open it with a WebSocket client"
    if "upgrade" not in (part.strip().lower() for part in headers.get("Connection", "").split(",")):
        return 400, "not_websocket", "a WebSocket handshake needs the header Connection: Upgrade"
    if headers.get("Sec-WebSocket-Version") != "13":
        return 426, "unsupported_version", "this server speaks WebSocket version 13 (RFC 6455) only"
    if not headers.get("Sec-WebSocket-Key"):
        return 400, "not_websocket", "a WebSocket handshake needs the header Sec-WebSocket-Key"
    return None


class ChatSocket(JsonErrors, WebSocketHandler):
    """One client connection; it is also the hub's session for that client."""

    def initialize(
        self,
        router: Router,
        auth: TokenAuthority,
        readiness: Readiness,
        policy: SocketPolicy,
        metrics: Metrics,
        connections: ConnectionCounter,
        session_ids: itertools.count[int],
        outbox: Outbox,
        keepalive: Keepalive,
        deadlines: Deadlines,
    ) -> None:
        self.router = router
        self.outbox = outbox
        self.keeper = keepalive
        self.deadlines = deadlines
        self._unanswered_ping = False
        self.auth = auth
        self.readiness = readiness
        self.chat = policy
        self.metrics = metrics
        self.connections = connections
        self._id = session_id(router.server_id, next(session_ids))
        self._user = ""
        self._deadline = 0.0  # when the token ends the session (its exp and the leeway)
        self._ip = ""
        self._counted = False
        self._codec: Codec = JSON
        self._receipts = False

    # Session protocol
    @property
    def id(self) -> str:
        return self._id

    @property
    def user(self) -> str:
        return self._user

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def wants_receipts(self) -> bool:
        return self._receipts

    def send(self, frame: OutFrame) -> None:
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        # Framed once per frame and codec (not once per socket) and written by the outbox with
        # the socket's other frames of this turn, with no task per write as write_message()
        # makes. Valid because no extension (compression) is negotiated: get_compression_options()
        # is not overridden.
        self.outbox.put(self, frame.framed(self._codec, websocket_frame))
        self.metrics.count_out(frame.body.get("type"))

    def write_now(self, chunks: list[bytes]) -> None:
        """Write frames to the stream at once (the outbox calls this)."""
        conn = self.ws_connection
        if conn is None or conn.is_closing() or conn.stream is None:
            return
        try:
            conn.stream.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except StreamClosedError:
            return
        except StreamBufferFullError:
            # The client does not read: drop it rather than buffer without bound. It can
            # reconnect and resume; the others are not held up.
            log.warning("dropped %s: more than %d bytes unread", self._user, self.chat.max_send_buffer)
            conn.stream.close()

    def keepalive(self) -> None:
        """Ping, unless the previous ping is still unanswered: then the peer is gone."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        if self._unanswered_ping:
            log.info("closing %s: no answer to a ping for %.0f s", self._user, self.keeper.interval_s)
            self.close(reason="ping timed out")
            return
        self._unanswered_ping = True
        try:
            conn.write_ping(b"")
        except StreamClosedError:
            return
        except StreamBufferFullError:  # not even a ping fits: the client does not read
            log.warning("dropped %s: more than %d bytes unread", self._user, self.chat.max_send_buffer)
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a close frame (it could not be written)."""
        conn = self.ws_connection
        if conn is not None and conn.stream is not None:
            conn.stream.close()

    def renew(self, deadline: float) -> None:
        """Close with 4001 at ``deadline`` (seconds since the epoch), unless renewed again."""
        self._deadline = deadline
        self.deadlines.set(self, deadline)

    def expire(self) -> None:
        """The token ended (``Deadlines`` calls this at the deadline)."""
        log.info("closing %s: its token expired", self._user)
        self.close(CLOSE_TOKEN_EXPIRED, "token expired: get a new token, reconnect and resume")

    def on_pong(self, data: bytes) -> None:
        self._unanswered_ping = False

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.outbox.flush(self)  # frames sent before the close go before the close frame
        super().close(code, reason)

    # Handshake
    async def prepare(self) -> None:
        """Refuse the handshake before WebSocketHandler.get() accepts it (``prepare``, not an
        overridden ``get``: a coroutine frame less held for each connection's whole life)."""
        token = self.get_query_argument("token", None)
        if not token:
            return self._reject(401, "unauthorized", "missing token: POST /api/login, then /ws?token=...")
        try:
            grant = self.auth.check(token)
        except AuthError as exc:
            return self._reject(401, "unauthorized", str(exc))
        self._user, self._deadline = grant.user, grant.deadline
        # Tornado's own checks would answer these in plain text: the contract wants JSON.
        not_handshake = _handshake_refusal(self.request.headers)
        if not_handshake is not None:
            return self._reject(*not_handshake)
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            why = f"origin {origin[:100]} may not open /ws (the page's own host may; CHAT_ALLOWED_ORIGINS lists others)"
            return self._reject(403, "forbidden_origin", why)
        self._receipts = self.get_query_argument("receipts", "0") == "1"
        ready, reason = await self.readiness()
        if not ready:
            return self._reject(503, "not_ready", f"this server is not ready ({reason}); retry")
        self._ip = self.client_ip()
        refusal = self.connections.refusal(self._user, self._ip)
        if refusal is not None:
            return self._reject(429, "too_many_connections", refusal)

    def client_ip(self) -> str:
        return client_address(self.request, self.chat.trusted_proxies)

    def _reject(self, status: int, code: str, message: str) -> None:
        self.metrics.handshake_refusals.labels(code).inc()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if status == 426:  # RFC 6455, 4.4: the versions this server speaks
            self.set_header("Sec-WebSocket-Version", "13")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def _origin_allowed(self, origin: str) -> bool:
        """As tornado decides after ``prepare``: the page's own host (or a same-origin fetch),
        else ``check_origin``."""
        headers = self.request.headers
        if headers.get("Sec-Fetch-Site") == "same-origin":
            return True
        if urlparse(origin).netloc.lower() == headers.get("Host", "").lower():
            return True
        return self.check_origin(origin)

    def check_origin(self, origin: str) -> bool:
        if self.chat.allowed_origins:
            return origin in self.chat.allowed_origins
        return super().check_origin(origin)  # same host as the request

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's choice, with ``_Protocol`` for its RFC 6455 one (no compression is offered)."""
        if self.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        params = _WebSocketParams(
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_message_size=self.max_message_size,
            compression_options=self.get_compression_options(),
        )
        return _Protocol(self, False, params)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "msgpack" if "msgpack" in subprotocols else None

    # Frames
    async def open(self, *args: str, **kwargs: str) -> None:
        if self.selected_subprotocol == "msgpack":
            self._codec = MSGPACK
        self.set_nodelay(True)
        conn = self.ws_connection
        if conn is not None and conn.stream is not None:
            conn.stream.max_write_buffer_size = self.chat.max_send_buffer
        self.connections.opened(self._user, self._ip)
        self._counted = True
        self.metrics.connections_opened.inc()
        self.keeper.add(self)
        self.renew(self._deadline)
        self._forget_handshake()
        await self.router.connect(self)

    def _forget_handshake(self) -> None:
        """Empty, in place, what only the handshake read: the request's headers and query (the
        token among them) and the 101's response headers. Tornado's request and the coroutines
        that accepted the socket keep these objects for its whole life, so dropping references
        would free nothing; emptying them frees 1.8 KiB of each held connection (tracemalloc
        over 2,000 idle connections: 18.1 -> 16.3 KiB)."""
        self.request.headers.clear()
        self.request.arguments.clear()
        self.request.query_arguments.clear()
        self._headers.clear()

    async def on_message(self, message: str | bytes) -> None:
        try:
            await self.router.handle(self, message)
        except Exception:  # a bug must cost one frame, not the connection, and leak nothing
            log.exception("unexpected error handling a frame from %s", self._user)
            self.send(error(INTERNAL, "internal error: the frame was not processed; retry"))

    def on_close(self) -> None:
        self.keeper.discard(self)
        self.deadlines.discard(self)
        if self._counted:
            self._counted = False
            self.connections.closed(self._user, self._ip)
            self.metrics.connections_closed.inc()
        if self._user:
            self.router.disconnect(self)


def websocket_frame(payload: bytes, binary: bool) -> bytes:
    """One unfragmented, unmasked server-to-client WebSocket frame (RFC 6455, 5.2)."""
    opcode = 0x82 if binary else 0x81  # FIN + binary or text
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", opcode, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", opcode, 126, size) + payload
    return struct.pack("!BBQ", opcode, 127, size) + payload
