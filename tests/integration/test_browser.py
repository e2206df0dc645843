"""A real browser on the chat page, through nginx, as people use it.

Debian's Chromium (/usr/bin/chromium; ./scripts/ensure-chromium.sh installs it), headless,
driven by Playwright's sync API, against the module's two real chat servers behind the
repository's nginx.conf. Each person is a browser context of their own (own sessionStorage
and localStorage, own socket); the frames of each of their sockets are recorded. Screenshots
go to test-output/browser/.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Response,
    WebSocket,
    WebSocketRoute,
    expect,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from tests.integration.conftest import OUTPUT, NginxFront, RealCluster, new_cluster

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
GAP_TEXT = "Some messages could not be recovered"

Frame = dict[str, Any]


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
    sockets: list[list[tuple[str, Frame]]] = field(default_factory=list)  # per socket: ("sent"|"received", frame)

    def message(self, text: str) -> Locator:
        """The message (the whole .msg) in the open conversation whose text is exactly ``text``."""
        return self.page.locator("#messages .msg").filter(has=self.page.get_by_text(text, exact=True))

    def shot(self, label: str = "") -> None:
        self.page.screenshot(path=str(SHOTS / f"{self.name}{'-' + label if label else ''}.png"))

    def frames(self, direction: str, kind: str, socket: int = -1) -> list[Frame]:
        """Frames of one type the page sent or received on one socket (the latest by default)."""
        return [f for d, f in self.sockets[socket] if d == direction and f.get("type") == kind]

    def wait_for_frame(
        self, direction: str, kind: str, where: Callable[[Frame], bool] = lambda f: True, timeout_s: float = 10.0
    ) -> Frame:
        """The first such frame on the latest socket, waiting for it (events arrive while Playwright runs)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [f for f in self.frames(direction, kind) if where(f)] if self.sockets else []
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}'s page {direction} no such {kind!r} frame on its latest socket")
            self.page.wait_for_timeout(50)

    def saved_positions(self) -> dict[str, int]:
        """What the page keeps in localStorage to resume from: {channel: offset}."""
        saved = self.page.evaluate(f"localStorage.getItem('chat.positions.{self.name}')")
        return json.loads(saved) if saved else {}

    def texts(self) -> list[str]:
        """The texts of the messages of the open conversation, top to bottom."""
        return self.page.locator("#messages .msg .msg-text").all_text_contents()

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


def open_page(
    browser: Browser,
    nginx: NginxFront,
    name: str,
    base: str | None = None,
    init_script: str | None = None,
    viewport: tuple[int, int] = (1100, 700),
) -> Person:
    """A fresh browser context on the chat page (through ``nginx``, or straight from the server at
    ``base``), with listeners for dialogs, errors and /readyz; ``init_script`` runs in the page
    before its own scripts (to stand in for browser APIs)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    person = Person(name, context, page)

    def on_dialog(dialog: Dialog) -> None:
        person.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_response(response: Response) -> None:
        if response.url.endswith("/readyz"):
            person.readyz.append(response.status)

    def on_websocket(ws: WebSocket) -> None:
        frames: list[tuple[str, Frame]] = []
        person.sockets.append(frames)

        def record(direction: str) -> Callable[[str | bytes], None]:
            return lambda payload: frames.append((direction, json.loads(payload)))

        ws.on("framesent", record("sent"))
        ws.on("framereceived", record("received"))

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: person.page_errors.append(str(exc)))
    page.on("response", on_response)
    page.on("websocket", on_websocket)
    page.goto((base or nginx.url) + "/")
    return person


def wait_in_page(page: Page, expression: str, what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Evaluate ``expression`` in the page until it is truthy; fail naming ``what`` after ``timeout_s``.
    (Not ``wait_for_function``: it re-evaluates its predicate with ``eval``, which the page's CSP
    forbids as soon as the first evaluation is false: microsoft/playwright#7395.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not so after {timeout_s:.0f} s")
        page.wait_for_timeout(50)


def sign_in(browser: Browser, nginx: NginxFront, name: str, init_script: str | None = None) -> Person:
    """Sign in through the page's form; returns once the page is online and knows its server."""
    return sign_in_on(open_page(browser, nginx, name, init_script=init_script))


def sign_in_on(person: Person) -> Person:
    """Sign in on a page opened with ``open_page`` (whose storage a test may have prepared)."""
    name, page = person.name, person.page
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
    conversation(person, label).click()


def conversation(person: Person, label: str) -> Locator:
    """The sidebar button of a conversation, by the start of its label ("Public channel", ...)."""
    return person.page.locator("#conv-list").get_by_role("button", name=re.compile("^" + re.escape(label)))


def open_dm(person: Person, name: str) -> None:
    """Open the private conversation with ``name`` through the sidebar's "Message a user…" box."""
    person.page.get_by_role("textbox", name="Message a user…").fill(name)
    person.page.get_by_role("button", name="Open private conversation").click()
    expect(person.page.locator("#conv-title")).to_have_text(name)


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
    # ✓ acked; for a private message a receipt may already have upgraded it to ✓✓ (delivered/read)
    expect(status).to_have_text(re.compile(r"^(✓|✓✓|✓✓ read)$"))
    expect(status).to_have_attribute("aria-label", re.compile(r"^(sent|delivered|read)$"))
    expect(status).to_have_attribute("title", re.compile(r"^(Delivered to the server|Delivered to \S+|Read by \S+)$"))


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


def test_who_is_online_keeps_someone_who_came_while_the_answer_was_on_its_way(
    browser: Browser, nginx: NginxFront
) -> None:
    """The page asks ``who`` on welcome. Someone who comes online after the server read its answer,
    but whose ``presence`` reaches the page first, must stay listed: the answer is older news."""
    erin = sign_in(browser, nginx, "erin-w")  # online before: in the answer
    carol = open_page(browser, nginx, "carol-w")
    held: dict[str, Any] = {}

    def hold_the_first_who_answer(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        held["ws"] = ws

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "who" and "room" not in frame and "answer" not in held:
                held["answer"] = message
                return
            ws.send(message)

        server.on_message(to_page)

    carol.page.route_web_socket(re.compile(r"/ws"), hold_the_first_who_answer)
    sign_in_on(carol)
    deadline = time.monotonic() + WAIT_MS / 1000
    while "answer" not in held:
        assert time.monotonic() < deadline, "the page never asked who is online"
        carol.page.wait_for_timeout(50)
    assert "dave-w" not in json.loads(held["answer"])["users"]
    dave = sign_in(browser, nginx, "dave-w")  # online now; his presence reaches carol's page
    online = carol.page.locator("#online-list")
    expect(online.get_by_role("button", name="dave-w, online, open a private conversation")).to_be_visible()
    held["ws"].send(held["answer"])  # ... and only then the answer from before he came
    expect(online.get_by_role("button", name="erin-w, online, open a private conversation")).to_be_visible()
    expect(online.get_by_role("button", name="dave-w, online, open a private conversation")).to_have_count(1)
    assert_clean(carol, dave, erin)
    for person in (carol, dave, erin):
        person.close()


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
    # Delivered to alice's page, not read yet: bob sees two ticks.
    bob_status = bob.message(text).locator(".msg-status")
    expect(bob_status).to_have_attribute("aria-label", "delivered")
    expect(bob_status).to_have_text("✓✓")

    conv.click()
    expect(alice.page.locator("#conv-title")).to_have_text("bob")
    expect(alice.message(text)).to_be_visible()
    # alice's page showed it: bob's page says read.
    expect(bob_status).to_have_attribute("aria-label", "read")
    expect(bob_status).to_have_text("✓✓ read")
    bob.shot("read-tick")
    expect(conv.locator(".badge")).to_have_count(0)
    expect(conv).to_have_attribute("aria-label", "Private conversation with bob")
    expect(alice.page).to_have_title("Chat · alice")

    # Her reply lands in bob's open conversation: no badge there.
    reply = "got it, bob"
    send(alice, reply)
    expect(bob.message(reply)).to_be_visible()
    expect_acked(alice, reply)
    # bob's own DM was acked, not echoed; the ack told his page its offset, so alice's reply
    # follows on with no gap: no history request to fill one, and no gap marker.
    offset = bob.wait_for_frame("received", "message", lambda f: f["text"] == reply)["offset"]
    acked = bob.wait_for_frame("received", "ack", lambda f: f.get("channel") == "user:bob")
    assert acked["offset"] == offset - 1
    assert not any(f.get("before") == offset for f in bob.frames("sent", "history")), "no gap to fill"
    expect(bob.page.get_by_text(GAP_TEXT)).to_have_count(0)
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


def server_number(cluster: RealCluster, server_id: str) -> int:
    return next(n for n, s in cluster.servers.items() if s.server_id == server_id)


def reconnect_now(person: Person, timeout_s: float = 15.0) -> None:
    """Press "Retry now" (a person would rather than wait out the backoff) until the page is online."""
    conn = person.page.locator("#conn")
    deadline = time.monotonic() + timeout_s
    while conn.get_attribute("data-state") != "online":
        if time.monotonic() > deadline:
            pytest.fail(
                f"{person.name}'s page did not come back online: {person.page.locator('#conn-text').inner_text()}"
            )
        with contextlib.suppress(PlaywrightTimeoutError):  # hidden while an attempt is under way
            person.page.get_by_role("button", name="Retry now").click(timeout=500)
        person.page.wait_for_timeout(200)
    expect(conn).to_have_attribute("data-server", re.compile(r"^ws-\d+$"))


def post_public(cluster: RealCluster, user: str, texts: list[str]) -> None:
    """Send public messages over a plain WebSocket to ws-1, as fast as acks come back."""
    base = cluster.url(1)
    url = base.replace("http://", "ws://") + "/ws?token=" + cluster.token(user)
    with ws_connect(url, origin=Origin(base), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        for i, text in enumerate(texts):
            ws.send(json.dumps({"type": "public", "text": text, "cid": str(i)}))
        acked: set[str] = set()
        while len(acked) < len(texts):
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                acked.add(frame["cid"])


def test_a_page_that_reconnects_resumes_what_it_missed(cluster: RealCluster, nginx: NginxFront, chat: Pair) -> None:
    """bob's server dies (SIGKILL). alice writes while his page cannot reconnect yet; when it does,
    through nginx to the other server, it resumes from its saved positions: each message once,
    in order, and no gap marker."""
    alice, bob = chat.alice, chat.bob
    bob.server = bob.page.locator("#conn").get_attribute("data-server") or ""
    doomed = server_number(cluster, bob.server)
    survivor = next(n for n in cluster.servers if n != doomed)
    tag = uuid.uuid4().hex[:6]
    dms = [f"are you there? {tag}", f"call me back {tag}"]
    public = f"meeting moved to 3pm {tag}"
    saved = bob.saved_positions()
    assert set(saved) == {"public", "user:bob"}, saved
    sockets = len(bob.sockets)
    try:
        # nginx knows only the doomed server until alice has written: bob's page retries in vain.
        nginx.set_upstream([cluster.servers[doomed].port])
        time.sleep(0.5)  # `nginx -s reload` returns before the new workers take over
        cluster.stop(doomed, signal.SIGKILL)
        expect(bob.page.locator("#conn")).not_to_have_attribute("data-state", "online")

        open_dm(alice, "bob")
        for text in dms:
            send(alice, text)
            expect_acked(alice, text)
        open_conversation(alice, "Public channel")
        send(alice, public)
        expect_acked(alice, public)
        assert bob.page.locator("#conn").get_attribute("data-state") != "online", "bob must miss them live"

        nginx.set_upstream([cluster.servers[survivor].port])
        reconnect_now(bob)
        expect(bob.page.locator("#conn")).to_have_attribute("data-server", cluster.server_id(survivor))
        assert len(bob.sockets) > sockets
        resumed = bob.wait_for_frame("received", "resumed")
        assert resumed["recovered"] is True and "gaps" not in resumed, resumed
        # The new socket sent `resume` from what was saved, and the three came back in the replay.
        assert [f["positions"] for f in bob.frames("sent", "resume")] == [saved]
        received = [f for d, f in bob.sockets[-1] if d == "received"]
        replayed = received[: received.index(resumed)]
        assert [f["text"] for f in replayed if f.get("type") == "message" and tag in f["text"]] == [public, *dms]
        assert bob.frames("sent", "history") == [], "a page that has its channels loaded only resumes"

        # bob is on Public: the public message is there once, last; the DMs wait unread.
        expect(bob.message(public)).to_have_count(1)
        assert bob.texts()[-1] == public
        dm_conv = conversation(bob, "Private conversation with alice")
        expect(dm_conv).to_have_attribute("aria-label", "Private conversation with alice, 2 unread")
        expect(bob.page.locator("#messages .gap-sep")).to_have_count(0)
        dm_conv.click()
        for text in dms:
            expect(bob.message(text)).to_have_count(1)
        assert [t for t in bob.texts() if tag in t] == dms
        expect(bob.page.get_by_text(GAP_TEXT)).to_have_count(0)
        after = bob.saved_positions()
        assert after["public"] >= saved["public"] + 1 and after["user:bob"] >= saved["user:bob"] + 2, after
        bob.shot("resumed")
        assert_clean(alice, bob)
    finally:
        if doomed not in cluster.servers:
            cluster.start(doomed)
        nginx.set_upstream([s.port for s in cluster.servers.values()])


def test_a_reload_shows_earlier_messages_again(chat: Pair) -> None:
    """After a reload the page has its saved positions: history up to them, and resume after them."""
    alice, bob = chat.alice, chat.bob
    tag = uuid.uuid4().hex[:6]
    public, dm, reply = f"minutes are in the wiki {tag}", f"lunch tomorrow? {tag}", f"yes, at noon {tag}"
    send(alice, public)
    expect(bob.message(public)).to_have_count(1)
    open_dm(alice, "bob")
    send(alice, dm)
    expect_acked(alice, dm)
    open_dm(bob, "alice")
    expect(bob.message(dm)).to_have_count(1)
    send(bob, reply)
    expect_acked(bob, reply)  # acked only: bob's page learns its offset later (a gap it fills, or a replay)
    expect(alice.message(reply)).to_have_count(1)
    saved = bob.saved_positions()

    bob.page.reload()
    expect(bob.page.locator("#conn")).to_have_attribute("data-state", "online")
    expect(bob.page.locator("#conv-title")).to_have_text("alice")  # the open conversation is kept too
    for text in (dm, reply):
        expect(bob.message(text)).to_have_count(1)
    expect(bob.message(reply)).to_have_class(re.compile(r"\bis-own\b.*\bis-sent\b"))
    assert [t for t in bob.texts() if tag in t] == [dm, reply]
    # Resume from the saved positions first (live messages wait for it), then history up to them.
    sent = [f for d, f in bob.sockets[-1] if d == "sent" and f.get("type") in ("history", "resume")]
    assert [(f["type"], f.get("channel"), f.get("before"), f.get("limit")) for f in sent] == [
        ("resume", None, None, None),
        ("history", "public", saved["public"] + 1, 50),
        ("history", "user:bob", saved["user:bob"] + 1, 100),
    ]
    assert sent[0]["positions"] == saved
    assert set(sent[0]["epochs"]) == set(saved)  # the epoch of each saved position goes with it
    assert bob.wait_for_frame("received", "resumed")["recovered"] is True
    open_conversation(bob, "Public channel")
    expect(bob.message(public)).to_have_count(1)
    expect(bob.page.get_by_text(GAP_TEXT)).to_have_count(0)
    bob.shot("reloaded")
    assert_clean(alice, bob)


def test_a_first_sign_in_shows_recent_history(browser: Browser, nginx: NginxFront, chat: Pair) -> None:
    """A browser that never saw frank: recent Public history, and his DMs from user:frank."""
    alice = chat.alice
    tag = uuid.uuid4().hex[:6]
    public, dm = f"welcome aboard, newcomers {tag}", f"frank, your desk is ready {tag}"
    send(alice, public)
    expect_acked(alice, public)
    open_dm(alice, "frank")
    send(alice, dm)
    expect_acked(alice, dm)

    frank = sign_in(browser, nginx, "frank")
    try:
        expect(frank.message(public)).to_have_count(1)
        # Fewer than the 50 asked for: the whole channel is there.
        expect(frank.page.locator("#messages .history-row")).to_have_text("Beginning of conversation")
        sent = [f for d, f in frank.sockets[-1] if d == "sent" and f.get("type") in ("history", "resume")]
        # A first sign-in resumes from where welcome stands (its live messages wait for that).
        welcome = frank.wait_for_frame("received", "welcome")
        assert (sent[0]["type"], sent[0]["positions"], sent[0]["epochs"]) == ("resume", welcome["positions"], {})
        assert [(f["type"], f["channel"], f.get("before"), f["limit"]) for f in sent[1:]] == [
            ("history", "public", None, 50),
            ("history", "user:frank", None, 100),
        ]
        dm_conv = conversation(frank, "Private conversation with alice")
        expect(dm_conv).to_be_visible()
        dm_conv.click()
        expect(frank.message(dm)).to_have_count(1)
        expect(frank.message(dm).locator(".msg-from")).to_have_text("alice")
        saved = frank.saved_positions()
        newest = {
            f["channel"]: max([0, *(m["offset"] for m in f["messages"])]) for f in frank.frames("received", "history")
        }
        assert saved == newest and saved["user:frank"] >= 1, (saved, newest)
        frank.shot("first-sign-in")
        assert_clean(frank)
    finally:
        frank.close()


def test_a_position_history_no_longer_covers_shows_a_marker(browser: Browser, nginx: NginxFront, chat: Pair) -> None:
    """A saved position beyond the server's newest offset (its store was reset): `resumed` reports
    the gap; the page marks it and counts from the server's offsets again."""
    gus = open_page(browser, nginx, "gus")
    try:
        gus.page.evaluate(
            "localStorage.setItem('chat.positions.gus', JSON.stringify({public: 1000000, 'user:gus': 0}))"
        )
        sign_in_on(gus)
        resumed = gus.wait_for_frame("received", "resumed")
        assert (resumed["recovered"], resumed.get("gaps")) == (False, ["public"])
        marker = gus.page.get_by_role("status").filter(has_text=GAP_TEXT)
        expect(marker).to_have_count(1)
        expect(marker).to_be_visible()
        expect(marker).to_have_class(re.compile(r"\bgap-sep\b"))
        assert gus.saved_positions()["public"] < 1000000

        after = f"after the gap {uuid.uuid4().hex[:6]}"
        send(chat.alice, after)
        expect(gus.message(after)).to_have_count(1)
        expect(gus.page.locator("#messages .gap-sep ~ .msg").filter(has_text=after)).to_have_count(1)
        expect(marker).to_have_count(1)
        gus.shot("gap")
        assert_clean(gus)
    finally:
        gus.close()


def test_scrolling_to_the_top_loads_earlier_messages(browser: Browser, cluster: RealCluster, nginx: NginxFront) -> None:
    """60 public messages: a new page shows the newest 50; at the top it loads the rest, and
    the message that was at the top of the view stays where it was."""
    tag = uuid.uuid4().hex[:6]
    texts = [f"burst {tag} {i:02d}" for i in range(60)]
    post_public(cluster, "loud", texts)
    hana = sign_in(browser, nginx, "hana")
    top_of = (
        "t => [...document.querySelectorAll('#messages .msg-text')]"
        ".find(n => n.textContent === t).getBoundingClientRect().top"
    )
    try:
        expect(hana.message(texts[-1])).to_be_visible()
        expect(hana.message(texts[10])).to_have_count(1)
        expect(hana.message(texts[9])).to_have_count(0)
        row = hana.page.locator("#messages .history-row")
        expect(row).to_have_text("")
        before = hana.page.evaluate(
            f"t => {{ document.getElementById('messages').scrollTop = 0; return ({top_of})(t); }}", texts[10]
        )
        expect(hana.message(texts[0])).to_have_count(1)
        expect(row).to_have_text("Beginning of conversation")
        assert abs(hana.page.evaluate(top_of, texts[10]) - before) < 2, "the view moved"
        assert [t for t in hana.texts() if t.startswith(f"burst {tag} ")] == texts
        first = next(m for f in hana.frames("received", "history") for m in f["messages"] if m["text"] == texts[10])
        older = [f for f in hana.frames("sent", "history") if f.get("before") is not None]
        assert [(f["channel"], f["before"], f["limit"]) for f in older] == [("public", first["offset"], 50)]
        hana.shot("older")
        assert_clean(hana)
    finally:
        hana.close()


def join_room(person: Person, room: str) -> None:
    """Join (or create) ``room`` with the sidebar's "Join or create a room" box; the page opens it."""
    person.page.get_by_role("textbox", name="Join or create a room").fill(room)
    person.page.get_by_role("button", name="Join room").click()
    expect(person.page.locator("#conv-title")).to_have_text(room)
    expect(person.page.get_by_role("button", name=f"Leave room {room}")).to_be_visible()
    expect(room_entry(person, room)).to_have_attribute("aria-current", "true")


def room_entry(person: Person, room: str) -> Locator:
    """The sidebar button of a joined room, in the "Rooms" list."""
    return person.page.locator("#room-list").get_by_role("button", name=re.compile("^Room " + re.escape(room)))


def system_line(person: Person, text: str) -> Locator:
    return person.page.locator("#messages .sys-line").filter(has_text=re.compile("^" + re.escape(text) + "$"))


def refusals_to_a_stranger(cluster: RealCluster, user: str, room: str) -> dict[str, str]:
    """What a plain WebSocket of ``user`` (not in ``room``) gets for writing, reading and typing there."""
    base = cluster.url(1)
    url = base.replace("http://", "ws://") + "/ws?token=" + cluster.token(user)
    codes: dict[str, str] = {}
    with ws_connect(url, origin=Origin(base), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        ws.send(json.dumps({"type": "room", "room": room, "text": "let me in", "cid": "write"}))
        ws.send(json.dumps({"type": "history", "channel": f"room:{room}", "cid": "read"}))
        ws.send(json.dumps({"type": "who", "room": room, "cid": "who"}))
        while len(codes) < 3:
            frame = json.loads(ws.recv(timeout=10))
            if frame["type"] == "error":
                codes[frame["cid"]] = frame["code"]
            else:
                assert room not in json.dumps(frame), frame
    return codes


def test_a_room_with_presence_typing_and_who_is_online(
    browser: Browser, cluster: RealCluster, nginx: NginxFront, chat: Pair
) -> None:
    """alice creates "lobby", bob (on the other server) joins and writes; ivan, signed in but
    not a member, gets nothing of it. Presence, typing and the online list along the way."""
    alice, bob = chat.alice, chat.bob
    assert alice.server != bob.server
    room = "lobby"
    tag = uuid.uuid4().hex[:6]
    text, typed = f"hello lobby {tag}", f"still typing {tag}"
    ivan = sign_in(browser, nginx, "ivan")
    try:
        # Who is online: alice's sidebar lists bob (and ivan, who just came), not herself.
        online = alice.page.locator("#online-list")
        expect(online.get_by_role("button", name="bob, online, open a private conversation")).to_be_visible()
        expect(online.get_by_role("button", name="ivan, online, open a private conversation")).to_be_visible()
        expect(online.locator('[data-user="alice"]')).to_have_count(0)
        assert alice.frames("sent", "who"), "the page asks who is online on welcome"

        # A bad name is refused by the page itself.
        alice.page.get_by_role("textbox", name="Join or create a room").fill("no spaces")
        alice.page.get_by_role("button", name="Join room").click()
        expect(alice.page.locator("#room-error")).to_contain_text("Not a valid room name")
        assert not alice.frames("sent", "join")

        join_room(alice, room)
        expect(alice.page.locator("#conv-sub")).to_have_text("Room · 1 online")
        join_room(bob, room)
        expect(system_line(alice, "bob joined")).to_have_count(1)
        expect(alice.page.locator("#conv-sub")).to_have_text("Room · 2 online")
        assert json.loads(alice.page.evaluate("localStorage.getItem('chat.rooms.alice')")) == [room]

        send(bob, text)
        expect_acked(bob, text)
        expect(alice.message(text)).to_have_count(1)
        expect(alice.message(text).locator(".msg-from")).to_have_text("bob")
        assert [(f["room"], f["text"]) for f in bob.frames("sent", "room")] == [(room, text)]
        acked = bob.wait_for_frame("received", "ack", lambda f: f.get("channel") == f"room:{room}")
        got = alice.wait_for_frame("received", "message", lambda f: f.get("text") == text)
        assert (got["kind"], got["room"], got["channel"], got["offset"]) == (
            "room",
            room,
            f"room:{room}",
            acked["offset"],
        )
        # Not in Public, and the position of the room channel is saved for `resume`.
        assert alice.saved_positions()[f"room:{room}"] == got["offset"]
        open_conversation(alice, "Public channel")
        expect(alice.message(text)).to_have_count(0)
        room_entry(alice, room).click()
        expect(alice.message(text)).to_have_count(1)

        # bob types (without sending): alice sees it under the list, for about 3 s. (Typing his
        # message above sent a hint too, which the message ended; the server drops a second
        # hint within 1 s, so wait that out.)
        hints = len(bob.frames("sent", "typing"))
        bob.page.wait_for_timeout(1_100)
        bob.page.locator("#composer-text").fill(typed)
        typing = alice.page.locator("#typing")
        expect(typing).to_have_text("bob is typing…")
        expect(typing).to_have_attribute("aria-live", "polite")
        assert bob.frames("sent", "typing")[hints:] == [{"type": "typing", "room": room}]
        SHOTS.joinpath("room-alice.png").parent.mkdir(parents=True, exist_ok=True)
        alice.page.screenshot(path=str(SHOTS / "room-alice.png"))
        bob.page.screenshot(path=str(SHOTS / "room-bob.png"))
        expect(typing).to_have_text("", timeout=6_000)
        bob.page.locator("#composer-text").fill("")

        # The same room on a phone.
        alice.page.set_viewport_size({"width": 390, "height": 844})
        try:
            expect(alice.page.locator("#sidebar-toggle")).to_be_visible()
            expect(alice.page.locator("#sidebar")).to_be_hidden()  # slid off-screen (visibility: hidden)
            expect(alice.page.get_by_role("button", name=f"Leave room {room}")).to_be_visible()
            alice.page.screenshot(path=str(SHOTS / "room-alice-phone.png"))
            alice.page.locator("#sidebar-toggle").click()
            expect(room_entry(alice, room)).to_be_visible()
            alice.page.screenshot(path=str(SHOTS / "room-alice-phone-sidebar.png"))
            alice.page.keyboard.press("Escape")
            expect(alice.page.locator("#backdrop")).to_be_hidden()
        finally:
            alice.page.set_viewport_size({"width": 1100, "height": 700})

        # ivan is not a member: nothing of the room reached his page, and the server refuses him.
        received = [f for d, f in ivan.sockets[-1] if d == "received"]
        assert not [f for f in received if room in json.dumps(f)], "a room frame reached a non-member"
        expect(ivan.page.get_by_text(text)).to_have_count(0)
        assert tag not in ivan.page.locator("body").inner_text()
        assert refusals_to_a_stranger(cluster, "ivan", room) == {
            "write": "not_member",
            "read": "forbidden",
            "who": "not_member",
        }

        # bob leaves: alice sees it; bob's page forgets the room.
        bob.page.get_by_role("button", name=f"Leave room {room}").click()
        expect(bob.page.locator("#conv-title")).to_have_text("Public")
        expect(room_entry(bob, room)).to_have_count(0)
        expect(system_line(alice, "bob left")).to_have_count(1)
        expect(alice.page.locator("#conv-sub")).to_have_text("Room · 1 online")
        assert json.loads(bob.page.evaluate("localStorage.getItem('chat.rooms.bob')")) == []
        assert f"room:{room}" not in bob.saved_positions()
        alice.page.screenshot(path=str(SHOTS / "room-alice-left.png"))
        assert_clean(alice, bob, ivan)
    finally:
        ivan.close()


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


def test_messages_refused_as_too_fast_are_sent_again_by_themselves(browser: Browser, nginx: NginxFront) -> None:
    """A server of its own that lets a connection send 5 frames at once, then 5 a second. The
    page sends 20 messages in one go: the server refuses most with rate_limited; the page waits
    and sends those again, same cid, and every message ends up acked once, none failed."""
    strict = new_cluster(CHAT_CONN_RATE_PER_S="5", CHAT_CONN_BURST="5")
    try:
        strict.start_all(1)
        person = sign_in_on(open_page(browser, nginx, "burster", base=strict.url(1)))
        try:
            open_dm(person, "burst-sink")
            count = 20
            person.page.evaluate(
                """n => {
                  const box = document.querySelector('#composer-text');
                  for (let i = 0; i < n; i++) {
                    box.value = 'burst ' + i;
                    box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
                  }
                }""",
                count,
            )
            person.wait_for_frame("received", "error", lambda f: f.get("code") == "rate_limited")
            expect(person.page.locator("#messages .msg.is-retrying").first).to_have_text(
                re.compile("server busy, retrying")
            )
            expect(person.page.locator("#messages .msg.is-sent")).to_have_count(count, timeout=30_000)
            expect(person.page.locator("#messages .msg.is-failed")).to_have_count(0)
            sent = [f for f in person.frames("sent", "private") if f.get("to") == "burst-sink"]
            limited = {f["cid"] for f in person.frames("received", "error") if f.get("code") == "rate_limited"}
            acked = [f["cid"] for f in person.frames("received", "ack")]
            assert len({f["cid"] for f in sent}) == count and len(sent) > count, "refused ones were sent again"
            assert limited and limited <= set(acked), "every refused message was acked in the end"
            assert len(acked) == len(set(acked)) == count, "each message acked exactly once"
            person.shot("retried")
            assert_clean(person)
        finally:
            person.close()
    finally:
        strict.close()


def test_the_author_edits_and_deletes_a_message_and_everyone_sees_it(chat: Pair) -> None:
    """Edit and delete (protocol version 2): live on the other server, and again after a reload."""
    alice, bob = chat.alice, chat.bob
    tag = uuid.uuid4().hex[:6]
    first, second, fixed = f"meet at 3 {tag}", f"bring <b>cake</b> {tag}", f"meet at 4 <i>sharp</i> {tag}"
    send(alice, first)
    send(alice, second)
    expect_acked(alice, first)
    expect_acked(alice, second)
    expect(bob.message(second)).to_have_count(1)
    # Bob has no control on alice's messages; alice has one on hers.
    expect(bob.message(first).get_by_role("button", name="Edit message")).to_have_count(0)
    expect(bob.message(first).get_by_role("button", name="Delete message")).to_have_count(0)

    edit = alice.message(first).get_by_role("button", name="Edit message")
    edit.focus()
    alice.page.keyboard.press("Enter")  # keyboard accessible
    box = alice.page.get_by_role("textbox", name="Edit message")
    expect(box).to_have_value(first)
    box.fill(fixed)
    box.press("Enter")
    for person in (alice, bob):
        expect(person.message(fixed)).to_have_count(1)
        expect(person.message(fixed).locator(".msg-edited")).to_be_visible()
        expect(person.message(first)).to_have_count(0)
    alice.message(second).get_by_role("button", name="Delete message").click()
    for person in (alice, bob):
        expect(person.message(second)).to_have_count(0)
    expect(bob.page.locator("#messages .msg.is-deleted .msg-text")).to_have_text(["message deleted"])
    # The edit and delete events are not messages of their own; markup stays text.
    assert [t for t in bob.texts() if tag in t] == [fixed]
    expect(bob.page.locator("#messages i, #messages b")).to_have_count(0)
    changes = [f for d, f in alice.sockets[-1] if d == "sent" and f.get("type") in ("edit", "delete")]
    assert changes[-1]["channel"] == "public"

    bob.page.reload()
    expect(bob.page.locator("#conn")).to_have_attribute("data-state", "online")
    open_conversation(bob, "Public channel")
    expect(bob.message(fixed)).to_have_count(1)
    expect(bob.message(fixed).locator(".msg-edited")).to_be_visible()
    expect(bob.message(first)).to_have_count(0)
    expect(bob.message(second)).to_have_count(0)
    expect(bob.page.locator("#messages .msg.is-deleted")).to_have_count(1)
    assert [t for t in bob.texts() if tag in t] == [fixed]
    expect(bob.message(fixed).get_by_role("button", name="Edit message")).to_have_count(0)
    assert_clean(alice, bob)
