"""A real browser on the chat page, through nginx, as people use it.

Debian's Chromium (/usr/bin/chromium; ./scripts/ensure-chromium.sh installs it), headless,
driven by Playwright's sync API, against the module's two real chat servers behind the
repository's nginx.conf. Each person is a browser context of their own (own sessionStorage,
own socket). Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, Response, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.integration.conftest import OUTPUT, NginxFront, RealCluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = OUTPUT / "browser"
WAIT_MS = 10_000  # default timeout of every Playwright action, wait and expect() here
XSS = "<img src=x onerror=alert(1)>"


@dataclass
class Person:
    """One user in a browser context of their own, with what their page reported."""

    name: str
    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages: must stay empty
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    readyz: list[int] = field(default_factory=list)  # statuses of the page's GET /readyz
    server: str = ""  # SERVER_ID of the server holding this person's socket

    def message(self, text: str) -> Locator:
        """The message (the whole .msg) in the open conversation whose text is exactly ``text``."""
        return self.page.locator("#messages .msg").filter(has=self.page.get_by_text(text, exact=True))

    def shot(self, label: str = "") -> None:
        self.page.screenshot(path=str(SHOTS / f"{self.name}{'-' + label if label else ''}.png"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/ensure-chromium.sh (it installs Debian's chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Browser, nginx: NginxFront, name: str) -> Person:
    """A fresh browser context on the chat page, with listeners for dialogs, errors and /readyz."""
    context = browser.new_context(viewport={"width": 1100, "height": 700}, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    person = Person(name, context, page)

    def on_dialog(dialog: Dialog) -> None:
        person.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_response(response: Response) -> None:
        if response.url.endswith("/readyz"):
            person.readyz.append(response.status)

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: person.page_errors.append(str(exc)))
    page.on("response", on_response)
    page.goto(nginx.url + "/")
    return person


def sign_in(browser: Browser, nginx: NginxFront, name: str) -> Person:
    """Sign in through the page's form; returns once the page is online and knows its server."""
    person = open_page(browser, nginx, name)
    page = person.page
    expect(page.get_by_role("heading", name="Chat")).to_be_visible()
    page.get_by_label("Username").fill(name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-screen")).to_be_hidden()
    expect(page.locator("#me-name")).to_have_text(name)
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    expect(page.locator("#conn-text")).to_have_text("Online")
    # data-server is set from the welcome frame: the server that holds this socket.
    expect(page.locator("#conn")).to_have_attribute("data-server", re.compile(r"^ws-\d+$"))
    person.server = page.locator("#conn").get_attribute("data-server") or ""
    # ... and the page shows it, discreetly, at the foot of the sidebar.
    expect(page.locator(".server-note-side .server-id")).to_have_text(person.server)
    return person


@dataclass
class Pair:
    alice: Person  # the first to sign in
    bob: Person  # the first after her whose socket is on the other server
    extra: list[Person]  # people who signed in between them and landed on alice's server


@pytest.fixture(scope="module")
def pair(browser: Browser, cluster: RealCluster, nginx: NginxFront) -> Iterator[Pair]:
    """alice and bob, signed in, on different servers (more people sign in until that holds)."""
    people = [sign_in(browser, nginx, "alice")]
    try:
        for name in ("bob", "carol", "dave", "erin"):
            people.append(sign_in(browser, nginx, name))
            if people[-1].server != people[0].server:
                break
        else:
            pytest.fail(f"five sockets through nginx all landed on {people[0].server}: least_conn should spread them")
        yield Pair(people[0], people[-1], people[1:-1])
    finally:
        for person in people:
            person.close()


@pytest.fixture
def chat(pair: Pair) -> Iterator[Pair]:
    """The pair, each on the Public channel; screenshots of both pages after the test, passed or not."""
    for person in (pair.alice, pair.bob):
        open_conversation(person, "Public channel")
    yield pair
    for person in (pair.alice, pair.bob):
        person.shot()


def open_conversation(person: Person, label: str) -> None:
    person.page.locator("#conv-list").get_by_role("button", name=re.compile("^" + re.escape(label))).click()


def send(person: Person, text: str) -> None:
    """Type into the composer of the open conversation and press Enter."""
    composer = person.page.locator("#composer-text")
    composer.fill(text)
    composer.press("Enter")
    expect(composer).to_have_value("")


def expect_acked(person: Person, text: str) -> None:
    """Own message confirmed by the server: the page marks it sent, with a check mark."""
    mine = person.message(text)
    expect(mine).to_have_count(1)
    expect(mine).to_have_class(re.compile(r"\bis-own\b.*\bis-sent\b"))
    status = mine.locator(".msg-status")
    expect(status).to_be_visible()
    expect(status).to_have_text("✓")
    expect(status).to_have_attribute("aria-label", "sent")
    expect(status).to_have_attribute("title", "Delivered to the server")


def assert_clean(*people: Person) -> None:
    for person in people:
        assert person.dialogs == [], f"{person.name}'s page opened dialogs: {person.dialogs}"
        assert person.page_errors == [], f"{person.name}'s page threw: {person.page_errors}"


def test_two_people_sign_in_and_are_online_on_both_servers(cluster: RealCluster, pair: Pair) -> None:
    for person in (pair.alice, pair.bob):
        expect(person.page.locator("#conn-text")).to_have_text("Online")
        expect(person.page.locator("#conn")).to_have_attribute("title", f"Connected to {person.server}")
        expect(person.page.locator("#conv-title")).to_have_text("Public")
    assert {pair.alice.server, pair.bob.server} == {cluster.server_id(1), cluster.server_id(2)}
    assert [p.server for p in pair.extra] == [pair.alice.server] * len(pair.extra)
    assert_clean(pair.alice, pair.bob)


def test_public_message_reaches_the_other_server(chat: Pair) -> None:
    alice, bob = chat.alice, chat.bob
    text = "Hello everyone, alice here"
    send(alice, text)
    expect(bob.message(text)).to_be_visible()
    expect(bob.message(text).locator(".msg-from")).to_have_text("alice")
    expect(bob.message(text)).not_to_have_class(re.compile(r"\bis-own\b"))
    expect_acked(alice, text)
    assert_clean(alice, bob)


def test_private_message_shows_unread_badge_until_opened(chat: Pair) -> None:
    alice, bob = chat.alice, chat.bob
    # bob opens the conversation with the sidebar's "Message a user…" box.
    bob.page.get_by_role("textbox", name="Message a user…").fill("alice")
    bob.page.get_by_role("button", name="Open private conversation").click()
    expect(bob.page.locator("#conv-title")).to_have_text("alice")
    expect(bob.page.locator("#conv-sub")).to_have_text("Private conversation")
    text = "psst alice, only for you"
    send(bob, text)
    expect_acked(bob, text)  # a private message comes back to its sender only as an ack

    # alice stays on Public: the conversation with bob appears with an unread badge.
    conv = alice.page.locator("#conv-list").get_by_role("button", name=re.compile(r"^Private conversation with bob"))
    expect(conv).to_have_attribute("aria-label", "Private conversation with bob, 1 unread")
    expect(conv.locator(".badge")).to_have_text("1")
    expect(alice.page).to_have_title("(1) Chat · alice")
    expect(alice.page.locator("#conv-title")).to_have_text("Public")
    expect(alice.message(text)).to_have_count(0)  # not in Public
    alice.shot("unread")

    conv.click()
    expect(alice.page.locator("#conv-title")).to_have_text("bob")
    expect(alice.message(text)).to_be_visible()
    expect(conv.locator(".badge")).to_have_count(0)
    expect(conv).to_have_attribute("aria-label", "Private conversation with bob")
    expect(alice.page).to_have_title("Chat · alice")

    # Her reply lands in bob's open conversation: no badge there.
    reply = "got it, bob"
    send(alice, reply)
    expect(bob.message(reply)).to_be_visible()
    expect_acked(alice, reply)
    expect(bob.page.locator("#conv-list .badge")).to_have_count(0)
    assert_clean(alice, bob)


def test_markup_in_a_message_is_shown_as_text(chat: Pair) -> None:
    alice, bob = chat.alice, chat.bob
    send(alice, XSS)
    shown = bob.message(XSS).locator(".msg-text")
    expect(shown).to_have_text(XSS)
    assert "&lt;img" in shown.inner_html()
    expect_acked(alice, XSS)
    for person in (alice, bob):
        expect(person.page.locator("#messages img")).to_have_count(0)
    # Send one more message and see it arrive: had an <img> been created, its onerror would
    # have fired by then (the page's CSP would also block it; the check above is the real one).
    send(bob, "after the markup")
    expect(alice.message("after the markup")).to_be_visible()
    assert_clean(alice, bob)


def test_expired_session_goes_back_to_sign_in(browser: Browser, cluster: RealCluster, nginx: NginxFront) -> None:
    person = open_page(browser, nginx, "mallory")
    page = person.page
    expired = cluster.auth.issue("mallory", now=time.time() - 7200)  # expired an hour ago
    page.evaluate(
        "t => { sessionStorage.setItem('chat.token', t); sessionStorage.setItem('chat.username', 'mallory'); }",
        expired,
    )
    try:
        page.reload()  # the page resumes the stored session and tries its socket: 401, three times
        expect(page.locator("#login-error")).to_have_text("Session expired, sign in again.", timeout=15_000)
        expect(page.locator("#login-screen")).to_be_visible()
        expect(page.get_by_label("Username")).to_have_value("mallory")
        # The page asks /readyz why its handshakes fail: 200, one more refused attempt, 200 again.
        assert person.readyz == [200, 200], f"/readyz statuses the page saw: {person.readyz}"
        assert page.evaluate("sessionStorage.getItem('chat.token')") is None
        person.shot("expired")
        assert_clean(person)
    finally:
        person.close()


def test_servers_down_keeps_retrying_then_reconnects(browser: Browser, cluster: RealCluster, nginx: NginxFront) -> None:
    """Both servers stop: nginx answers 502. The page keeps its session and retries."""
    person = sign_in(browser, nginx, "zoe")
    page = person.page
    try:
        for server in cluster.servers.values():  # stop both at once
            server.proc.terminate()
        for n in list(cluster.servers):
            cluster.stop(n)
        # 3 failed opens (backoff 0.5 + 1 + 2 s, ±20 %), then /readyz answers 502: not "expired".
        expect(page.locator("#conn-text")).to_have_text(
            re.compile(r"^Server unavailable, retrying in \d+s$"), timeout=15_000
        )
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#conn")).to_have_attribute("data-reason", "unavailable")
        expect(page.locator("#login-screen")).to_be_hidden()
        assert person.readyz and all(s in (502, 503, 504) for s in person.readyz), person.readyz
        person.shot("unavailable")

        for n in (1, 2):
            cluster.start(n, wait=False)
        for n in (1, 2):
            cluster.wait_ready(n)
        nginx.set_upstream([s.port for s in cluster.servers.values()])
        # A person would press "Retry now" instead of waiting out the backoff (up to ~10 s).
        # (If the page's own retry began meanwhile, the button is hidden while it connects.)
        with contextlib.suppress(PlaywrightTimeoutError):
            page.get_by_role("button", name="Retry now").click(timeout=2_000)
        expect(page.locator("#conn-text")).to_have_text("Online", timeout=15_000)
        expect(page.locator("#conn")).to_have_attribute("data-server", re.compile(r"^ws-\d+$"))
        expect(page.locator("#me-name")).to_have_text("zoe")
        send(person, "back again")
        expect_acked(person, "back again")
        assert_clean(person)
    finally:
        person.shot()
        person.close()
        for n in (1, 2):  # leave the module's cluster as it was, even after a failure
            if n not in cluster.servers:
                cluster.start(n, wait=False)
        for n in (1, 2):
            cluster.wait_ready(n)
        nginx.set_upstream([s.port for s in cluster.servers.values()])
