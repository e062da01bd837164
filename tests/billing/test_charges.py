"""Recording charges from status webhooks: once per message and category, on both paths."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, connections

from apps.audit.models import AuditEvent
from apps.billing.models import Charge
from apps.conversations.inbound.journal import drain_batch, drain_journal
from apps.conversations.models import WebhookEvent
from apps.tenants.scoping import tenant_scope, unscoped
from tests.conversations.payload_builders import BASE_TS, deliver, encode, post_signed

from .helpers import (
    CBP_CONVERSATION,
    CBP_MARKETING,
    FREE_SERVICE,
    MARKETING,
    UTILITY,
    body_of,
    outbound_to,
    priced,
)


def charges(world):
    with tenant_scope(world.tenant):
        return list(Charge.objects.order_by("wamid", "category"))


def charge_events(world):
    with tenant_scope(world.tenant):
        return list(AuditEvent.objects.filter(action="charge.recorded"))


def test_it_records_one_charge_and_one_audit_event_for_five_deliveries(client, acme):
    message = outbound_to(acme, "4915112345678")
    body = body_of(acme, priced(message.wamid, MARKETING))
    for _ in range(5):
        deliver(client, acme, body)
    body = body_of(acme, priced(message.wamid, MARKETING, value="delivered", ts=BASE_TS + 200))
    deliver(client, acme, body)

    [charge] = charges(acme)
    assert (charge.wamid, charge.message_id, charge.number_id) == (
        message.wamid,
        message.pk,
        acme.number.pk,
    )
    assert (charge.category, charge.pricing_model, charge.billable, charge.pricing_type) == (
        "marketing",
        "PMP",
        True,
        "regular",
    )
    assert charge.market == "DE"
    assert charge.occurred_at == datetime.fromtimestamp(BASE_TS + 100, UTC)
    [event] = charge_events(acme)
    assert event.object_id == str(charge.pk)
    assert event.data == {
        "category": "marketing",
        "number_id": str(acme.number.pk),
        "message_id": str(message.pk),
    }


@pytest.mark.django_db(transaction=True)
def test_it_records_one_charge_when_five_drains_take_the_same_status_at_once(acme):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers: there is no concurrent INSERT to race")
    message = outbound_to(acme, "447700900123")
    raw = encode(body_of(acme, priced(message.wamid, UTILITY)))
    app = acme.number.app
    for _ in range(5):
        WebhookEvent.objects.create(app=app, body=raw)
    barrier = threading.Barrier(5)
    errors = []

    def drain_one():
        try:
            barrier.wait(timeout=30)
            drain_batch(1)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=drain_one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    drain_journal()
    with unscoped("test"):
        assert WebhookEvent.objects.filter(state="processed").count() == 5
    assert len(charges(acme)) == 1
    assert len(charge_events(acme)) == 1


def test_free_pricing_objects_are_not_charges(client, acme):
    message = outbound_to(acme, "15551230001")
    deliver(client, acme, body_of(acme, priced(message.wamid, FREE_SERVICE)))
    assert charges(acme) == []
    assert charge_events(acme) == []


def test_it_records_a_conversation_based_charge_with_its_conversation(client, acme):
    message = outbound_to(acme, "5511987654321")
    pricing = {"billable": True, "pricing_model": "CBP"}  # category only in the origin
    deliver(
        client, acme, body_of(acme, priced(message.wamid, pricing, conversation=CBP_CONVERSATION))
    )
    [charge] = charges(acme)
    assert (charge.category, charge.pricing_model, charge.conversation_id, charge.market) == (
        "marketing",
        "CBP",
        CBP_CONVERSATION["id"],
        "BR",
    )


def test_a_recipient_known_only_by_bsuid_is_in_the_unknown_market(client, acme):
    item = priced("wamid.ELSEWHERE1", MARKETING)
    del item["recipient_id"]
    item["recipient_user_id"] = "US.13491208655302741918"
    deliver(client, acme, body_of(acme, item))
    [charge] = charges(acme)
    assert (charge.market, charge.message_id) == ("unknown", None)


def _journal(world, bodies):
    app = world.number.app
    for body in bodies:
        WebhookEvent.objects.create(app=app, body=encode(body))


def _ledger(world):
    return [
        (
            c.wamid,
            c.category,
            c.market,
            c.pricing_model,
            c.billable,
            c.pricing_type,
            c.conversation_id,
            c.occurred_at,
            c.message_id,
        )
        for c in charges(world)
    ]


def _mixed_bodies(world, messages):
    a, b, c = messages
    return [
        body_of(world, priced(a.wamid, MARKETING), priced(b.wamid, FREE_SERVICE)),
        body_of(world, priced(a.wamid, MARKETING, value="delivered", ts=BASE_TS + 300)),
        body_of(world, priced(b.wamid, UTILITY, value="delivered", ts=BASE_TS + 400)),
        body_of(
            world,
            priced(c.wamid, CBP_MARKETING, conversation=CBP_CONVERSATION),
            priced(c.wamid, CBP_MARKETING, value="read", ts=BASE_TS + 500),
        ),
    ]


def test_the_batched_and_the_per_event_paths_record_the_same_charges(acme, bravo):
    first = [outbound_to(acme, f"4477009001{n:02d}") for n in range(3)]
    _journal(acme, _mixed_bodies(acme, first))
    assert drain_batch(200, batched=True) == 4
    batched = _ledger(acme)
    batched_events = len(charge_events(acme))

    second = [outbound_to(bravo, f"4477009001{n:02d}") for n in range(3)]
    _journal(bravo, _mixed_bodies(bravo, second))
    while drain_batch(1, batched=False):
        pass
    one_by_one = _ledger(bravo)

    def comparable(ledger, messages):
        names = {m.wamid: n for n, m in enumerate(messages)}
        ids = {m.pk: n for n, m in enumerate(messages)}
        return sorted((names[row[0]], *row[1:8], ids.get(row[8])) for row in ledger)

    assert len(batched) == 3  # a: marketing, b: utility, c: CBP marketing
    assert comparable(batched, first) == comparable(one_by_one, second)
    assert batched_events == len(charge_events(bravo)) == 3
    # Bravo sees none of Acme's charges and the other way round.
    assert {c.tenant_id for c in charges(acme)} == {acme.tenant.pk}
    assert {c.tenant_id for c in charges(bravo)} == {bravo.tenant.pk}


def test_a_forged_body_records_no_charge(client, acme):
    message = outbound_to(acme, "4915112345678")
    raw = encode(body_of(acme, priced(message.wamid, MARKETING)))
    response = post_signed(client, raw, "not-the-app-secret")
    assert response.status_code == 401
    drain_journal()
    assert charges(acme) == []
