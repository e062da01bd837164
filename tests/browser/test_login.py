"""Logging in, and switching workspace, in a real Chromium."""

from __future__ import annotations

import pytest

from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/klaros-inbox.png"


def test_it_logs_alice_in_and_shows_her_workspace_inbox(page, live_server, acme):
    login(page, live_server, "alice@acme.test", PASSWORD)

    assert page.url == f"{live_server.url}/inbox/"
    assert page.locator(".tenant-name").inner_text() == "Acme"
    assert page.locator("h1").first.inner_text() == "Inbox"
    assert "alice@acme.test" in page.locator(".topnav").inner_text()
    # The stylesheet was applied, not just linked: the top bar is laid out as a flex row.
    assert page.locator(".topbar").evaluate("el => getComputedStyle(el).display") == "flex"
    page.screenshot(path=SCREENSHOT, full_page=True)


def test_it_shows_an_error_for_a_wrong_password(page, live_server, acme):
    login(page, live_server, "alice@acme.test", "not-her-password")

    assert page.url.startswith(f"{live_server.url}/accounts/login/")
    assert "email and password do not match" in page.locator("[role=alert]").inner_text()
    assert page.locator(".tenant-name").count() == 0


def test_the_csp_blocks_nothing_the_pages_need(page, live_server, carol):
    page.goto(f"{live_server.url}/accounts/login/")
    assert csp_violations(page) == []

    login(page, live_server, "carol@both.test", PASSWORD)
    page.wait_for_load_state("networkidle")

    assert csp_violations(page) == []
    assert page.page_errors == []
    # The scripts the pages need did load and run.
    assert page.evaluate("typeof window.htmx") == "object"
    errors = [m.text for m in page.console_messages if m.type == "error"]
    assert errors == []


def test_carol_switches_workspace_with_the_header_switcher(page, live_server, carol):
    login(page, live_server, "carol@both.test", PASSWORD)
    switcher = page.locator("#tenant-switcher")
    assert switcher.locator("option:checked").inner_text() == "Acme"

    # No button: klaros.js submits the form when the selection changes.
    with page.expect_navigation():
        switcher.select_option(label="Bravo")

    assert page.url == f"{live_server.url}/inbox/"
    assert page.locator("#tenant-switcher option:checked").inner_text() == "Bravo"
    assert "Switched to Bravo." in page.locator(".messages").inner_text()
    page.reload()
    assert page.locator("#tenant-switcher option:checked").inner_text() == "Bravo"
    assert csp_violations(page) == []
