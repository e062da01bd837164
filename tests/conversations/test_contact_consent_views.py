"""The contact's page (consent state and the ledger, an agent recording consent with a reason)
and the admins' workspace settings (template sync per number, the tenant's keyword rules)."""

from __future__ import annotations

import html

import pytest

from apps.consent.models import ConsentEvent, ConsentKind, ConsentScope, ConsentSource, KeywordRule
from apps.consent.services import consent_state, record_consent
from apps.conversations.models import Template
from apps.tenants.scoping import tenant_scope
from apps.whatsapp.simulator import Fault
from tests.conftest import logged_in_client

from .factories import make_contact
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def ledger(contact) -> list[ConsentEvent]:
    with tenant_scope(contact.tenant_id):
        return list(ConsentEvent.objects.filter(contact=contact).order_by("occurred_at"))


def state(contact):
    with tenant_scope(contact.tenant_id):
        return consent_state(contact)


@pytest.fixture
def agnes_client(agnes):
    return logged_in_client(agnes)


def test_the_contact_page_shows_the_state_and_the_ledger_escaped(acme, alice_client):
    contact = make_contact(acme.tenant, name="Dana Levi")
    with tenant_scope(acme.tenant):
        record_consent(
            contact,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.KEYWORD,
            actor="meta",
            evidence={"message_id": "wamid.STOP1", "text": "<script>alert(1)</script> STOP"},
        )
    page = alice_client.get(f"/inbox/contacts/{contact.pk}/").content.decode()
    assert "Opted out of all messages" in page
    assert "Keyword sent by the customer" in page and "All messages" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; STOP" in page and "<script>alert" not in page
    assert "wamid.STOP1" in page


def test_an_agent_records_an_opt_out_without_a_reason(acme, agnes, agnes_client):
    contact = make_contact(acme.tenant)
    response = agnes_client.post(
        f"/inbox/contacts/{contact.pk}/consent/",
        {"action": "opt_out_marketing"},
        REMOTE_ADDR="203.0.113.9",
    )
    assert response.status_code == 302
    [event] = ledger(contact)
    assert (event.kind, event.scope, event.source) == ("opt_out", "marketing", "agent")
    assert (event.actor_type, event.actor_id) == ("user", str(agnes.pk))
    assert event.ip_address == "203.0.113.9"
    assert state(contact).marketing_opted_out and not state(contact).suppressed
    page = agnes_client.get(f"/inbox/contacts/{contact.pk}/").content.decode()
    assert "Opted out of marketing" in page and "agnes@acme.test" in page


def test_an_opt_in_needs_a_reason(acme, alice_client):
    contact = make_contact(acme.tenant)
    response = alice_client.post(
        f"/inbox/contacts/{contact.pk}/consent/", {"action": "opt_in_marketing", "reason": " "}
    )
    assert response.status_code == 422
    assert "An opt-in needs a reason" in html.unescape(response.content.decode())
    assert ledger(contact) == []


def test_an_opt_in_keeps_the_reason_and_the_ip_as_evidence(acme, alice_client):
    contact = make_contact(acme.tenant)
    alice_client.post(
        f"/inbox/contacts/{contact.pk}/consent/",
        {"action": "opt_in_marketing", "reason": "Signed the <form> at the fair"},
        REMOTE_ADDR="198.51.100.4",
    )
    [event] = ledger(contact)
    assert event.evidence == {"reason": "Signed the <form> at the fair"}
    assert event.ip_address == "198.51.100.4"
    assert state(contact).marketing_opted_in
    assert [a.data["scope"] for a in audit_events(acme, "consent.opt_in")] == ["marketing"]
    page = alice_client.get(f"/inbox/contacts/{contact.pk}/").content.decode()
    assert "Opted in to marketing" in page and "Signed the &lt;form&gt; at the fair" in page


def test_an_opt_out_of_everything_then_back_in(acme, alice_client):
    contact = make_contact(acme.tenant)
    alice_client.post(f"/inbox/contacts/{contact.pk}/consent/", {"action": "opt_out_all"})
    assert state(contact).suppressed
    alice_client.post(
        f"/inbox/contacts/{contact.pk}/consent/",
        {"action": "opt_in_all", "reason": "Asked by phone to receive updates again"},
    )
    assert not state(contact).suppressed


def test_an_unknown_action_is_a_form_error(acme, alice_client):
    contact = make_contact(acme.tenant)
    response = alice_client.post(f"/inbox/contacts/{contact.pk}/consent/", {"action": "delete"})
    assert response.status_code == 422 and ledger(contact) == []


def test_another_tenant_gets_404_on_the_contact_and_its_consent(acme, bob_client):
    contact = make_contact(acme.tenant)
    assert bob_client.get(f"/inbox/contacts/{contact.pk}/").status_code == 404
    response = bob_client.post(f"/inbox/contacts/{contact.pk}/consent/", {"action": "opt_out_all"})
    assert response.status_code == 404
    assert ledger(contact) == []


# --- Workspace settings: keywords --------------------------------------------------------------


def rules(world) -> list[str]:
    with tenant_scope(world.tenant):
        return sorted(KeywordRule.objects.values_list("word", flat=True))


def test_an_admin_adds_and_removes_a_keyword(acme, bravo, alice_client):
    response = alice_client.post(
        "/inbox/settings/keywords/", {"word": "PARAR", "kind": "opt_out", "language": "es"}
    )
    assert response.status_code == 302
    assert rules(acme) == ["PARAR"] and rules(bravo) == []
    page = alice_client.get("/inbox/settings/").content.decode()
    assert "<strong>PARAR</strong>" in page
    with tenant_scope(acme.tenant):
        rule = KeywordRule.objects.get()
    assert [a.data["word"] for a in audit_events(acme, "consent.keyword_added")] == ["PARAR"]
    alice_client.post(f"/inbox/settings/keywords/{rule.pk}/delete/")
    assert rules(acme) == []
    assert len(audit_events(acme, "consent.keyword_deleted")) == 1


def test_a_keyword_must_be_new_and_a_word(acme, alice_client):
    alice_client.post("/inbox/settings/keywords/", {"word": "Parar", "kind": "opt_out"})
    duplicate = alice_client.post(
        "/inbox/settings/keywords/", {"word": " PARAR! ", "kind": "opt_out"}
    )
    assert duplicate.status_code == 422
    assert "There is already a rule for Parar." in duplicate.content.decode()
    empty = alice_client.post("/inbox/settings/keywords/", {"word": "!!", "kind": "opt_in"})
    assert empty.status_code == 422
    assert rules(acme) == ["Parar"]


def test_agents_cannot_manage_keywords_or_sync_templates(sim, acme, agnes_client):
    with tenant_scope(acme.tenant):
        rule = KeywordRule.objects.create(tenant=acme.tenant, word="PARAR", kind="opt_out")
    assert agnes_client.get("/inbox/settings/").status_code == 403
    assert (
        agnes_client.post(
            "/inbox/settings/keywords/", {"word": "DETENER", "kind": "opt_out"}
        ).status_code
        == 403
    )
    assert agnes_client.post(f"/inbox/settings/keywords/{rule.pk}/delete/").status_code == 403
    response = agnes_client.post(f"/inbox/numbers/{acme.number.pk}/sync-templates/")
    assert response.status_code == 403
    assert rules(acme) == ["PARAR"]
    assert sim.requests() == []
    assert "Workspace settings" not in agnes_client.get("/inbox/").content.decode()


def test_another_tenants_admin_gets_404_on_its_rules_and_numbers(sim, acme, bob_client):
    with tenant_scope(acme.tenant):
        rule = KeywordRule.objects.create(tenant=acme.tenant, word="PARAR", kind="opt_out")
    assert bob_client.post(f"/inbox/settings/keywords/{rule.pk}/delete/").status_code == 404
    response = bob_client.post(f"/inbox/numbers/{acme.number.pk}/sync-templates/")
    assert response.status_code == 404
    assert rules(acme) == ["PARAR"] and sim.requests() == []


# --- Workspace settings: template sync ---------------------------------------------------------


def test_an_admin_syncs_a_numbers_templates_from_meta(sim, acme, alice_client):
    sim.set_templates(
        acme.number.waba_id,
        [
            {"name": "order_update", "components": [{"type": "BODY", "text": "Order {{1}}"}]},
            {"name": "promo", "category": "MARKETING", "status": "PENDING"},
        ],
    )
    response = alice_client.post(f"/inbox/numbers/{acme.number.pk}/sync-templates/", follow=True)
    page = response.content.decode()
    assert response.redirect_chain == [("/inbox/settings/", 302)]
    assert "Synced 2 templates of +1 555 0001 from Meta (2 new, 0 updated)." in page
    assert "1 approved of 2" in page
    with tenant_scope(acme.tenant):
        assert sorted(Template.objects.values_list("name", "status")) == [
            ("order_update", "APPROVED"),
            ("promo", "PENDING"),
        ]


def test_a_sync_refused_by_meta_says_so_in_plain_words(sim, acme, alice_client):
    sim.add_fault(Fault(None, code=190, scope="templates"))
    response = alice_client.post(
        f"/inbox/numbers/{acme.number.pk}/sync-templates/",
        {"next": "/inbox/settings/"},
        follow=True,
    )
    page = html.unescape(response.content.decode())
    assert "Meta refused the template sync for +1 555 0001" in page


def test_a_sync_when_meta_is_unreachable_says_so(acme, alice_client, settings):
    settings.WHATSAPP_GRAPH_URL = "http://127.0.0.1:9/v25.0"
    response = alice_client.post(
        f"/inbox/numbers/{acme.number.pk}/sync-templates/",
        {"next": "https://evil.example/"},
        follow=True,
    )
    assert response.redirect_chain == [("/inbox/settings/", 302)]
    assert "Meta could not be reached to sync the templates" in response.content.decode()
