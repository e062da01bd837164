"""Issue 4's agent flow in a real Chromium, against the Meta simulator over HTTP.

Alice replies inside the window; the reply is queued in the request and, because tasks run
inline after commit under pytest, the outbox dispatcher sends it to the simulator right after
the reply's commit (still in the request thread of the live server). The simulator's signed
status webhooks come back to the live server and the page's poll turns the ticks sent →
delivered → read. Then the window closes, the reply box gives way to the template picker, and
Alice syncs the templates, fills the variable, previews and sends an approved template."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.conversations.models import Conversation, Message
from apps.tenants.scoping import tenant_scope
from apps.whatsapp.testing import running_simulator
from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD
from tests.conversations.sim_fixtures import sim_number

pytestmark = pytest.mark.browser

# Longer than the page's 3 s poll, so each status is on screen for at least one poll.
STATUS_SPACING = 4.5


@pytest.fixture
def live_sim(live_server, acme, bravo, settings):
    with running_simulator(
        f"{live_server.url}/webhooks/whatsapp/", numbers=[sim_number(acme), sim_number(bravo)]
    ) as sim:
        settings.WHATSAPP_GRAPH_URL = sim.graph_url()
        yield sim


def test_an_agent_replies_sees_the_ticks_then_sends_a_template_once_the_window_closed(
    page, live_server, live_sim, acme
):
    live_sim.configure(status_delay=STATUS_SPACING)
    inbound = live_sim.inbound(
        {
            "phone_number_id": acme.number.phone_number_id,
            "from": "15550004321",
            "name": "Dana Levi",
            "type": "text",
            "text": "Hi, where is my order?",
        }
    )
    assert inbound["status"] == 200
    with tenant_scope(acme.tenant):
        conversation = Conversation.objects.get()

    login(page, live_server, "alice@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/inbox/c/{conversation.pk}/")
    expect(page.locator("#window-status")).to_contain_text("Window open: closes in 23 h")

    # Quote the customer's message, then reply.
    page.locator(f'[data-wamid="{inbound["wamid"]}"] .msg-quote-btn').click()
    expect(page.locator("#reply-quote")).to_be_visible()
    expect(page.locator("#reply-quote [data-quote-text]")).to_have_text("Hi, where is my order?")
    page.fill("#reply-body", "It left the warehouse this morning.")
    page.click("#reply-form button[type=submit]")

    reply = page.locator('#thread-messages [data-direction="out"]').last
    expect(reply.locator(".msg-text")).to_have_text("It left the warehouse this morning.")
    expect(reply.locator(".quote")).to_contain_text("Hi, where is my order?")
    expect(page.locator("#reply-body")).to_have_value("")
    expect(page.locator("#reply-quote")).to_be_hidden()
    assert reply.get_attribute("data-status") in ("queued", "sending", "accepted", "sent")

    # The ticks follow the simulator's status webhooks, without a reload.
    for status, css in [
        ("sent", "tick-sent"),
        ("delivered", "tick-delivered"),
        ("read", "tick-read"),
    ]:
        expect(reply).to_have_attribute("data-status", status, timeout=15_000)
        expect(reply.locator(".tick")).to_have_class(f"tick {css}")
        if status == "delivered":
            assert reply.locator(".tick").inner_text().startswith("✓✓")
    page.screenshot(path="/tmp/flow-ticks-read.png", full_page=True)
    with tenant_scope(acme.tenant):
        sent = Message.objects.get(direction="out")
    assert (sent.status, sent.context_wamid) == ("read", inbound["wamid"])
    assert [r["payload"]["context"]["message_id"] for r in live_sim.sent_messages()] == [
        inbound["wamid"]
    ]

    # 25 hours later: the window has closed.
    live_sim.configure(status_delay=0)
    with tenant_scope(acme.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(
            last_inbound_at=timezone.now() - timedelta(hours=25)
        )
    live_sim.set_templates(
        acme.number.waba_id,
        [
            {
                "name": "order_update",
                "category": "UTILITY",
                "components": [
                    {"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way."}
                ],
            },
            {"name": "summer_sale", "category": "MARKETING"},
        ],
    )
    page.reload()
    expect(page.locator("#reply-form")).to_have_count(0)
    expect(page.locator("#window-status")).to_contain_text("Window closed 1\u00a0hour ago")
    expect(page.locator(".composer-refusal")).to_contain_text(
        "The 24-hour window closed 1\u00a0hour ago; send an approved template instead."
    )

    # No templates yet: Alice (an admin) syncs them from the simulated Meta.
    page.click("text=Sync templates from Meta")
    page.wait_for_url(f"**/inbox/c/{conversation.pk}/")
    expect(page.locator(".messages")).to_contain_text("Synced 2 templates")
    expect(page.locator("#template-choice option[disabled]")).to_contain_text(
        "summer_sale (en_US) · marketing — not available: needs a recorded marketing opt-in"
    )

    page.select_option("#template-choice", label="order_update (en_US) · utility")
    expect(page.locator("#template-fields input[name=params]")).to_have_count(2)
    page.fill("#template-var-1", "<b>Dana</b>")
    page.fill("#template-var-2", "A-17")
    expect(page.locator("#template-preview .msg-text")).to_have_text(
        "Hi <b>Dana</b>, your order A-17 is on its way."
    )
    page.screenshot(path="/tmp/flow-template-picker.png", full_page=True)
    page.click("#template-form button.send")

    template_message = page.locator('#thread-messages [data-type="template"]').last
    expect(template_message.locator(".msg-text")).to_have_text(
        "Hi <b>Dana</b>, your order A-17 is on its way."
    )
    expect(template_message).to_have_attribute("data-status", "read", timeout=15_000)
    page.screenshot(path="/tmp/flow-template-sent.png", full_page=True)
    [_, template_send] = live_sim.sent_messages()
    assert template_send["payload"]["template"]["name"] == "order_update"

    assert page.page_errors == []
    assert csp_violations(page) == []
