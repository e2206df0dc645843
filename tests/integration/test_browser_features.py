"""The page's everyday features in a real browser (issue 16), two people on the two servers:
links and formatting that stay safe, reactions, mentions with notifications and mute, copying a
message, the light/dark switch; and the screenshots of the docs (docs/screenshots), taken here.

Chromium as in test_browser.py. The Notification API, the page's visibility and the clipboard
are stood in for by an init script, so what the page asks of them can be checked.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Route, expect

from tests.integration import test_browser
from tests.integration.conftest import OUTPUT, NginxFront, RealCluster
from tests.integration.test_browser import (
    Pair,
    Person,
    assert_clean,
    conversation,
    expect_acked,
    join_room,
    open_conversation,
    open_dm,
    open_page,
    send,
    sign_in,
    sign_in_on,
    wait_in_page,
)

browser = test_browser.browser  # the module-scoped Chromium fixture
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Taken on every run into the test output; written over the docs' copies only when asked
# (CHAT_UPDATE_SCREENSHOTS=1), so that running the suite leaves the working tree clean.
SHOTS_TO = DOCS_SHOTS if os.environ.get("CHAT_UPDATE_SCREENSHOTS") == "1" else OUTPUT / "screenshots"

# Records notifications, permission requests and copies; `window.__setHidden(true)` hides the tab.
FAKES = """
(() => {
  window.__notes = [];
  window.__asked = 0;
  window.__copied = [];
  class FakeNotification {
    constructor(title, options) {
      window.__notes.push({ title, body: (options || {}).body, tag: (options || {}).tag });
    }
    close() {}
    static requestPermission() {
      window.__asked += 1;
      FakeNotification.permission = 'granted';
      return Promise.resolve('granted');
    }
  }
  FakeNotification.permission = 'default';
  window.Notification = FakeNotification;
  let hidden = false;
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => hidden });
  Object.defineProperty(Document.prototype, 'visibilityState', {
    configurable: true, get: () => (hidden ? 'hidden' : 'visible'),
  });
  window.__setHidden = (h) => { hidden = h; document.dispatchEvent(new Event('visibilitychange')); };
  if (navigator.clipboard) {
    navigator.clipboard.writeText = (t) => { window.__copied.push(t); return Promise.resolve(); };
  }
})();
"""


@pytest.fixture(scope="module")
def people(browser: Browser, cluster: RealCluster, nginx: NginxFront) -> Iterator[Pair]:
    """alice and bob on different servers, their pages with the stand-ins of FAKES."""
    signed = [sign_in(browser, nginx, "alice", FAKES)]
    try:
        for name in ("bob", "carol", "dave", "erin"):
            signed.append(sign_in(browser, nginx, name, FAKES))
            if signed[-1].server != signed[0].server:
                break
        else:
            pytest.fail(f"five sockets through nginx all landed on {signed[0].server}: least_conn should spread them")
        for person in signed:  # notifications are never asked for on load or sign-in
            assert person.page.evaluate("window.__asked") == 0, person.name
        yield Pair(signed[0], signed[-1], signed[1:-1])
    finally:
        for person in signed:
            person.close()


@pytest.fixture
def two(people: Pair) -> Iterator[Pair]:
    for person in (people.alice, people.bob):
        person.page.evaluate("window.__setHidden(false)")
        open_conversation(person, "Public channel")
    yield people
    assert_clean(people.alice, people.bob)


def test_links_open_safely_and_markup_in_a_message_stays_text(two: Pair) -> None:
    alice, bob = two.alice, two.bob
    tag = uuid.uuid4().hex[:6]
    text = (
        f"{tag} see https://example.org/docs?a=1&b=2. *bold* _soft_ `x < y` "
        "javascript:alert(1) <script>alert(2)</script> <img src=x onerror=alert(3)> "
        "[x](javascript:alert(4)) mailto:team@example.org"
    )
    send(alice, text)
    expect_acked(
        alice,
        f"{tag} see https://example.org/docs?a=1&b=2. bold soft x < y "
        "javascript:alert(1) <script>alert(2)</script> <img src=x onerror=alert(3)> "
        "[x](javascript:alert(4)) mailto:team@example.org",
    )
    message = bob.page.locator("#messages .msg").filter(has_text=tag)
    expect(message).to_have_count(1)
    body = message.locator(".msg-text")
    # The markup is text, in the text; no element came from it.
    expect(body).to_contain_text("<script>alert(2)</script> <img src=x onerror=alert(3)>")
    expect(body.locator("script, img, iframe")).to_have_count(0)
    # Only the http(s) and mailto URLs are links; the javascript: ones are text.
    links = body.locator("a")
    expect(links).to_have_count(2)
    expect(links.nth(0)).to_have_attribute("href", "https://example.org/docs?a=1&b=2")
    expect(links.nth(0)).to_have_text("https://example.org/docs?a=1&b=2")  # the full stop is not in it
    expect(links.nth(1)).to_have_attribute("href", "mailto:team@example.org")
    for i in range(2):
        expect(links.nth(i)).to_have_attribute("target", "_blank")
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
    expect(body.locator('a[href^="javascript"]')).to_have_count(0)
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("em")).to_have_text("soft")
    expect(body.locator("code")).to_have_text("x < y")

    # The link opens in a new tab that cannot reach back into the chat, and is told no referrer.
    def fake_site(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="<title>elsewhere</title>")

    bob.context.route("https://example.org/**", fake_site)
    with bob.context.expect_page() as opened:
        links.nth(0).click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == "https://example.org/docs?a=1&b=2"
    assert tab.evaluate("window.opener") is None
    assert tab.evaluate("document.referrer") == ""
    tab.close()
    assert bob.dialogs == [] and alice.dialogs == []


def reaction(person: Person, text: str, name: str) -> Locator:
    return person.message(text).locator(".msg-reactions").get_by_role("button", name=re.compile("^" + name + " "))


def test_a_reaction_counts_on_both_sides_live_and_after_a_reload(two: Pair) -> None:
    alice, bob = two.alice, two.bob
    text = f"who is in for pizza {uuid.uuid4().hex[:6]}"
    send(alice, text)
    expect_acked(alice, text)
    opener = bob.message(text).get_by_role("button", name="Add a reaction")
    opener.click()
    expect(opener).to_have_attribute("aria-expanded", "true")
    bob.message(text).get_by_role("button", name="React with heart").press("Escape")  # changed his mind
    expect(bob.message(text).get_by_role("button", name="React with heart")).to_be_hidden()
    expect(opener).to_be_focused()
    opener.press("Enter")  # keyboard, this time
    bob.message(text).get_by_role("button", name="React with thumbs up").click()
    for person, who in ((alice, "bob"), (bob, "you")):
        chip = reaction(person, text, "thumbs up")
        expect(chip).to_have_attribute("aria-label", f"thumbs up 1: {who}")
        expect(chip.locator(".reaction-count")).to_have_text("1")
    expect(reaction(bob, text, "thumbs up")).to_have_attribute("aria-pressed", "true")
    expect(reaction(alice, text, "thumbs up")).to_have_attribute("aria-pressed", "false")

    reaction(alice, text, "thumbs up").click()  # alice joins in: two
    for person in (alice, bob):
        expect(reaction(person, text, "thumbs up").locator(".reaction-count")).to_have_text("2")
    expect(reaction(bob, text, "thumbs up")).to_have_attribute("aria-label", "thumbs up 2: alice, you")

    reaction(bob, text, "thumbs up").click()  # bob takes his back: one, alice's
    for person in (alice, bob):
        expect(reaction(person, text, "thumbs up").locator(".reaction-count")).to_have_text("1")
    expect(reaction(bob, text, "thumbs up")).to_have_attribute("aria-label", "thumbs up 1: alice")

    sent = [f for d, f in bob.sockets[-1] if d == "sent" and f.get("type") == "react"]
    assert [(f["emoji"], f.get("remove", False), f["channel"]) for f in sent][-2:] == [
        ("\U0001f44d", False, "public"),
        ("\U0001f44d", True, "public"),
    ]
    bob.page.reload()
    expect(bob.page.locator("#conn")).to_have_attribute("data-state", "online")
    open_conversation(bob, "Public channel")
    expect(reaction(bob, text, "thumbs up")).to_have_attribute("aria-label", "thumbs up 1: alice")
    expect(reaction(bob, text, "thumbs up")).to_have_attribute("aria-pressed", "false")
    # The reaction events are not messages of their own.
    expect(bob.page.locator("#messages .msg-text").filter(has_text="👍")).to_have_count(0)


def notes(person: Person) -> list[dict[str, str]]:
    found: list[dict[str, str]] = person.page.evaluate("window.__notes")
    return found


def test_a_mention_notifies_a_hidden_tab_and_a_muted_conversation_does_not(two: Pair) -> None:
    alice, bob = two.alice, two.bob
    # Asked (once) when alice chats, never before (see the fixture).
    send(alice, f"hello from alice {uuid.uuid4().hex[:6]}")
    wait_in_page(alice.page, "window.__asked === 1", "the page asks for permission once")
    before = len(notes(alice))
    alice.page.evaluate("window.__setHidden(true)")

    # bob types "@al": the page offers alice; Enter picks her.
    composer = bob.page.locator("#composer-text")
    composer.fill("")
    composer.press_sequentially("lunch? @al")
    option = bob.page.get_by_role("option", name="@alice")
    expect(option).to_be_visible()
    composer.press("Enter")
    expect(composer).to_have_value("lunch? @alice ")
    tag = uuid.uuid4().hex[:6]
    composer.press_sequentially(f"at noon {tag}")
    composer.press("Enter")
    text = f"lunch? @alice at noon {tag}"
    expect_acked(bob, text)

    wait_in_page(alice.page, f"window.__notes.length === {before + 1}", "one notification more")
    note = notes(alice)[-1]
    assert (note["title"], note["body"], note["tag"]) == ("bob in Public mentioned you", text, "public")
    expect(alice.page).to_have_title("(1) Chat · alice")
    expect(alice.message(text)).to_have_class(re.compile(r"\bis-mention\b"))
    expect(alice.message(text).locator(".mention.is-me")).to_have_text("@alice")

    # A private message notifies too; unless alice muted the conversation.
    alice.page.evaluate("window.__setHidden(false)")
    open_dm(alice, "bob")
    alice.page.get_by_role("button", name="Mute this conversation").click()
    expect(alice.page.get_by_role("button", name="Unmute this conversation")).to_have_attribute("aria-pressed", "true")
    open_conversation(alice, "Public channel")
    expect(conversation(alice, "Private conversation with bob")).to_have_attribute(
        "aria-label", re.compile(r", muted$")
    )
    alice.page.evaluate("window.__setHidden(true)")
    open_dm(bob, "alice")
    quiet = f"psst {uuid.uuid4().hex[:6]}"
    send(bob, quiet)
    expect_acked(bob, quiet)
    expect(conversation(alice, "Private conversation with bob")).to_have_attribute(
        "aria-label", re.compile(r"1 unread, muted$")
    )
    assert len(notes(alice)) == before + 1, "a muted conversation does not notify"
    expect(alice.page).to_have_title("Chat · alice")  # nor count in the title (Public was read meanwhile)
    expect(alice.page.get_by_role("button", name="Notifications on")).to_be_disabled()

    alice.page.evaluate("window.__setHidden(false)")
    open_dm(alice, "bob")
    alice.page.get_by_role("button", name="Unmute this conversation").click()
    open_conversation(alice, "Public channel")
    alice.page.evaluate("window.__setHidden(true)")
    loud = f"still there? {uuid.uuid4().hex[:6]}"
    send(bob, loud)
    wait_in_page(alice.page, f"window.__notes.length === {before + 2}", "two notifications more")
    assert (notes(alice)[-1]["title"], notes(alice)[-1]["body"]) == ("bob", loud)
    alice.page.evaluate("window.__setHidden(false)")


def test_copy_puts_the_message_text_as_typed_on_the_clipboard(two: Pair) -> None:
    alice, bob = two.alice, two.bob
    text = f"copy *me* exactly {uuid.uuid4().hex[:6]}"
    send(alice, text)
    shown = text.replace("*me*", "me")
    button = bob.message(shown).get_by_role("button", name="Copy message text")
    button.click()
    expect(button).to_have_text("Copied")
    assert bob.page.evaluate("window.__copied")[-1] == text


def test_the_theme_switch_is_remembered_by_the_browser(two: Pair) -> None:
    bob = two.bob
    page = bob.page
    light_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.get_by_role("button", name="Dark mode").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark_bg != light_bg
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == dark_bg
    expect(page.get_by_role("button", name="Light mode")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Light mode").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == light_bg


def settled(person: Person, selector: str, left: int | None) -> None:
    """Wait until the element's slide is over: its left edge at ``left``, or off screen (None)."""
    where = f"r.left === {left}" if left is not None else "r.right <= 0"
    box = f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect(); return {where}; }})()"
    wait_in_page(person.page, box, f"{selector} in place")
    idle = "document.getAnimations().every((a) => a.playState !== 'running')"
    wait_in_page(person.page, idle, "no animation running")


def test_screenshots_for_the_docs(browser: Browser, nginx: NginxFront, two: Pair) -> None:
    """The README's pictures: a room, a private chat, the phone layout and dark mode."""
    alice, bob = two.alice, two.bob
    SHOTS_TO.mkdir(parents=True, exist_ok=True)
    room = "design"
    join_room(alice, room)
    join_room(bob, room)
    for person, line in (
        (alice, "Draft of the new page is up: https://example.org/draft"),
        (bob, "Looks great! The **dark mode** is _lovely_"),
        (alice, "@bob can you check the `mobile` layout?"),
    ):
        send(person, line)
    expect(bob.page.locator("#messages .msg")).to_have_count(3)
    alice.page.locator("#messages .msg").nth(1).get_by_role("button", name="Add a reaction").click()
    alice.page.get_by_role("button", name="React with heart").click()
    expect(bob.page.locator("#messages .reaction")).to_have_count(1)
    bob.page.screenshot(path=str(SHOTS_TO / "room.png"))

    open_dm(bob, "alice")
    send(bob, "Lunch at 12:30?")
    open_dm(alice, "bob")
    send(alice, "Yes, see you there")
    expect(bob.message("Yes, see you there")).to_be_visible()
    bob.page.screenshot(path=str(SHOTS_TO / "private-chat.png"))

    phone = sign_in_on(open_page(browser, nginx, "bob", viewport=(390, 760)))
    try:
        expect(phone.page.locator("#conv-title")).to_have_text("Public")
        phone.page.locator("#sidebar-toggle").click()
        settled(phone, "#sidebar", 0)
        phone.page.screenshot(path=str(SHOTS_TO / "mobile-sidebar.png"))
        phone.page.locator("#room-list").get_by_role("button", name=re.compile("^Room " + room)).click()
        expect(phone.page.locator("#conv-title")).to_have_text(room)
        settled(phone, "#sidebar", None)
        expect(phone.page.locator("#messages .reaction")).to_have_count(1)
        phone.page.screenshot(path=str(SHOTS_TO / "mobile.png"))
        assert_clean(phone)
    finally:
        phone.close()

    bob.page.get_by_role("button", name="Dark mode").click()
    bob.page.locator("#room-list").get_by_role("button", name=re.compile("^Room " + room)).click()
    expect(bob.page.locator("html")).to_have_attribute("data-theme", "dark")
    bob.page.screenshot(path=str(SHOTS_TO / "dark-mode.png"))
    bob.page.get_by_role("button", name="Light mode").click()
    readme = (DOCS_SHOTS.parents[1] / "README.md").read_text()
    for name in ("room", "private-chat", "mobile", "mobile-sidebar", "dark-mode"):
        assert (SHOTS_TO / f"{name}.png").stat().st_size > 10_000, name
        assert (DOCS_SHOTS / f"{name}.png").exists() and f"docs/screenshots/{name}.png" in readme, name


def test_rooms_can_be_found_and_show_their_members_and_who_is_online(
    browser: Browser, nginx: NginxFront, two: Pair
) -> None:
    alice = two.alice
    room = f"garden-{uuid.uuid4().hex[:6]}"
    join_room(alice, room)
    carol = sign_in(browser, nginx, "carol", FAKES)
    try:
        carol.page.get_by_role("button", name="Refresh the list of rooms").click()
        entry = carol.page.locator("#directory-list").get_by_role("button", name=f"Join room {room}, 1 member")
        entry.click()
        expect(carol.page.locator("#conv-title")).to_have_text(room)
        expect(
            carol.page.locator("#directory-list").get_by_role("button", name=f"Open room {room}, 2 members")
        ).to_be_visible()

        members = alice.page.locator("#member-list")
        expect(alice.page.locator("#members-title")).to_have_text(f"Members of {room}")
        expect(members.get_by_role("button", name="carol, online")).to_be_visible()
        expect(members.get_by_role("button", name="alice (you), online")).to_be_visible()
        expect(alice.page.locator("#conv-sub")).to_have_text("Room · 2 online")
    finally:
        carol.close()
    # carol is gone: still a member, no longer online.
    expect(alice.page.locator("#member-list").get_by_role("button", name="carol, offline")).to_be_visible()
    expect(alice.page.locator("#conv-sub")).to_have_text("Room · 1 online")
    open_conversation(alice, "Public channel")
    expect(alice.page.locator("#members-section")).to_be_hidden()


def test_the_page_follows_a_dark_system_until_the_user_picks_a_theme(browser: Browser, nginx: NginxFront) -> None:
    context = browser.new_context(viewport={"width": 900, "height": 600}, color_scheme="dark")
    try:
        page = context.new_page()
        page.goto(nginx.url + "/")
        background = "getComputedStyle(document.body).backgroundColor"
        assert page.evaluate(background) == "rgb(18, 21, 26)", "the dark palette, with no choice made"
        page.evaluate("localStorage.setItem('chat.theme', 'light')")
        page.reload()
        expect(page.locator("html")).to_have_attribute("data-theme", "light")
        assert page.evaluate(background) == "rgb(245, 246, 248)", "the user's light choice wins over the system"
    finally:
        context.close()
