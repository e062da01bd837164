"""Append-only in the database: on PostgreSQL triggers refuse UPDATE and DELETE of audit rows
even through raw SQL, and `erase_audit_chain` is the one way a chain goes (on both databases)."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from apps.audit.checkpoints import write_checkpoint
from apps.audit.models import DEPLOYMENT_CHAIN, AuditChainHead
from apps.audit.services import erase_audit_chain, record
from apps.audit.verification import verify_all

from .tampering import chain_of, stored

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the append-only triggers exist on PostgreSQL only; SQLite relies on the model guard",
)


def refused(sql: str, params: list) -> None:
    with (
        pytest.raises(DatabaseError, match="audit"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params)


@postgresql_only
def test_it_refuses_raw_updates_and_deletes_of_events(acme):
    chain = chain_of(acme)

    refused("UPDATE audit_auditevent SET action = 'x' WHERE chain = %s", [chain])
    refused("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 1", [chain])

    assert stored(chain)[0].action == "tenant.created"


@postgresql_only
def test_it_refuses_any_head_change_but_the_next_recorded_event(acme):
    chain = chain_of(acme)
    head = AuditChainHead.objects.get(chain=chain)

    refused("UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", ["f" * 64, chain])
    refused(
        "UPDATE audit_auditchainhead SET seq = seq + 1, hash = %s WHERE chain = %s",
        ["f" * 64, chain],
    )
    refused("DELETE FROM audit_auditchainhead WHERE chain = %s", [chain])

    event = record("test.still_recording", acme.tenant, actor="test")
    head.refresh_from_db()
    assert (head.seq, head.hash) == (event.seq, event.hash)


@postgresql_only
def test_the_erase_setting_only_opens_its_own_chain(acme, bravo):
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('klaros.audit_erase_chain', %s, true)", [chain_of(bravo)])
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s", [chain_of(acme)])

    assert stored(chain_of(acme))


def test_it_erases_a_tenant_chain_and_records_it(acme, bravo, operator):
    chain = chain_of(acme)
    head = AuditChainHead.objects.get(chain=chain)
    count = len(stored(chain))
    bravo_before = [e.hash for e in stored(chain_of(bravo))]
    write_checkpoint()  # still names the acme chain

    event = erase_audit_chain(acme.tenant.pk, actor=operator)

    assert stored(chain) == []
    assert not AuditChainHead.objects.filter(chain=chain).exists()
    assert event.chain == DEPLOYMENT_CHAIN and event.action == "audit.chain_erased"
    assert event.data == {
        "chain": chain,
        "events": count,
        "head_seq": head.seq,
        "head_hash": head.hash,
    }
    assert event.actor_type == "operator"
    assert [e.hash for e in stored(chain_of(bravo))] == bravo_before
    report = verify_all()
    assert report.ok, [(r.label, r.problem) for r in report.chains]
    assert chain not in {r.chain for r in report.chains}


def test_it_leaves_nothing_open_after_erasing(acme, bravo):
    with transaction.atomic():
        erase_audit_chain(acme.tenant, actor="command:erase_tenant")
        if connection.vendor == "postgresql":
            refused("DELETE FROM audit_auditevent WHERE chain = %s", [chain_of(bravo)])
    assert stored(chain_of(bravo))


def test_it_never_erases_the_deployment_chain(db):
    record("test.deployment", actor=None)

    with pytest.raises(ValueError, match="deployment chain"):
        erase_audit_chain(DEPLOYMENT_CHAIN, actor="test")

    assert stored(DEPLOYMENT_CHAIN)


@postgresql_only
def test_a_batch_moves_the_head_over_its_recorded_events_but_never_past_a_gap(acme):
    from apps.audit.services import record_many

    chain = chain_of(acme)
    written = record_many([("test.batched", acme.tenant, {"n": n}) for n in range(3)], actor="test")
    head = AuditChainHead.objects.get(chain=chain)
    assert (head.seq, head.hash) == (written[-1].seq, written[-1].hash)
    assert verify_all(tenant=acme.tenant).ok
    # Two steps ahead with the right hash of a recorded event is still refused when the step
    # between is missing: there is no such event here, so any jump past the head is refused.
    refused(
        "UPDATE audit_auditchainhead SET seq = seq + 2, hash = %s WHERE chain = %s",
        [written[-1].hash, chain],
    )
