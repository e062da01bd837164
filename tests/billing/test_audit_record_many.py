"""record_many continues the chain record() writes: consecutive seqs, each hash recomputed from
the stored row, prev_hash linking every event to the one before."""

from __future__ import annotations

from itertools import pairwise

from apps.audit.models import AuditChainHead, AuditEvent
from apps.audit.services import record, record_many
from apps.tenants.scoping import tenant_scope


def test_it_appends_a_batch_to_the_tenant_chain_between_single_records(acme):
    with tenant_scope(acme.tenant):
        record("test.before", acme.number, actor="test")
        record_many(
            [("test.batch", acme.number, {"n": n}) for n in range(3)],
            actor="meta",
            tenant=acme.tenant.pk,
        )
        record("test.after", acme.number, actor="test")
        events = list(AuditEvent.objects.filter(chain=str(acme.tenant.pk)).order_by("seq"))
    tail = events[-5:]
    assert [e.action for e in tail] == ["test.before", *["test.batch"] * 3, "test.after"]
    assert [e.seq for e in tail] == list(range(tail[0].seq, tail[0].seq + 5))
    for before, event in pairwise(events):
        assert event.prev_hash == before.hash
    for event in events:
        assert event.compute_hash() == event.hash
    assert [e.data for e in tail[1:4]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    head = AuditChainHead.objects.get(chain=str(acme.tenant.pk))
    assert (head.seq, head.hash) == (tail[-1].seq, tail[-1].hash)


def test_an_empty_batch_writes_nothing(acme):
    assert record_many([], actor="meta") == []
