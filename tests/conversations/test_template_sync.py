"""Templates: synced from `GET /{waba_id}/message_templates` and kept current by
`message_template_status_update` webhooks, so the gate refuses a template Meta paused
(DESIGN.md section 6.3, test plan E3)."""

from __future__ import annotations

import pytest

from apps.conversations.models import Template
from apps.conversations.outbound.dispatcher import dispatch_outbox
from apps.conversations.outbound.gate import SendRefused
from apps.conversations.outbound.outbox import queue_template
from apps.conversations.outbound.template_sync import sync_templates
from apps.tenants.scoping import tenant_scope

from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    deliver_sim_webhooks,
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

REMOTE = [
    {
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Order {{1}} shipped"}],
    },
    {
        "name": "order_update",
        "language": "pt_BR",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Pedido {{1}} enviado"}],
    },
    {"name": "spring_sale", "language": "en_US", "status": "PENDING", "category": "MARKETING"},
    {"name": "old_promo", "language": "en_US", "status": "REJECTED", "category": "MARKETING"},
]


def templates(world) -> dict[tuple[str, str], Template]:
    with tenant_scope(world.tenant):
        return {(t.name, t.language): t for t in Template.objects.all()}


def sync(world):
    with tenant_scope(world.tenant):
        return sync_templates(world.number, actor=world.owner)


def test_it_creates_templates_from_meta(sim, acme):
    sim.set_templates(acme.number.waba_id, REMOTE)
    result = sync(acme)
    assert (result.created, result.updated, result.total) == (4, 0, 4)
    rows = templates(acme)
    assert {k: (t.status, t.category) for k, t in rows.items()} == {
        ("order_update", "en_US"): ("APPROVED", "UTILITY"),
        ("order_update", "pt_BR"): ("APPROVED", "UTILITY"),
        ("spring_sale", "en_US"): ("PENDING", "MARKETING"),
        ("old_promo", "en_US"): ("REJECTED", "MARKETING"),
    }
    assert rows[("order_update", "en_US")].components == REMOTE[0]["components"]
    assert all(t.waba_id == acme.number.waba_id and t.meta_id for t in rows.values())
    [audit] = audit_events(acme, "templates.synced")
    assert audit.data == {"created": 4, "updated": 0, "total": 4}
    [request] = sim.requests(None)
    assert request["path"] == f"/v25.0/{acme.number.waba_id}/message_templates"


def test_it_updates_changed_templates_and_marks_vanished_ones_deleted(sim, acme):
    sim.set_templates(acme.number.waba_id, REMOTE)
    sync(acme)
    changed = [dict(REMOTE[0], status="PAUSED"), REMOTE[2]]
    sim.set_templates(acme.number.waba_id, changed)
    result = sync(acme)
    assert (result.created, result.updated, result.total) == (0, 2, 2)
    rows = templates(acme)
    assert rows[("order_update", "en_US")].status == "PAUSED"
    assert rows[("order_update", "pt_BR")].status == "DELETED"
    assert rows[("old_promo", "en_US")].status == "DELETED"
    assert rows[("spring_sale", "en_US")].status == "PENDING"


def test_it_keeps_tenants_templates_apart(sim, acme, bravo):
    sim.set_templates(acme.number.waba_id, REMOTE)
    sim.set_templates(bravo.number.waba_id, [REMOTE[0]])
    sync(acme)
    sync(bravo)
    assert len(templates(acme)) == 4
    assert list(templates(bravo)) == [("order_update", "en_US")]
    sim.set_templates(bravo.number.waba_id, [])
    sync(bravo)  # bravo's sync never marks acme's templates deleted
    assert templates(acme)[("order_update", "en_US")].status == "APPROVED"


def test_it_pauses_a_template_from_a_status_webhook_so_the_gate_refuses_it(sim, acme):
    sim.set_templates(acme.number.waba_id, REMOTE)
    sync(acme)
    conversation = make_conversation(acme)
    template = templates(acme)[("order_update", "en_US")]
    sim.send_template_status(acme.number.waba_id, "order_update", "PAUSED", reason="LOW_QUALITY")
    deliver_sim_webhooks(sim)
    template = templates(acme)[("order_update", "en_US")]
    assert (template.status, template.status_reason) == ("PAUSED", "LOW_QUALITY")
    assert templates(acme)[("order_update", "pt_BR")].status == "APPROVED"
    sim.clear_requests()
    with tenant_scope(acme.tenant), pytest.raises(SendRefused) as refused:
        queue_template(conversation, template, ["A-1"], actor=acme.owner)
    assert refused.value.code == "template_not_approved"
    assert "paused" in refused.value.message
    dispatch_outbox(time_budget=1)
    assert graph_sends(sim) == []

    sim.send_template_status(acme.number.waba_id, "order_update", "REINSTATED")
    deliver_sim_webhooks(sim, since=1)
    sync(acme)  # REINSTATED is an event, not a status: a sync brings back APPROVED
    template = templates(acme)[("order_update", "en_US")]
    assert template.status == "APPROVED"
    with tenant_scope(acme.tenant):
        queue_template(conversation, template, ["A-1"], actor=acme.owner)
    assert dispatch_outbox(time_budget=5) == 1
