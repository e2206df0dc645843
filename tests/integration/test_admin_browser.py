"""The operator page in a real browser, on two real chat servers: every server, a stopped one
too, and a failed answer shown as the error it is, not as silence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect

from tests.integration.conftest import RealCluster, new_cluster
from tests.integration.test_browser import browser  # noqa: F401  the module's Chromium (a fixture)

TOKEN = "operator-token-0123456789"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    c = new_cluster(CHAT_ADMIN_TOKEN=TOKEN)
    try:
        c.start_all(1, 2)
        yield c
    finally:
        c.close()


@pytest.fixture
def admin(browser: Browser, cluster: RealCluster) -> Iterator[Page]:  # noqa: F811  the fixture imported above
    context = browser.new_context(viewport={"width": 1400, "height": 700})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(cluster.url(1) + "/admin")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    try:
        yield page
        assert errors == [], errors
    finally:
        context.close()


def row(page: Page, server: str) -> Locator:
    return page.locator("#rows tr").filter(has=page.locator("td:first-child", has_text=server))


def test_the_page_shows_every_server_then_a_stopped_one_with_when_it_was_seen(
    cluster: RealCluster, admin: Page
) -> None:
    ws1, ws2 = cluster.server_id(1), cluster.server_id(2)
    expect(row(admin, ws1).locator("td").nth(1)).to_have_text("ready", timeout=15_000)
    expect(row(admin, ws2).locator("td").nth(1)).to_have_text("ready")
    expect(admin.locator("#health")).to_contain_text("Redis ok · Kafka ok")
    expect(admin.locator("#summary")).to_contain_text("2 live server(s)")
    expect(row(admin, ws1).locator("td").nth(2)).to_contain_text("0.1.0")  # the version

    cluster.stop(2)
    expect(row(admin, ws2).locator("td").nth(1)).to_have_text("stopped", timeout=15_000)
    expect(row(admin, ws2).locator("td").last).to_contain_text("ago")
    expect(admin.locator("#summary")).to_contain_text("1 live server(s) of")


def test_a_failed_answer_is_shown_as_an_error_and_no_answer_as_silence(admin: Page) -> None:
    expect(admin.locator("#servers")).to_be_visible(timeout=15_000)

    def bad_gateway(route: Route) -> None:
        route.fulfill(status=502, content_type="text/html", body="<html><body>502 Bad Gateway</body></html>")

    admin.route("**/admin/api/cluster", bad_gateway)
    expect(admin.locator("#summary")).to_contain_text("Error 502", timeout=15_000)
    expect(admin.locator("#summary")).not_to_contain_text("does not answer")

    admin.unroute("**/admin/api/cluster")
    admin.route("**/admin/api/cluster", lambda route: route.abort())
    expect(admin.locator("#summary")).to_contain_text("does not answer", timeout=15_000)
