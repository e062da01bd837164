"""`record()` and AuditEvent: append-only, hash-chained per tenant, no secrets."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from django.db import transaction

from apps.audit.models import DEPLOYMENT_CHAIN, AppendOnlyError, AuditChainHead, AuditEvent
from apps.audit.services import MASK, mask_secrets, record
from apps.tenants.crypto import Secret
from apps.tenants.models import Role
from apps.tenants.scoping import ScopeError, tenant_scope, unscoped
from apps.tenants.services import NumberCredentials, add_member, connect_number, create_tenant

GENESIS = "0" * 64


def events() -> list[AuditEvent]:
    with unscoped("test"):
        return list(AuditEvent.objects.order_by("chain", "seq"))


def assert_chains_intact() -> dict[str, list[AuditEvent]]:
    chains = defaultdict(list)
    for event in events():
        chains[event.chain].append(event)
    for chain, links in chains.items():
        assert [e.seq for e in links] == list(range(1, len(links) + 1)), chain
        previous = GENESIS
        for event in links:
            assert event.prev_hash == previous
            assert event.compute_hash() == event.hash  # recomputed from the stored row
            previous = event.hash
        head = AuditChainHead.objects.get(chain=chain)
        assert (head.seq, head.hash) == (links[-1].seq, links[-1].hash)
    return chains


def test_it_chains_events_per_tenant(acme, bravo):
    with tenant_scope(acme.tenant):
        record("test.first", actor="test", data={"n": 1})
        record("test.second", acme.number, actor="test")
    record("test.deployment", actor=None)
    record("test.deployment", actor=None)

    chains = assert_chains_intact()

    assert set(chains) == {str(acme.tenant.pk), str(bravo.tenant.pk), DEPLOYMENT_CHAIN}
    assert all(e.tenant_id == acme.tenant.pk for e in chains[str(acme.tenant.pk)])
    assert all(e.tenant_id is None for e in chains[DEPLOYMENT_CHAIN])
    assert [e.action for e in chains[DEPLOYMENT_CHAIN]][-2:] == ["test.deployment"] * 2
    assert chains[str(acme.tenant.pk)][-1].object_id == str(acme.number.pk)
    assert chains[str(acme.tenant.pk)][-1].object_type == "tenants.WhatsAppNumber"


def test_it_hashes_every_recorded_field(acme):
    event = record("test.hashed", acme.tenant, actor="test", data={"n": 1})
    original = event.hash
    for name, value in [
        ("data", {"n": 2}),
        ("action", "test.other"),
        ("seq", event.seq + 1),
        ("prev_hash", "f" * 64),
        ("actor_id", "someone"),
        ("object_id", "another"),
        ("chain", DEPLOYMENT_CHAIN),
    ]:
        kept = getattr(event, name)
        setattr(event, name, value)
        assert event.compute_hash() != original, name
        setattr(event, name, kept)
    assert event.compute_hash() == original


def test_it_masks_secrets_in_nested_data():
    data = {
        "access_token": "EAA-canary",
        "App_Secret": "s",
        "password": "p",
        "nested": {"verify_token": "v", "list": [{"api_key": "k"}, Secret("hidden"), "plain"]},
        "hub_signature": "sha256=abc",
        "Authorization": "Bearer x",
        "fields": ["access_token"],  # names of fields are not secrets
        "empty_token": "",
        "count": 3,
        "when": object(),
    }
    masked = mask_secrets(data)
    assert masked["access_token"] == MASK
    assert masked["App_Secret"] == MASK
    assert masked["password"] == MASK
    assert masked["nested"]["verify_token"] == MASK
    assert masked["nested"]["list"][0] == {"api_key": MASK}
    assert masked["nested"]["list"][1] == MASK
    assert masked["nested"]["list"][2] == "plain"
    assert masked["hub_signature"] == MASK
    assert masked["Authorization"] == MASK
    assert masked["fields"] == ["access_token"]
    assert masked["empty_token"] == ""
    assert masked["count"] == 3
    assert isinstance(masked["when"], str)
    text = json.dumps(masked)
    for secret in ("EAA-canary", "hidden", "Bearer x", "sha256=abc"):
        assert secret not in text
    assert data["access_token"] == "EAA-canary"  # the caller's dict is left alone


def test_it_stores_masked_data(acme):
    event = record(
        "test.masked",
        actor="test",
        tenant=acme.tenant,
        data={"token": Secret("EAA-stored-canary"), "note": "ok"},
    )
    with unscoped("test"):
        stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == {"token": MASK, "note": "ok"}
    assert stored.compute_hash() == stored.hash


def test_it_refuses_to_change_or_delete_an_event(acme):
    event = record("test.immutable", actor="test", tenant=acme.tenant)
    event.action = "test.rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with unscoped("test"):
        with pytest.raises(AppendOnlyError):
            AuditEvent.objects.filter(pk=event.pk).update(action="test.rewritten")
        with pytest.raises(AppendOnlyError):
            AuditEvent.objects.filter(pk=event.pk).delete()
        with pytest.raises(AppendOnlyError):
            AuditEvent.objects.all().delete()
        assert AuditEvent.objects.get(pk=event.pk).action == "test.immutable"
    assert_chains_intact()


def test_it_scopes_audit_events_to_their_tenant(acme, bravo):
    with pytest.raises(ScopeError):
        AuditEvent.objects.count()
    with tenant_scope(acme.tenant):
        assert AuditEvent.objects.exists()
        assert set(AuditEvent.objects.values_list("tenant_id", flat=True)) == {acme.tenant.pk}


def test_it_rolls_back_an_event_with_its_transaction(acme):
    before = len(events())
    with pytest.raises(RuntimeError), transaction.atomic():
        record("test.rolled_back", actor="test", tenant=acme.tenant)
        raise RuntimeError("the change failed")
    assert len(events()) == before
    assert_chains_intact()


def test_it_records_the_actor(acme, operator):
    assert record("t.a", actor=acme.owner).actor_type == "user"
    staff = record("t.b", actor=operator)
    assert (staff.actor_type, staff.actor_id) == ("operator", str(operator.pk))
    command = record("t.c", actor="command:create_tenant")
    assert (command.actor_type, command.actor_id) == ("command", "create_tenant")
    assert record("t.d", actor=None).actor_type == "system"


def test_it_writes_one_event_per_action_and_never_a_token(db):
    tenant = create_tenant("globex", "Globex", actor="test")
    add_member(
        tenant,
        "gina@globex.test",
        role=Role.OWNER,
        password="correct-horse-battery-staple-42",
        actor="test",
    )
    credentials = NumberCredentials(
        access_token="EAA-audit-canary-token-0001",
        app_secret="audit-canary-app-secret",
        verify_token="audit-canary-verify-token",
    )
    number = connect_number(
        tenant,
        phone_number_id="100000000042",
        waba_id="200000000042",
        display_phone_number="+1 555 0042",
        app_id="300000000042",
        credentials=credentials,
        actor="test",
    )

    actions = [e.action for e in events()]
    for action in ("tenant.created", "member.created", "number.connected"):
        assert actions.count(action) == 1, action
    by_action = {e.action: e for e in events()}
    assert by_action["tenant.created"].object_id == str(tenant.pk)
    assert by_action["tenant.created"].data == {"slug": "globex"}
    assert by_action["member.created"].data["role"] == Role.OWNER
    assert by_action["number.connected"].object_id == str(number.pk)
    assert by_action["number.connected"].data["phone_number_id"] == "100000000042"
    assert {e.tenant_id for e in events()} == {tenant.pk}

    with unscoped("test"):
        every_row = json.dumps(list(AuditEvent.objects.values()), default=str)
    for secret in (
        credentials.access_token,
        credentials.app_secret,
        credentials.verify_token,
        "correct-horse-battery-staple-42",
    ):
        assert secret not in every_row
    assert_chains_intact()
