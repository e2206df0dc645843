"""Reaching the cluster: WebSocket URLs, logins (``POST /api/login``) or locally minted tokens,
``/healthz``, connect errors told the way the server gave them, and the checks before a run."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import time
import urllib.error
import urllib.request

from .client import ConnectionClosed, InvalidHandshake, InvalidStatus, connect

HTTP_TIMEOUT_S = 10.0
LOGIN_RETRY_S = 60.0  # how long one user's login is retried while refused with 429 or 503

# Proxies from the environment are never used: the tool talks to the given URLs only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Fatal(Exception):
    """A problem that ends the run with a one-line message and an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def ws_url(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + "/ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + "/ws"
    return url + "/ws"


def _http_error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"null")
        detail = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = exc.reason
    return f"HTTP {exc.code}: {detail}"


def http_login(url: str, username: str) -> str:
    """A token from ``POST {url}/api/login``; ``Fatal`` with the reason when refused. Logins
    refused for their rate (429, e.g. nginx's per-address limit) or a busy server (503) are
    retried with backoff for up to LOGIN_RETRY_S."""
    request = urllib.request.Request(
        url + "/api/login",
        data=json.dumps({"username": username}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    give_up = time.monotonic() + LOGIN_RETRY_S
    delay = 0.1
    while True:
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
                token = json.loads(response.read())["token"]
            break
        except urllib.error.HTTPError as exc:
            if exc.code in (429, 503) and time.monotonic() + delay < give_up:
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)
                continue
            hint = {
                404: " (dev login is off: pass --secret with the cluster's CHAT_SECRET)",
                429: " (logins are rate-limited: pass --secret with the cluster's CHAT_SECRET to mint tokens)",
            }.get(exc.code, "")
            raise Fatal(f"cannot log in at {url}: {_http_error_message(exc)}{hint}") from None
        except urllib.error.URLError as exc:
            raise Fatal(f"cannot log in at {url}: {exc.reason}") from None
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
            raise Fatal(f"cannot log in at {url}: {exc!r}") from None
    if not isinstance(token, str):
        raise Fatal(f"cannot log in at {url}: the answer has no token")
    return token


def http_health(url: str) -> None:
    try:
        with _OPENER.open(url + "/healthz", timeout=HTTP_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise Fatal(f"cannot reach the chat server at {url}: /healthz answered {_http_error_message(exc)}") from None
    except urllib.error.URLError as exc:
        raise Fatal(f"cannot reach the chat server at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Fatal(f"cannot reach the chat server at {url}: {exc!r}") from None


def mint_token(secret: str, username: str, ttl_s: int = 3600) -> str:
    import jwt

    now = int(time.time())
    token: str = jwt.encode({"sub": username, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")
    return token


def describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        try:
            detail = json.loads(exc.response.body or b"null")["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = (exc.response.body or b"")[:200].decode(errors="replace")
        return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionClosed):
        return f"closed by the server ({exc})"
    return str(exc) or type(exc).__name__


def preflight(args: argparse.Namespace, prefix: str) -> None:
    """Fail fast and clearly when a URL cannot be used; check that rooms exist for --scenario room."""
    token = ""
    for url in args.url:
        if args.secret:
            http_health(url)
            token = mint_token(args.secret, f"{prefix}-probe")
        else:
            token = http_login(url, f"{prefix}-probe")
    if args.scenario == "room":
        asyncio.run(_probe_rooms(args.url[0], token, f"{prefix}-room", f"{prefix}-probe"))


async def _probe_rooms(url: str, token: str, room: str, user: str) -> None:
    try:
        ws = await connect(f"{ws_url(url)}?token={token}", open_timeout=10)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise Fatal(f"cannot open a WebSocket at {url}: {describe_connect_error(exc)}") from None
    try:
        await ws.send(json.dumps({"type": "join", "room": room, "cid": "probe-join"}))
        deadline = time.monotonic() + 5.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
            if frame.get("type") == "error" and frame.get("cid") == "probe-join":
                if frame.get("code") == "unknown_type":
                    raise Fatal(
                        "rooms are not supported by the server yet: it answers 'join' with unknown_type "
                        f"({frame.get('message')}); use --scenario private, public or idle",
                        status=2,
                    )
                raise Fatal(f"the server refused 'join': {frame.get('code')}: {frame.get('message')}")
            if frame.get("cid") == "probe-join" or (frame.get("type") == "presence" and frame.get("user") == user):
                return
        raise Fatal("the server did not answer 'join' within 5 s: cannot run the room scenario")
    finally:
        await ws.close()
