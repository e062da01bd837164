"""`apps.audit.verification`: every way of tampering with a chain by SQL is found, at the right
sequence number, and the intact chains beside it still verify."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.checkpoints import write_checkpoint
from apps.audit.models import DEPLOYMENT_CHAIN, AuditChainHead
from apps.audit.services import record
from apps.audit.verification import (
    CHECKPOINT_MISMATCH,
    HASH_MISMATCH,
    HEAD_MISMATCH,
    MISSING_SEQ,
    PREV_HASH_MISMATCH,
    verify_all,
    verify_chain,
)

from .tampering import (
    chain_of,
    hash_of,
    rewrite_chain_from,
    set_event_data,
    stored,
    superuser_cursor,
)

EXTRA_EVENTS = 5


@pytest.fixture
def world(acme, bravo):
    """Acme's chain with a few more events than its setup wrote."""
    for n in range(EXTRA_EVENTS):
        record("test.event", acme.tenant, actor="test", data={"n": n, "note": "ünïcode"})
    record("test.deployment", actor=None)
    return acme, bravo


def acme_report(report, acme):
    return next(r for r in report.chains if r.chain == chain_of(acme))


def assert_only_acme_broken(report, acme):
    assert [r.label for r in report.chains if not r.ok] == ["acme"]
    assert not report.ok


def test_it_verifies_intact_chains(world):
    report = verify_all()

    assert report.ok
    assert [r.label for r in report.chains] == [DEPLOYMENT_CHAIN, "acme", "bravo"]
    for chain_report in report.chains:
        events = stored(chain_report.chain)
        head = AuditChainHead.objects.get(chain=chain_report.chain)
        assert chain_report.events == len(events) == head.seq
        assert chain_report.head_hash == head.hash == events[-1].hash


def test_it_reports_an_edited_event_at_its_seq(world):
    acme, _ = world
    set_event_data(chain_of(acme), 3, {"n": 99})

    report = verify_all()

    broken = acme_report(report, acme)
    assert (broken.problem.seq, broken.problem.kind) == (3, HASH_MISMATCH)
    assert broken.events == 2
    assert_only_acme_broken(report, acme)


def test_it_reports_a_deleted_event_as_a_missing_seq(world):
    acme, _ = world
    with superuser_cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE chain = %s AND seq = 4", [chain_of(acme)]
        )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (4, MISSING_SEQ)


def test_it_reports_a_deleted_last_event_as_a_head_mismatch(world):
    acme, _ = world
    last = len(stored(chain_of(acme)))
    with superuser_cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain_of(acme), last]
        )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (last, HEAD_MISMATCH)


def test_it_reports_an_inserted_event(world):
    """A forged event slipped in at seq 3, itself correctly linked and hashed, with the later
    events renumbered: the event that used to be seq 3 no longer hashes with its new seq."""
    acme, _ = world
    chain = chain_of(acme)
    second = stored(chain)[1]
    forged_hash = hash_of(second, seq=3, prev_hash=second.hash, action="forged.event")
    with superuser_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET seq = seq + 1000 WHERE chain = %s AND seq > 2", [chain]
        )
        cursor.execute(
            "UPDATE audit_auditevent SET seq = seq - 999 WHERE chain = %s AND seq > 1000", [chain]
        )
        cursor.execute(
            "INSERT INTO audit_auditevent (tenant_id, chain, seq, prev_hash, hash, created_at, "
            "action, actor_type, actor_id, object_type, object_id, data) "
            "SELECT tenant_id, chain, 3, %s, %s, created_at, 'forged.event', actor_type, "
            "actor_id, object_type, object_id, data FROM audit_auditevent "
            "WHERE chain = %s AND seq = 2",
            [second.hash, forged_hash, chain],
        )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (4, HASH_MISMATCH)
    assert broken.events == 3  # the forgery itself is a well-formed link


def test_it_reports_an_appended_event_that_does_not_link(world):
    acme, _ = world
    chain = chain_of(acme)
    last = stored(chain)[-1]
    # Hashed correctly but linked to a made-up predecessor, and the head moved along with it.
    forged_hash = hash_of(last, seq=last.seq + 1, prev_hash="a" * 64, action="forged.event")
    with superuser_cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (tenant_id, chain, seq, prev_hash, hash, created_at, "
            "action, actor_type, actor_id, object_type, object_id, data) "
            "SELECT tenant_id, chain, seq + 1, %s, %s, created_at, 'forged.event', actor_type, "
            "actor_id, object_type, object_id, data FROM audit_auditevent "
            "WHERE chain = %s AND seq = %s",
            ["a" * 64, forged_hash, chain, last.seq],
        )
        cursor.execute(
            "UPDATE audit_auditchainhead SET seq = seq + 1, hash = %s WHERE chain = %s",
            [forged_hash, chain],
        )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (last.seq + 1, PREV_HASH_MISMATCH)


def test_it_reports_reordered_events(world):
    acme, _ = world
    chain = chain_of(acme)
    with superuser_cursor() as cursor:
        for old, new in ((2, 1000), (3, 2), (1000, 3)):
            cursor.execute(
                "UPDATE audit_auditevent SET seq = %s WHERE chain = %s AND seq = %s",
                [new, chain, old],
            )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (2, HASH_MISMATCH)


def test_it_reports_a_head_that_is_not_the_last_event(world):
    acme, _ = world
    last = len(stored(chain_of(acme)))
    with superuser_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s",
            ["f" * 64, chain_of(acme)],
        )

    broken = acme_report(verify_all(), acme)

    assert (broken.problem.seq, broken.problem.kind) == (last, HEAD_MISMATCH)
    assert broken.events == last  # every event itself verified


def test_it_reports_a_missing_head(world):
    acme, _ = world
    with superuser_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditchainhead WHERE chain = %s", [chain_of(acme)])

    broken = acme_report(verify_all(), acme)

    assert broken.problem.kind == HEAD_MISMATCH


def test_it_reports_a_rewritten_chain_only_through_a_checkpoint(world):
    """A superuser rewrites event 2 and re-hashes everything after it, head included. The
    chain is self-consistent again; only the signed checkpoint taken before shows it."""
    acme, _ = world
    chain = chain_of(acme)
    checkpointed = len(stored(chain))
    write_checkpoint()
    record("test.after_checkpoint", acme.tenant, actor="test")

    rewrite_chain_from(chain, 2, {"rewritten": True})

    assert verify_chain(chain).ok  # without the checkpoint, nothing to see
    broken = acme_report(verify_all(), acme)
    assert (broken.problem.seq, broken.problem.kind) == (checkpointed, CHECKPOINT_MISMATCH)
    assert_only_acme_broken(verify_all(), acme)


def test_it_reports_a_chain_shortened_below_a_checkpoint(world):
    acme, _ = world
    chain = chain_of(acme)
    events = stored(chain)
    write_checkpoint()
    keep = events[-3]
    with superuser_cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE chain = %s AND seq > %s", [chain, keep.seq]
        )
        cursor.execute(
            "UPDATE audit_auditchainhead SET seq = %s, hash = %s WHERE chain = %s",
            [keep.seq, keep.hash, chain],
        )

    assert verify_chain(chain).ok
    broken = acme_report(verify_all(), acme)
    assert (broken.problem.seq, broken.problem.kind) == (len(events), CHECKPOINT_MISMATCH)
    assert f"ends at seq {keep.seq}" in broken.problem.detail


def test_it_reports_a_checkpointed_chain_that_vanished(world):
    acme, _ = world
    chain = chain_of(acme)
    write_checkpoint()
    with superuser_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s", [chain])
        cursor.execute("DELETE FROM audit_auditchainhead WHERE chain = %s", [chain])

    broken = acme_report(verify_all(), acme)

    assert broken.problem.kind == CHECKPOINT_MISMATCH
    assert broken.events == 0


def test_it_verifies_only_the_given_tenant(world):
    acme, bravo = world
    with superuser_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s",
            ["f" * 64, chain_of(acme)],
        )

    report = verify_all(tenant=bravo.tenant)

    assert [r.label for r in report.chains] == ["bravo"]
    assert report.ok


def test_it_reads_a_chain_in_pages_of_the_chunk_size(world):
    acme, _ = world
    chain = chain_of(acme)
    total = len(stored(chain))
    seen = []

    with CaptureQueriesContext(connection) as queries:
        report = verify_chain(chain, chunk_size=2, progress=lambda c, done: seen.append(done))

    assert report.ok and report.events == total
    pages = [q["sql"] for q in queries.captured_queries if "audit_auditevent" in q["sql"]]
    assert len(pages) == total // 2 + 1  # full pages, then the short (or empty) last one
    assert all("LIMIT 2" in sql for sql in pages)
    assert seen == [min(n, total) for n in range(2, total + 1, 2)] + ([total] * (total % 2))


def test_it_reads_no_more_queries_than_pages(world, django_assert_max_num_queries):
    acme, _ = world
    chain = chain_of(acme)
    total = len(stored(chain))

    with django_assert_max_num_queries(total // 3 + 2):  # pages of 3, plus the head
        assert verify_chain(chain, chunk_size=3).events == total


def test_it_hashes_rows_read_back_exactly_as_recorded(acme):
    """The hash is recomputed from values as the database returns them: JSON key order,
    unicode, floats, big integers, nesting and microseconds must all survive the round trip."""
    data = {
        "z": 1,
        "a": [1, 2.5, -0.125, {"nested": ["x", None, True]}],
        "big": 2**62,
        "text": 'naïve 🙂 "quoted" \\ back',
        "empty": {},
    }
    event = record("test.round_trip", acme.tenant, actor="test", data=data)

    assert verify_chain(chain_of(acme)).ok
    assert stored(chain_of(acme))[-1].hash == event.hash
