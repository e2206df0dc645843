"""HTTP and WebSocket handlers: transport only.

Each handler receives its collaborators through ``initialize(**kwargs)`` from the URL spec.
What a frame means is the router's business; the socket handler authenticates the
handshake, picks the codec, and passes frames in and out.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.web import HTTPError, RequestHandler
from tornado.websocket import WebSocketHandler

from chatserver.accounts import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, Accounts, AccountsError, Outcome
from chatserver.auth import AuthError, TokenAuthority
from chatserver.frames import error
from chatserver.limits import ConnectionCounter
from chatserver.metrics import Metrics
from chatserver.protocol import INTERNAL, JSON, MSGPACK, USERNAME_RE, Codec, OutFrame, session_id
from chatserver.router import Router

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, str]]]


class Unavailable(Exception):
    """What a handler's collaborator raises when a store it needs does not answer."""


#: Content-Security-Policy of the page: scripts and styles from this origin only, no inline code.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class JsonHandler(RequestHandler):
    """Answers errors as ``{"error": {"code", "message"}}``, never with a stack trace."""

    def fail(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.finish({"error": {"code": code, "message": message}})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "internal")
        reason = self._reason if status_code < 500 else "internal server error"
        self.finish({"error": {"code": code, "message": reason}})


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise HTTPError(404)


class PageHandler(RequestHandler):
    def initialize(self, server_id: str) -> None:
        self.server_id = server_id

    def get(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.render("index.html", server_id=self.server_id)


def client_address(request: HTTPServerRequest, trusted_proxies: frozenset[str]) -> str:
    """The client's address: X-Real-IP when the peer is a trusted proxy (nginx), else the peer."""
    peer = request.remote_ip or ""
    if peer in trusted_proxies:
        forwarded = request.headers.get("X-Real-IP", "").strip()
        if forwarded:
            return forwarded[:64]
    return peer


#: What an account attempt that failed answers: status, error code, message.
_REFUSALS: dict[Outcome, tuple[int, str, str]] = {
    Outcome.LIMITED: (429, "rate_limited", "too many attempts: wait a minute"),
    Outcome.WRONG: (401, "bad_credentials", "wrong name or password"),
    Outcome.WEAK: (400, "weak_password", f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
    Outcome.TAKEN: (409, "username_taken", "{username} is taken: choose another name"),
}


class LoginHandler(JsonHandler):
    """``POST /api/login``: a name alone (dev login, on in development mode) or, with built-in
    accounts on, a name and its password. ``POST /api/signup`` (accounts): a new account."""

    def initialize(
        self, auth: TokenAuthority, dev_login: bool, accounts: Accounts | None, trusted_proxies: frozenset[str]
    ) -> None:
        self.auth = auth
        self.dev_login = dev_login
        self.accounts = accounts
        self.trusted_proxies = trusted_proxies

    def _credentials(self, want_password: bool) -> tuple[str, str | None] | None:
        """(username, password) from the JSON body; None when it answered with an error."""
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            self.fail(400, "bad_request", 'body must be JSON like {"username": "alice", "password": "..."}')
            return None
        username = body.get("username") if isinstance(body, dict) else None
        if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
            self.fail(400, "bad_username", "username must be 1-32 of A-Z a-z 0-9 _ . -")
            return None
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            self.fail(400, "bad_request", "password must be a string")
            return None
        if want_password and password is None:
            self.fail(400, "bad_request", "a password is needed: this server has accounts")
            return None
        return username, password

    def _signed_in(self, username: str, status: int = 200) -> None:
        self.set_status(status)
        self.finish({"token": self.auth.issue(username), "username": username})

    async def post(self) -> None:
        credentials = self._credentials(want_password=self.accounts is not None and not self.dev_login)
        if credentials is None:
            return
        username, password = credentials
        if password is None or self.accounts is None:  # a name alone: dev login
            if not self.dev_login:
                return self.fail(404, "not_found", "sign-in by name alone is off on this server")
            return self._signed_in(username)
        await self._answer(self.accounts.sign_in(username, password, self._address()), username, 200)

    async def _answer(self, attempt: Awaitable[Outcome], username: str, status: int) -> None:
        """A token for ``username`` with ``status``, or the error that the outcome names."""
        try:
            outcome = await attempt
        except AccountsError as exc:
            return self.fail(503, "not_ready", f"the account store does not answer: {exc}; retry")
        if outcome is Outcome.OK:
            return self._signed_in(username, status)
        status, code, message = _REFUSALS[outcome]
        self.fail(status, code, message.format(username=username))

    def _address(self) -> str:
        return client_address(self.request, self.trusted_proxies)


class SignupHandler(LoginHandler):
    async def post(self) -> None:
        credentials = self._credentials(want_password=True)
        if credentials is None or self.accounts is None:
            return
        username, password = credentials
        assert password is not None
        await self._answer(self.accounts.sign_up(username, password, self._address()), username, 201)


class AdminPageHandler(RequestHandler):
    """The operator page; it asks for the admin token and reads /admin/api/cluster with it."""

    def get(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        self.render("admin.html")


class AdminApiHandler(JsonHandler):
    """Every live server's figures, for ``Authorization: Bearer <CHAT_ADMIN_TOKEN>`` only."""

    def initialize(self, token: str, cluster_stats: Callable[[], Awaitable[dict[str, dict[str, str]]]]) -> None:
        self.token = token
        self.cluster_stats = cluster_stats

    async def get(self) -> None:
        given = self.request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.fail(401, "unauthorized", "send Authorization: Bearer <CHAT_ADMIN_TOKEN>")
        try:
            servers = await self.cluster_stats()
        except Unavailable as exc:
            return self.fail(503, "not_ready", f"the registry does not answer: {exc}")
        self.set_header("Cache-Control", "no-store")
        self.finish({"servers": servers})


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


class ReadyHandler(JsonHandler):
    def initialize(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def get(self) -> None:
        ready, reason = await self.readiness()
        if ready:
            self.finish({"status": "ready"})
        else:
            self.fail(503, "not_ready", reason)


class MetricsHandler(RequestHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.render())


class Outbox:
    """Frames for clients, written at the end of the current IOLoop turn: one write per socket
    however many frames it got in the turn (a consumed batch of messages or presence events),
    instead of one system call per frame. Order per socket is kept."""

    def __init__(self) -> None:
        self._pending: dict[ChatSocket, list[bytes]] = {}

    def put(self, socket: ChatSocket, data: bytes) -> None:
        chunks = self._pending.get(socket)
        if chunks is not None:
            chunks.append(data)
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending[socket] = [data]

    def flush(self, socket: ChatSocket | None = None) -> None:
        """Write what is pending (for ``socket`` only, when given)."""
        if socket is not None:
            chunks = self._pending.pop(socket, None)
            if chunks:
                socket.write_now(chunks)
            return
        pending, self._pending = self._pending, {}
        for sock, chunks in pending.items():
            sock.write_now(chunks)


class Keepalive:
    """Pings every open socket each ``interval_s`` from one timer, and closes a socket that did
    not answer the previous ping: dead peers go, and proxies see traffic. (Tornado's own
    keepalive is a Task per connection, about 1.5 KiB of memory each.)"""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sockets: set[ChatSocket] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, socket: ChatSocket) -> None:
        self._sockets.add(socket)
        if self._timer is None and self.interval_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def discard(self, socket: ChatSocket) -> None:
        self._sockets.discard(socket)

    def _sweep(self) -> None:
        self._timer = None
        failed: set[str] = set()
        for socket in list(self._sockets):
            try:
                socket.keepalive()
            except Exception as exc:  # one bad socket must not stop the pings of all the others
                kind = type(exc).__name__
                if kind not in failed:  # once per kind and sweep: thousands of sockets may fail alike
                    failed.add(kind)
                    log.exception("keepalive of %s failed; dropping it", socket.user)
                self._sockets.discard(socket)
                socket.abort()
        if self._sockets:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)


@dataclass(frozen=True)
class SocketPolicy:
    """What the WebSocket handler needs of the settings: whose ``Origin`` may open ``/ws``,
    which peers' ``X-Real-IP`` to believe, and how many unread bytes a client may leave."""

    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: frozenset[str] = frozenset()
    max_send_buffer: int = 1 << 20


class ChatSocket(WebSocketHandler):
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
    ) -> None:
        self.router = router
        self.outbox = outbox
        self.keeper = keepalive
        self._unanswered_ping = False
        self.auth = auth
        self.readiness = readiness
        self.chat = policy
        self.metrics = metrics
        self.connections = connections
        self._id = session_id(router.server_id, next(session_ids))
        self._user = ""
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
            self._user = self.auth.verify(token)
        except AuthError as exc:
            return self._reject(401, "unauthorized", str(exc))
        # Tornado's own checks would answer these two in plain text: the contract wants JSON.
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            return self._reject(400, "not_websocket", "/ws is a WebSocket endpoint: open it with a WebSocket client")
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
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
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
        self.keeper.add(self)
        await self.router.connect(self)

    async def on_message(self, message: str | bytes) -> None:
        try:
            await self.router.handle(self, message)
        except Exception:  # a bug must cost one frame, not the connection, and leak nothing
            log.exception("unexpected error handling a frame from %s", self._user)
            self.send(error(INTERNAL, "internal error: the frame was not processed; retry"))

    def on_close(self) -> None:
        self.keeper.discard(self)
        if self._counted:
            self._counted = False
            self.connections.closed(self._user, self._ip)
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
