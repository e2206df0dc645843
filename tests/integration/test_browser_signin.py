"""Signing in when dev login is off, in a real browser: with tokens from the operator's own
application (``CHAT_TOKEN_URL``), renewed before they expire while a conversation goes on, and
with built-in accounts (``CHAT_ACCOUNTS=1``).

The operator's application is a tiny Tornado app of the test, on its own port (another origin):
``POST /chat/token`` answers the user named by its cookie with a short-lived chat token, and
CORS with credentials for the chat's origin. Two chat servers of one cluster: ws-1 signs in
through that application (dev login off, no clock leeway, so tokens end on time), ws-2 has
accounts (dev login off). Each page talks to its server directly (no nginx).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import tornado.web
from playwright.sync_api import Browser, Dialog, Page, WebSocket, expect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port
from tests.integration.conftest import SECRET, RealCluster, new_cluster
from tests.integration.test_browser import Person, assert_clean, conversation, expect_acked, send
from tests.integration.test_browser import browser as browser  # the module's Chromium (a fixture)

Frame = dict[str, Any]


@dataclass
class TokenApp:
    """The operator's application: who is signed in is its own cookie, ``app_user``."""

    port: int
    lifetime_s: float = 600.0  # of the chat tokens it issues
    allowed_origins: set[str] = field(default_factory=set)
    down_until: float = 0.0  # answers 503 until then (time.time())
    outage_after_next: float | None = None  # the next token issued starts an outage until its exp + this
    issued: list[tuple[str, int]] = field(default_factory=list)  # (user, exp) of every token
    refused: int = 0  # answers other than 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class TokenHandler(tornado.web.RequestHandler):
    def initialize(self, app: TokenApp) -> None:
        self.app = app

    def prepare(self) -> None:
        origin = self.request.headers.get("Origin", "")
        if origin in self.app.allowed_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    def options(self) -> None:
        self.set_header("Access-Control-Allow-Methods", "POST")
        self.set_header("Access-Control-Allow-Headers", "Accept")
        self.set_status(204)

    def post(self) -> None:
        user = self.get_cookie("app_user")
        if time.time() < self.app.down_until or not user:
            self.app.refused += 1
            self.set_status(503 if user else 401)
            self.finish({"error": "down for maintenance" if user else "sign in first"})
            return
        exp = int(time.time() + self.app.lifetime_s)
        self.app.issued.append((user, exp))
        if self.app.outage_after_next is not None:
            self.app.down_until, self.app.outage_after_next = exp + self.app.outage_after_next, None
        token = jwt.encode({"sub": user, "iat": int(time.time()), "exp": exp}, SECRET, algorithm="HS256")
        self.finish({"token": token})


@pytest.fixture(scope="module")
def token_app() -> Iterator[TokenApp]:
    """The application, served from a thread of its own."""
    app = TokenApp(free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = tornado.web.Application([(r"/chat/token", TokenHandler, {"app": app})]).listen(app.port, "127.0.0.1")
        loop.call_soon(started.set)
        loop.run_forever()
        server.stop()

    thread = threading.Thread(target=run, name="token-app", daemon=True)
    thread.start()
    assert started.wait(10), "the token application did not start"
    yield app
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def cluster(token_app: TokenApp) -> Iterator[RealCluster]:
    """ws-1: sign-in through the application; ws-2: built-in accounts. Dev login off on both."""
    c = new_cluster(CHAT_DEV_LOGIN="0")
    try:
        c.start(1, wait=False, CHAT_TOKEN_URL=f"{token_app.url}/chat/token", CHAT_TOKEN_LEEWAY_S="0")
        c.start(2, wait=False, CHAT_ACCOUNTS="1")
        c.wait_ready(1)
        c.wait_ready(2)
        token_app.allowed_origins.add(c.url(1))
        yield c
    finally:
        c.close()


def open_chat(browser: Browser, base: str, name: str, app_cookie: TokenApp | None = None) -> Person:
    """A fresh browser context on the chat page at ``base`` whose sockets' frames are recorded;
    with ``app_cookie``, ``name`` is signed in to that application."""
    context = browser.new_context(viewport={"width": 1100, "height": 700}, color_scheme="light")
    context.set_default_timeout(10_000)
    if app_cookie is not None:
        context.add_cookies([{"name": "app_user", "value": name, "url": app_cookie.url}])
    page = context.new_page()
    person = Person(name, context, page)

    def on_websocket(ws: WebSocket) -> None:
        frames: list[tuple[str, Frame]] = []
        person.sockets.append(frames)

        def record(direction: str) -> Callable[[str | bytes], None]:
            return lambda payload: frames.append((direction, json.loads(payload)))

        ws.on("framesent", record("sent"))
        ws.on("framereceived", record("received"))

    def on_dialog(dialog: Dialog) -> None:
        person.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("pageerror", lambda exc: person.page_errors.append(str(exc)))
    page.on("dialog", on_dialog)
    page.on("websocket", on_websocket)
    page.goto(base + "/")
    return person


def expect_in_chat(page: Page, name: str) -> None:
    expect(page.locator("#login-screen")).to_be_hidden()
    expect(page.locator("#me-name")).to_have_text(name)
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")


class Talker:
    """Someone writing to a person from a plain WebSocket client, each message acked."""

    def __init__(self, ws: ClientConnection, to: str) -> None:
        self.ws = ws
        self.to = to
        self.sent: list[str] = []

    def say(self, text: str) -> None:
        cid = f"t{len(self.sent)}"
        self.ws.send(json.dumps({"type": "private", "to": self.to, "text": text, "cid": cid}))
        while True:
            frame = json.loads(self.ws.recv(timeout=10))
            if frame.get("cid") == cid:
                assert frame["type"] == "ack", f"{text!r} was refused: {frame}"
                self.sent.append(text)
                return

    def talk_until(self, done: Callable[[], bool], page: Page, timeout_s: float) -> None:
        """A message every 0.4 s until ``done()``, paced on ``page``'s clock: Playwright hands the
        page's events (frames, responses) over only while it runs."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"still not done after {timeout_s} s and {len(self.sent)} messages"
            self.say(f"message {len(self.sent) + 1}")
            page.wait_for_timeout(400)


@contextmanager
def talker(cluster: RealCluster, name: str, to: str) -> Iterator[Talker]:
    url = cluster.url(1).replace("http", "ws") + f"/ws?token={cluster.token(name)}"
    with ws_connect(url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        yield Talker(ws, to)


def frames_of(person: Person, direction: str, kind: str) -> list[Frame]:
    return [f for socket in person.sockets for d, f in socket if d == direction and f.get("type") == kind]


def test_the_page_signs_in_through_the_application_and_renews_its_token_on_the_open_socket(
    browser: Browser, cluster: RealCluster, token_app: TokenApp
) -> None:
    token_app.lifetime_s = 6  # renewed at half its life, 3 s before exp
    alice = open_chat(browser, cluster.url(1), "alice", app_cookie=token_app)
    try:
        expect_in_chat(alice.page, "alice")
        expect(alice.page.locator("#login-form")).to_be_hidden()  # no form: the application signs in
        first_exp = token_app.issued[-1][1]
        with talker(cluster, "bob", "alice") as bob:
            # A conversation that outlives two tokens: the page renews each on its open socket.
            bob.talk_until(lambda: len(frames_of(alice, "received", "refreshed")) >= 2, alice.page, timeout_s=40)
        assert time.time() > first_exp, "the conversation went on past the first token's exp"
        conversation(alice, "Private conversation with bob").click()
        for text in bob.sent:
            expect(alice.message(text)).to_have_count(1)
        assert len(alice.sockets) == 1, "renewed on the open socket: never reconnected"
        refreshes = frames_of(alice, "sent", "refresh")
        assert len(refreshes) >= 2 and all(r["token"] for r in refreshes)
        renewed = frames_of(alice, "received", "refreshed")
        assert [r["exp"] for r in renewed] == sorted(r["exp"] for r in renewed) and renewed[0]["exp"] > first_exp
        assert [u for u, _ in token_app.issued] == ["alice"] * len(token_app.issued)
        alice.shot("token-renewed")
        assert_clean(alice)
    finally:
        alice.close()


def test_a_token_that_expired_while_the_application_was_down_is_renewed_and_nothing_is_lost(
    browser: Browser, cluster: RealCluster, token_app: TokenApp
) -> None:
    token_app.lifetime_s = 4
    token_app.outage_after_next = 2  # down from dave's first token until 2 s past its exp: no renewal
    refused_before = token_app.refused
    dave = open_chat(browser, cluster.url(1), "dave", app_cookie=token_app)
    try:
        expect_in_chat(dave.page, "dave")
        with talker(cluster, "erin", "dave") as erin:
            # The server closes the socket at exp (4001); the page keeps asking the application,
            # then reconnects with a new token and resumes. erin writes all along.
            erin.talk_until(
                lambda: len(dave.sockets) >= 2 and time.time() > token_app.down_until + 1, dave.page, timeout_s=40
            )
        expect_in_chat(dave.page, "dave")
        assert token_app.refused > refused_before, "the application refused while it was down"
        assert "closing dave: its token expired" in cluster.servers[1].log_tail(400)
        conversation(dave, "Private conversation with erin").click()
        for text in erin.sent:
            expect(dave.message(text)).to_have_count(1)
        assert frames_of(dave, "sent", "resume"), "the new socket resumed from the page's offsets"
        assert_clean(dave)
    finally:
        token_app.down_until, token_app.outage_after_next = 0, None
        dave.close()


def test_someone_the_application_does_not_know_is_told_to_sign_in_there(
    browser: Browser, cluster: RealCluster, token_app: TokenApp
) -> None:
    stranger = open_chat(browser, cluster.url(1), "stranger")  # no cookie of the application
    try:
        page = stranger.page
        expect(page.locator("#app-signin-status")).to_have_text(
            "You are not signed in. Sign in to the application, then come back."
        )
        expect(page.get_by_role("link", name="Go to sign-in")).to_have_attribute("href", token_app.url + "/")
        expect(page.locator("#app")).to_be_hidden()
        # Signed in to the application meanwhile: "Try again" enters the chat.
        stranger.context.add_cookies([{"name": "app_user", "value": "stranger", "url": token_app.url}])
        page.get_by_role("button", name="Try again").click()
        expect_in_chat(page, "stranger")
        assert_clean(stranger)
    finally:
        stranger.close()


def test_built_in_accounts_sign_up_then_sign_in_with_the_password(browser: Browser, cluster: RealCluster) -> None:
    carol = open_chat(browser, cluster.url(2), "carol")
    page = carol.page
    try:
        expect(page.locator("#login-lead")).to_have_text("Sign in, or create an account.")
        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("correct horse battery")
        page.get_by_role("button", name="Create account").click()
        expect_in_chat(page, "carol")
        send(carol, "carol was here")
        expect_acked(carol, "carol was here")

        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("#login-screen")).to_be_visible()
        expect(page.get_by_label("Password")).to_have_value("")
        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("battery staple horse")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.locator("#login-error")).to_have_text("wrong name or password")
        page.get_by_role("button", name="Create account").click()
        expect(page.locator("#login-error")).to_have_text("carol is taken: choose another name")

        page.get_by_label("Password").fill("correct horse battery")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect_in_chat(page, "carol")
        expect(carol.message("carol was here")).to_have_count(1)  # from history: the same account
        carol.shot("account-signed-in")
        assert_clean(carol)
    finally:
        carol.close()


def test_a_password_is_asked_for_before_anything_is_sent(browser: Browser, cluster: RealCluster) -> None:
    frank = open_chat(browser, cluster.url(2), "frank")
    try:
        frank.page.get_by_label("Username").fill("frank")
        frank.page.get_by_role("button", name="Sign in", exact=True).click()
        expect(frank.page.locator("#login-error")).to_have_text("Please enter your password.")
        frank.page.get_by_role("button", name="Create account").click()
        expect(frank.page.locator("#login-error")).to_have_text(re.compile("^Choose a password of at least 8"))
        assert_clean(frank)
    finally:
        frank.close()
