"""The template picker that replaces the reply box outside the 24-hour window: only usable
templates of the number's WABA, marketing ones disabled without an opt-in, a server-rendered
preview with the variables filled in (escaped), and sending one through the gate."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.tenants.scoping import tenant_scope

from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    make_conversation,
    make_template,
    outbound_messages,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")
HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _graph_is_a_black_hole(settings):
    settings.WHATSAPP_GRAPH_URL = "http://127.0.0.1:9/v25.0"


def closed(world, **kwargs):
    return make_conversation(world, last_inbound_at=timezone.now() - timedelta(hours=30), **kwargs)


def options(html: str) -> dict[str, str]:
    select = re.search(r'<select id="template-choice".*?</select>', html, re.S).group(0)
    return {name: attrs for attrs, name in re.findall(r"<option([^>]*)>([^<(]+?) \(", select)}


def opt_in_marketing(conversation):
    with tenant_scope(conversation.tenant_id):
        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_IN,
            scope=ConsentScope.MARKETING,
            source=ConsentSource.FORM,
            actor="test",
        )


def test_the_picker_lists_only_usable_templates_of_the_numbers_waba(acme, bravo, alice_client):
    conversation = closed(acme)
    make_template(acme, "order_update")
    make_template(acme, "promo_june", category="MARKETING")
    make_template(acme, "in_review", status="PENDING")
    make_template(acme, "rejected_one", status="REJECTED")
    make_template(acme, "other_waba", waba_id="299999999999")
    make_template(bravo, "bravo_only")
    html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    found = options(html)
    assert set(found) == {"order_update", "promo_june"}
    assert "disabled" not in found["order_update"]
    assert "disabled" in found["promo_june"]
    assert "not available: needs a recorded marketing opt-in" in html


def test_a_marketing_template_is_offered_after_an_opt_in(acme, alice_client):
    conversation = closed(acme)
    make_template(acme, "promo_june", category="MARKETING")
    opt_in_marketing(conversation)
    html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert "disabled" not in options(html)["promo_june"]


def test_the_picker_says_so_when_there_is_no_template(acme, agnes, alice_client):
    from tests.conftest import logged_in_client

    conversation = closed(acme)
    admin_html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert "no approved template" in admin_html
    assert f'action="/inbox/numbers/{acme.number.pk}/sync-templates/"' in admin_html
    agent_html = logged_in_client(agnes).get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert "Ask an admin" in agent_html and "sync-templates" not in agent_html


def test_choosing_a_template_renders_its_fields_and_preview(acme, alice_client):
    conversation = closed(acme)
    template = make_template(acme, body="Hi {{1}}, order {{2}} has shipped.")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/preview/?part=fields",
        {"template": str(template.pk)},
        headers=HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('name="params"') == 2
    assert "Hi {{1}}, order {{2}} has shipped." in html  # placeholders until filled


def test_the_preview_fills_the_variables_escaped(acme, alice_client):
    conversation = closed(acme)
    template = make_template(acme, body="Hi {{1}}, order {{2}} has shipped.")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/preview/",
        {"template": str(template.pk), "params": ["<b>Dana</b>", "A-17"]},
        headers=HTMX,
    )
    html = response.content.decode()
    assert "Hi &lt;b&gt;Dana&lt;/b&gt;, order A-17 has shipped." in html
    assert "<b>Dana</b>" not in html
    assert outbound_messages(acme) == []


def test_the_preview_of_another_tenants_template_is_404(acme, bravo, alice_client):
    conversation = closed(acme)
    foreign = make_template(bravo, "bravo_only")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/preview/", {"template": str(foreign.pk)}
    )
    assert response.status_code == 404


def test_it_queues_a_template_with_its_variables(acme, alice_client):
    conversation = closed(acme)
    template = make_template(acme, body="Your order {{1}} has shipped.")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/",
        {"template": str(template.pk), "params": ["A-17"]},
        headers=HTMX,
    )
    assert response.status_code == 200 and response["HX-Trigger"] == "klaros:thread-changed"
    [message] = outbound_messages(acme)
    assert (message.type, message.status, message.template_id) == (
        "template",
        "queued",
        template.pk,
    )
    assert message.text == "Your order A-17 has shipped."
    assert message.content["components"][0]["parameters"] == [{"type": "text", "text": "A-17"}]
    assert [a.data["path"] for a in audit_events(acme, "send.queued")] == ["agent_template"]


def test_it_asks_for_every_variable(acme, alice_client):
    conversation = closed(acme)
    template = make_template(acme, body="Hi {{1}}, order {{2}}.")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/",
        {"template": str(template.pk), "params": ["Dana", " "]},
        headers=HTMX,
    )
    html = response.content.decode()
    assert "Fill in all 2 variable(s) of order_update." in html
    assert 'value="Dana"' in html  # what the agent typed is kept
    assert outbound_messages(acme) == []


def test_it_refuses_a_marketing_template_without_an_opt_in(acme, alice_client):
    conversation = closed(acme, name="Dana Levi")
    template = make_template(acme, "promo_june", category="MARKETING", body="Sale!")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/", {"template": str(template.pk)}, follow=True
    )
    html = response.content.decode()
    assert "There is no recorded marketing opt-in for Dana Levi" in html
    assert outbound_messages(acme) == []


def test_it_refuses_a_template_to_a_suppressed_contact(acme, alice_client):
    conversation = closed(acme, name="Dana Levi")
    template = make_template(acme, body="Hello")
    with tenant_scope(acme.tenant):
        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.KEYWORD,
            actor="test",
        )
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/", {"template": str(template.pk)}, headers=HTMX
    )
    assert "Dana Levi opted out of all messages" in response.content.decode()
    assert outbound_messages(acme) == []
    assert [a.data["reason"] for a in audit_events(acme, "send.refused")] == ["suppressed"]


def test_it_refuses_a_template_of_another_waba_of_the_same_tenant(acme, alice_client):
    conversation = closed(acme)
    template = make_template(acme, "elsewhere", waba_id="299999999999", body="Hello")
    response = alice_client.post(
        f"/inbox/c/{conversation.pk}/template/", {"template": str(template.pk)}, headers=HTMX
    )
    text = html.unescape(response.content.decode())
    assert "does not belong to this number's WhatsApp account" in text
    assert outbound_messages(acme) == []


def test_another_tenants_template_or_conversation_is_404(acme, bravo, alice_client, bob_client):
    conversation = closed(acme)
    mine = make_template(acme, body="Hello")
    foreign = make_template(bravo, "bravo_only", body="Hello")
    url = f"/inbox/c/{conversation.pk}/template/"
    assert alice_client.post(url, {"template": str(foreign.pk)}).status_code == 404
    assert bob_client.post(url, {"template": str(mine.pk)}).status_code == 404
    preview = f"/inbox/c/{conversation.pk}/template/preview/"
    assert bob_client.post(preview, {"template": str(mine.pk)}).status_code == 404
    assert outbound_messages(acme) == [] and outbound_messages(bravo) == []
