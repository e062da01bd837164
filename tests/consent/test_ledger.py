"""The consent ledger: append-only, current state derived from the events, every event on the
audit chain, and Meta's duplicate deliveries recorded once (DESIGN.md section 8)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.consent.models import (
    AppendOnlyError,
    ConsentEvent,
    ConsentKind,
    ConsentScope,
    ConsentSource,
)
from apps.consent.services import consent_state, record_consent
from apps.tenants.scoping import tenant_scope
from tests.conversations.sim_fixtures import (  # noqa: F401 (fixture)
    fast_password_hashing_fixture,
    make_conversation,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

OUT, IN = ConsentKind.OPT_OUT, ConsentKind.OPT_IN
ALL, MARKETING = ConsentScope.ALL, ConsentScope.MARKETING


@pytest.fixture
def contact(acme):
    return make_conversation(acme).contact


def add(contact, kind, scope, *, minutes=0, source=ConsentSource.KEYWORD, **kwargs):
    base = timezone.now() - timedelta(hours=1)
    with tenant_scope(contact.tenant_id):
        return record_consent(
            contact,
            kind=kind,
            scope=scope,
            source=source,
            actor="customer",
            occurred_at=base + timedelta(minutes=minutes),
            **kwargs,
        )


def state(contact):
    with tenant_scope(contact.tenant_id):
        return consent_state(contact)


# --- Append-only ---------------------------------------------------------------------------------


def test_it_refuses_to_change_or_delete_a_consent_event(contact):
    event = add(contact, OUT, ALL)
    with tenant_scope(contact.tenant_id):
        event.kind = IN
        with pytest.raises(AppendOnlyError):
            event.save()
        with pytest.raises(AppendOnlyError):
            event.delete()
        with pytest.raises(AppendOnlyError):
            ConsentEvent.objects.filter(pk=event.pk).update(kind=IN)
        with pytest.raises(AppendOnlyError):
            ConsentEvent.objects.filter(pk=event.pk).delete()
        with pytest.raises(AppendOnlyError):
            ConsentEvent.objects.all().delete()
        assert ConsentEvent.objects.get(pk=event.pk).kind == OUT


# --- Current state from the ledger ---------------------------------------------------------------


def test_it_starts_with_no_suppression_and_no_marketing_opt_in(contact):
    current = state(contact)
    assert not current.suppressed
    assert not current.marketing_opted_out
    assert not current.marketing_opted_in
    assert current.last_event is None


def test_it_suppresses_after_stop_and_lifts_it_after_start(contact):
    add(contact, OUT, ALL, minutes=1)
    assert state(contact).suppressed
    assert state(contact).marketing_opted_out
    add(contact, IN, ALL, minutes=2)
    current = state(contact)
    assert not current.suppressed
    assert not current.marketing_opted_out
    assert not current.marketing_opted_in


def test_it_does_not_restore_a_marketing_opt_in_after_stop_then_start(contact):
    add(contact, IN, MARKETING, minutes=1, source=ConsentSource.FORM)
    assert state(contact).marketing_opted_in
    add(contact, OUT, ALL, minutes=2)
    assert not state(contact).marketing_opted_in
    add(contact, IN, ALL, minutes=3)
    current = state(contact)
    assert not current.suppressed
    assert not current.marketing_opted_in  # a new marketing opt-in is needed


def test_it_blocks_only_marketing_after_metas_stop_promotions_preference(contact):
    add(contact, IN, MARKETING, minutes=1, source=ConsentSource.FORM)
    add(contact, OUT, MARKETING, minutes=2, source=ConsentSource.META_PREFERENCE)
    current = state(contact)
    assert current.marketing_opted_out
    assert not current.marketing_opted_in
    assert not current.suppressed


def test_it_orders_by_when_consent_was_given_not_when_it_was_recorded(contact):
    add(contact, IN, ALL, minutes=5)  # START at :05, recorded first
    add(contact, OUT, ALL, minutes=1)  # a late STOP from :01
    assert not state(contact).suppressed


def test_it_lets_a_later_marketing_opt_in_follow_a_marketing_opt_out(contact):
    add(contact, OUT, MARKETING, minutes=1, source=ConsentSource.META_PREFERENCE)
    add(contact, IN, MARKETING, minutes=2, source=ConsentSource.META_PREFERENCE)
    current = state(contact)
    assert current.marketing_opted_in and not current.marketing_opted_out


# --- Audit and idempotency -----------------------------------------------------------------------


def test_it_writes_an_audit_event_for_every_consent_event(contact):
    out = add(contact, OUT, ALL, minutes=1)
    back = add(contact, IN, ALL, minutes=2)
    with tenant_scope(contact.tenant_id):
        events = list(AuditEvent.objects.filter(action__startswith="consent.").order_by("seq"))
    assert [(e.action, e.object_id) for e in events] == [
        ("consent.opt_out", str(out.pk)),
        ("consent.opt_in", str(back.pk)),
    ]
    assert events[0].data == {"contact_id": str(contact.pk), "scope": "all", "source": "keyword"}


def test_it_records_a_duplicate_dedupe_key_once(contact):
    first = add(contact, OUT, MARKETING, dedupe_key="preference:abc")
    again = add(contact, OUT, MARKETING, dedupe_key="preference:abc")
    assert first is not None and again is None
    with tenant_scope(contact.tenant_id):
        assert ConsentEvent.objects.count() == 1
        assert AuditEvent.objects.filter(action="consent.opt_out").count() == 1


def test_it_refuses_unknown_kinds_scopes_and_sources(contact):
    with pytest.raises(ValueError):
        add(contact, "maybe", ALL)
    with pytest.raises(ValueError):
        add(contact, OUT, "sms")
    with pytest.raises(ValueError):
        add(contact, OUT, ALL, source="rumour")


def test_it_records_a_duplicate_user_preferences_webhook_once(acme, client):
    from tests.conversations.payload_builders import deliver, entry, notification

    contact = make_conversation(acme, wa_id="15557654321").contact
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": "15550001",
            "phone_number_id": acme.number.phone_number_id,
        },
        "contacts": [{"profile": {"name": "Dana"}, "wa_id": "15557654321"}],
        "user_preferences": [
            {
                "wa_id": "15557654321",
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": int(timezone.now().timestamp()),
            }
        ],
    }
    body = notification(entry({"field": "user_preferences", "value": value}))
    deliver(client, acme, body)
    deliver(client, acme, body)  # Meta retries the same body
    with tenant_scope(acme.tenant):
        events = list(ConsentEvent.objects.filter(contact=contact))
        assert AuditEvent.objects.filter(action="consent.opt_out").count() == 1
    assert [(e.kind, e.scope, e.source) for e in events] == [
        (OUT, MARKETING, ConsentSource.META_PREFERENCE)
    ]
    current = state(contact)
    assert current.marketing_opted_out and not current.suppressed
