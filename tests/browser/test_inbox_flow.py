"""Issue 3's flow in a real Chromium: a message the Meta simulator sends through the signed
webhook appears in Alice's inbox list and in the open thread without a reload, escaped (a
hostile profile name and text run nothing), and Bob, of another tenant, gets a 404 for it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from apps.whatsapp.testing import running_simulator
from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD
from tests.conversations.sim_fixtures import sim_number

pytestmark = pytest.mark.browser

HOSTILE_NAME = "<img src=x onerror=\"alert('name')\">Mallory"
HOSTILE_TEXT = "<script>alert('text')</script><img src=x onerror=alert(1)> where is my order?"


@pytest.fixture
def live_sim(live_server, acme, bravo, settings):
    """The simulator posting signed webhooks to the live server (tasks run inline after
    commit under pytest, so each webhook is drained before its answer)."""
    with running_simulator(
        f"{live_server.url}/webhooks/whatsapp/", numbers=[sim_number(acme), sim_number(bravo)]
    ) as sim:
        settings.WHATSAPP_GRAPH_URL = sim.graph_url()
        yield sim


def test_a_simulated_message_arrives_live_escaped_and_stays_in_its_tenant(
    browser, page, live_server, live_sim, acme
):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(page, live_server, "alice@acme.test", PASSWORD)
    expect(page.locator(".empty")).to_contain_text("No open conversations")

    sent = live_sim.inbound(
        {
            "phone_number_id": acme.number.phone_number_id,
            "from": "15550001234",
            "name": HOSTILE_NAME,
            "type": "text",
            "text": HOSTILE_TEXT,
        }
    )
    assert sent["status"] == 200

    # The list polls every 5 s: the row appears without a reload, the name shown as text.
    row = page.locator(".conv-row").first
    expect(row.locator(".conv-name")).to_have_text(HOSTILE_NAME, timeout=12_000)
    expect(row.locator(".conv-preview")).to_contain_text("<script>alert('text')</script>")
    expect(row.locator(".badge")).to_have_text("1 unread")
    page.screenshot(path="/tmp/flow-inbox-list.png", full_page=True)

    row.locator("a").click()
    page.wait_for_url("**/inbox/c/*/")
    thread_url = page.url
    first = page.locator(f'[data-wamid="{sent["wamid"]}"]')
    expect(first.locator(".msg-text")).to_have_text(HOSTILE_TEXT)
    expect(page.locator("h1")).to_have_text(HOSTILE_NAME)

    # The customer writes again while the thread is open: it is appended by the 3 s poll.
    again = live_sim.inbound(
        {
            "phone_number_id": acme.number.phone_number_id,
            "from": "15550001234",
            "name": HOSTILE_NAME,
            "type": "text",
            "text": "<b>second</b> message",
        }
    )
    second = page.locator(f'[data-wamid="{again["wamid"]}"]')
    expect(second.locator(".msg-text")).to_have_text("<b>second</b> message", timeout=10_000)
    assert page.url == thread_url  # no reload happened
    expect(page.locator("#thread-messages [data-message-id]")).to_have_count(2)
    page.screenshot(path="/tmp/flow-thread-live.png", full_page=True)

    # Nothing the customer wrote became markup: no image, no script, no dialog.
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    assert dialogs == []
    assert page.page_errors == []
    assert csp_violations(page) == []

    # Bob (Bravo) cannot open Acme's conversation.
    bob_context = browser.new_context()
    bob = bob_context.new_page()
    try:
        login(bob, live_server, "bob@bravo.test", PASSWORD)
        response = bob.goto(thread_url)
        assert response.status == 404
        assert HOSTILE_TEXT not in bob.content() and "Mallory" not in bob.content()
        bob.goto(f"{live_server.url}/inbox/")
        expect(bob.locator(".conv-row")).to_have_count(0)
        bob.screenshot(path="/tmp/flow-bob-inbox.png", full_page=True)
    finally:
        bob_context.close()
