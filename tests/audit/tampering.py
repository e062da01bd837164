"""Helpers that tamper with the audit tables the way a database superuser would: raw SQL, with
the append-only triggers switched off on PostgreSQL (ALTER TABLE needs the table's owner or a
superuser, which the test database user is; that is exactly the threat)."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

from django.db import connection

from apps.audit.models import AuditEvent, canonical_event
from apps.tenants.scoping import unscoped

TABLES = ("audit_auditevent", "audit_auditchainhead")


@contextmanager
def superuser_cursor():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for table in TABLES:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield cursor
        if connection.vendor == "postgresql":
            for table in TABLES:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def chain_of(world) -> str:
    return str(world.tenant.pk)


def stored(chain: str) -> list[AuditEvent]:
    with unscoped("test reads the chain"):
        return list(AuditEvent.objects.filter(chain=chain).order_by("seq"))


def hash_of(event: AuditEvent, **changes) -> str:
    fields = {
        "chain": event.chain,
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "created_at": event.created_at,
        "action": event.action,
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "data": event.data,
    }
    fields.update(changes)
    return hashlib.sha256(canonical_event(**fields)).hexdigest()


def json_param() -> str:
    return "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"


def rewrite_chain_from(chain: str, seq: int, data: dict) -> None:
    """Replace event `seq`'s data and re-hash it and every later event, head included: a
    consistent forgery that only a signed checkpoint can expose."""
    events = stored(chain)
    previous = events[seq - 2].hash if seq > 1 else "0" * 64
    with superuser_cursor() as cursor:
        for event in events[seq - 1 :]:
            new_data = data if event.seq == seq else event.data
            new_hash = hash_of(event, prev_hash=previous, data=new_data)
            cursor.execute(
                f"UPDATE audit_auditevent SET data = {json_param()}, prev_hash = %s, hash = %s "  # noqa: S608 - a fixed cast, no input
                "WHERE chain = %s AND seq = %s",
                [json.dumps(new_data), previous, new_hash, chain, event.seq],
            )
            previous = new_hash
        cursor.execute(
            "UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", [previous, chain]
        )


def set_event_data(chain: str, seq: int, data: dict) -> None:
    """Edit one event's data in place, as an UPDATE by hand would."""
    with superuser_cursor() as cursor:
        cursor.execute(
            f"UPDATE audit_auditevent SET data = {json_param()} "  # noqa: S608 - a fixed cast
            "WHERE chain = %s AND seq = %s",
            [json.dumps(data), chain, seq],
        )
