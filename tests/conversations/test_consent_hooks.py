"""Consent from inbound traffic, through the real webhook path: a STOP records an opt-out with
its evidence and is confirmed once; after it nothing but that confirmation leaves Klaros; Meta's
Stop-promotions preference and error 131050 block marketing only (test plan E1, E4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.consent.models import ConsentEvent, ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import OPT_OUT_CONFIRMATION, consent_state
from apps.conversations.models import Contact, Conversation, Message
from apps.conversations.outbound.dispatcher import dispatch_outbox
from apps.conversations.outbound.gate import SendRefused
from apps.conversations.outbound.outbox import queue_template, queue_text_reply
from apps.tenants.scoping import tenant_scope

from .payload_builders import deliver, text_body
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    deliver_sim_webhooks,
    fast_password_hashing_fixture,
    graph_sends,
    make_template,
    outbound_messages,
    reload,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")
CUSTOMER = "15551234567"


def write(client, world, text, **kwargs):
    """The customer writes `text` now; returns its wamid."""
    body, wamid = text_body(world, text, ts=int(timezone.now().timestamp()), **kwargs)
    deliver(client, world, body)
    return wamid


def conversation_of(world, wa_id=CUSTOMER) -> Conversation:
    with tenant_scope(world.tenant):
        return Conversation.objects.select_related("contact", "number").get(contact__wa_id=wa_id)


def consent_events(world) -> list[ConsentEvent]:
    with tenant_scope(world.tenant):
        return list(ConsentEvent.objects.order_by("occurred_at", "created_at"))


def test_it_records_an_inbound_stop_with_evidence_and_queues_one_confirmation(sim, acme, client):
    wamid = write(client, acme, " Stop. ")
    [event] = consent_events(acme)
    assert (event.kind, event.scope, event.source) == (
        ConsentKind.OPT_OUT,
        ConsentScope.ALL,
        ConsentSource.KEYWORD,
    )
    assert event.evidence["wamid"] == wamid
    assert event.evidence["text"] == " Stop. "
    with tenant_scope(acme.tenant):
        inbound = Message.objects.get(wamid=wamid)  # the STOP itself is stored
    assert event.evidence["message_id"] == str(inbound.pk)
    assert [a.object_id for a in audit_events(acme, "consent.opt_out")] == [str(event.pk)]

    [confirmation] = outbound_messages(acme)
    assert confirmation.text == OPT_OUT_CONFIRMATION
    assert confirmation.send_path == "opt_out_confirmation"
    assert graph_sends(sim) == []  # queued, not sent inside the webhook's processing

    assert dispatch_outbox(time_budget=5) == 1
    [sent] = graph_sends(sim, acme)
    assert sent["json"]["text"]["body"] == OPT_OUT_CONFIRMATION
    assert sent["json"]["to"] == f"+{CUSTOMER}"


def test_it_confirms_an_opt_out_only_once(sim, acme, client):
    write(client, acme, "STOP")
    write(client, acme, "STOP")
    write(client, acme, "unsubscribe")
    assert len(consent_events(acme)) == 3  # every keyword is evidence
    assert len(outbound_messages(acme)) == 1
    dispatch_outbox(time_budget=5)
    assert len(graph_sends(sim)) == 1


def test_it_records_a_redelivered_stop_once(sim, acme, client):
    body, _ = text_body(acme, "STOP", ts=int(timezone.now().timestamp()))
    deliver(client, acme, body)
    deliver(client, acme, body)
    assert len(consent_events(acme)) == 1
    assert len(outbound_messages(acme)) == 1


def test_it_refuses_every_send_after_stop_with_zero_graph_calls(sim, acme, client):
    write(client, acme, "STOP")
    dispatch_outbox(time_budget=5)
    sim.clear_requests()
    conversation = conversation_of(acme)
    template = make_template(acme, sim=sim)
    with tenant_scope(acme.tenant):
        with pytest.raises(SendRefused) as reply:
            queue_text_reply(conversation, "Are you sure?", actor=acme.owner)
        with pytest.raises(SendRefused) as tpl:
            queue_template(conversation, template, ["A-1"], actor=acme.owner)
    assert reply.value.code == tpl.value.code == "suppressed"
    assert "opted out of all messages" in reply.value.message
    assert len(outbound_messages(acme)) == 1  # only the confirmation
    dispatch_outbox(time_budget=2)
    assert graph_sends(sim) == []
    reasons = [e.data["reason"] for e in audit_events(acme, "send.refused")]
    assert reasons == ["suppressed", "suppressed"]


def test_it_lets_a_customer_opt_back_in_with_start(sim, acme, client):
    write(client, acme, "STOP")
    write(client, acme, "START")
    conversation = conversation_of(acme)
    with tenant_scope(acme.tenant):
        assert not consent_state(conversation.contact).suppressed
        queue_text_reply(conversation, "Welcome back", actor=acme.owner)
    assert [e.kind for e in consent_events(acme)] == [ConsentKind.OPT_OUT, ConsentKind.OPT_IN]
    assert dispatch_outbox(time_budget=5) == 2  # the confirmation and the reply


def test_it_treats_a_message_containing_stop_as_conversation(sim, acme, client):
    write(client, acme, "please don't stop")
    write(client, acme, "stopped")
    assert consent_events(acme) == []
    assert outbound_messages(acme) == []


def test_it_blocks_marketing_but_not_utility_after_a_stop_promotions_preference(sim, acme, client):
    write(client, acme, "Hi")
    conversation = conversation_of(acme)
    with tenant_scope(acme.tenant):
        from apps.consent.services import record_consent

        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_IN,
            scope=ConsentScope.MARKETING,
            source=ConsentSource.FORM,
            actor="customer",
            occurred_at=timezone.now() - timedelta(minutes=5),
        )
    sim.send_user_preference(acme.number.phone_number_id, CUSTOMER, "stop")  # no webhook URL
    deliver_sim_webhooks(sim)
    promo = make_template(acme, "promo", category="MARKETING", body="Sale!", sim=sim)
    utility = make_template(acme, "receipt", category="UTILITY", body="Receipt {{1}}", sim=sim)
    with tenant_scope(acme.tenant):
        with pytest.raises(SendRefused) as refused:
            queue_template(conversation, promo, [], actor=acme.owner)
        queue_template(conversation, utility, ["R-9"], actor=acme.owner)
        queue_text_reply(conversation, "Still here to help", actor=acme.owner)
    assert refused.value.code == "marketing_opted_out"
    assert dispatch_outbox(time_budget=5) == 2
    assert [s["json"]["type"] for s in graph_sends(sim)] == ["template", "text"]


def test_it_records_131050_as_a_marketing_opt_out_and_does_not_retry(sim, acme, client):
    from apps.whatsapp.simulator import Fault

    write(client, acme, "Hi")
    conversation = conversation_of(acme)
    promo = make_template(acme, "promo", category="MARKETING", body="Sale!", sim=sim)
    with tenant_scope(acme.tenant):
        from apps.consent.services import record_consent

        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_IN,
            scope=ConsentScope.MARKETING,
            source=ConsentSource.FORM,
            actor="customer",
            occurred_at=timezone.now() - timedelta(minutes=5),
        )
        message = queue_template(conversation, promo, [], actor=acme.owner)
    sim.add_fault(Fault(acme.number.phone_number_id, code=131050))
    dispatch_outbox(time_budget=5)
    message = reload(message)
    assert message.status == "failed"
    assert message.error_code == 131050
    assert "stopped marketing" in message.error_details
    assert len(graph_sends(sim)) == 1
    [event] = [e for e in consent_events(acme) if e.source == ConsentSource.META_ERROR]
    assert (event.kind, event.scope) == (ConsentKind.OPT_OUT, ConsentScope.MARKETING)
    with tenant_scope(acme.tenant):
        current = consent_state(Contact.objects.get(pk=conversation.contact_id))
    assert current.marketing_opted_out and not current.suppressed


def test_it_records_an_asynchronous_131050_status_as_a_marketing_opt_out(sim, acme, client):
    from apps.whatsapp.simulator import Fault

    write(client, acme, "Hi")
    conversation = conversation_of(acme)
    promo = make_template(acme, "promo", category="MARKETING", body="Sale!", sim=sim)
    with tenant_scope(acme.tenant):
        from apps.consent.services import record_consent

        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_IN,
            scope=ConsentScope.MARKETING,
            source=ConsentSource.FORM,
            actor="customer",
            occurred_at=timezone.now() - timedelta(minutes=5),
        )
        message = queue_template(conversation, promo, [], actor=acme.owner)
    sim.add_fault(Fault(acme.number.phone_number_id, code=131050, async_=True))
    dispatch_outbox(time_budget=5)
    assert reload(message).status == "accepted"
    deliver_sim_webhooks(sim)
    message = reload(message)
    assert (message.status, message.error_code) == ("failed", 131050)
    events = [e for e in consent_events(acme) if e.source == ConsentSource.META_ERROR]
    assert [(e.kind, e.scope) for e in events] == [(ConsentKind.OPT_OUT, ConsentScope.MARKETING)]
    with tenant_scope(acme.tenant), pytest.raises(SendRefused) as refused:
        queue_template(conversation, promo, [], actor=acme.owner)
    assert refused.value.code == "marketing_opted_out"
