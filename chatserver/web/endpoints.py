"""The HTTP endpoints other than sign-in: errors as JSON, the page, health, readiness,
metrics, and the operator's page and API."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from chatserver.config import parse_networks
from chatserver.metrics import Metrics

Readiness = Callable[[], Awaitable[tuple[bool, str]]]


class Unavailable(Exception):
    """What a handler's collaborator raises when a store it needs does not answer."""


#: Content-Security-Policy of the page: scripts and styles from this origin only, no inline code.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class JsonErrors(RequestHandler):
    """Answers the errors Tornado raises (a missing file, a method the route does not take, a
    failure) as ``{"error": {"code", "message"}}``, never as HTML or a stack trace. Every
    handler of the server is one: the contract has every HTTP error in JSON."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = _ERROR_CODES.get(status_code, "internal" if status_code >= 500 else "bad_request")
        reason = self._reason if status_code < 500 else "internal server error"
        self.finish({"error": {"code": code, "message": reason}})


_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


class StaticFiles(JsonErrors, StaticFileHandler):
    """Static files; a versioned URL (``?v=``, from ``static_url``) is cached for long, any other
    is revalidated on every use (``no-cache``: a 304 when unchanged). The page's modules import
    each other by plain URLs, so a browser never runs modules of two releases together."""

    def set_extra_headers(self, path: str) -> None:
        if "v" not in self.request.arguments:
            self.set_header("Cache-Control", "no-cache")


class JsonHandler(JsonErrors):
    """A JSON endpoint: its own refusals (``fail``) and Tornado's errors are JSON."""

    def fail(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.finish({"error": {"code": code, "message": message}})


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise HTTPError(404)


@dataclass(frozen=True)
class SignIn:
    """How the page signs people in, as the template tells it: with tokens from the operator's
    application (``token_url``), built-in accounts, or dev login by name alone."""

    token_url: str = ""
    accounts: bool = False
    dev_login: bool = False


def page_csp(token_url: str) -> str:
    """``PAGE_CSP``, letting the page fetch its token from the operator's application when that
    lives on another origin."""
    parts = urlsplit(token_url)
    if not parts.scheme or not parts.netloc:
        return PAGE_CSP
    return PAGE_CSP.replace("connect-src 'self'", f"connect-src 'self' {parts.scheme}://{parts.netloc}")


class PageHandler(JsonErrors):
    def initialize(self, server_id: str, signin: SignIn | None = None) -> None:
        self.server_id = server_id
        self.signin = signin or SignIn()

    def get(self) -> None:
        self.set_header("Content-Security-Policy", page_csp(self.signin.token_url))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.render("index.html", server_id=self.server_id, signin=self.signin)


class TrustedProxies:
    """The peers whose ``X-Real-IP`` is believed (``CHAT_TRUSTED_PROXIES``): addresses and CIDR
    networks, so a proxy whose address changes within its network (a container) still counts."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._networks = parse_networks(items)

    def __contains__(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
        return any(address in network for network in self._networks)


def client_address(request: HTTPServerRequest, trusted_proxies: TrustedProxies) -> str:
    """The client's address: X-Real-IP when the peer is a trusted proxy (nginx), else the peer."""
    peer = request.remote_ip or ""
    if peer in trusted_proxies:
        forwarded = request.headers.get("X-Real-IP", "").strip()
        if forwarded:
            return forwarded[:64]
    return peer


class AdminPageHandler(JsonErrors):
    """The operator page; it asks for the admin token and reads /admin/api/cluster with it."""

    def get(self) -> None:
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        self.render("admin.html")


class AdminApiHandler(JsonHandler):
    """The cluster as this server sees it (``ChatNode.cluster_view``: every known server's
    figures, users online, Redis and Kafka), for ``Authorization: Bearer <CHAT_ADMIN_TOKEN>`` only.
    503 ``not_ready`` when Redis does not answer."""

    def initialize(self, token: str, cluster_view: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.token = token
        self.cluster_view = cluster_view

    async def get(self) -> None:
        given = self.request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.fail(401, "unauthorized", "send Authorization: Bearer <CHAT_ADMIN_TOKEN>")
        try:
            view = await self.cluster_view()
        except Unavailable as exc:
            return self.fail(503, "not_ready", f"Redis does not answer, so the cluster cannot be read: {exc}")
        self.set_header("Cache-Control", "no-store")
        self.finish(view)


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


class MetricsHandler(JsonErrors):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.render())
