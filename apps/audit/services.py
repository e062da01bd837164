"""`record()`: the one way any app writes to the audit log."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from apps.tenants.crypto import Secret
from apps.tenants.scoping import get_scope

from .models import DEPLOYMENT_CHAIN, AuditChainHead, AuditEvent

# Keys whose values are secrets wherever they appear in audit data.
SECRET_KEY_PATTERN = re.compile(
    r"token|secret|password|passwd|api[_-]?key|authorization|signature", re.I
)
MASK = "[masked]"

Actor = Any  # a User, None (the system), or a short string such as "meta" or "command:<name>"


def mask_secrets(value: Any, key: str = "") -> Any:
    """Copy `value` with every secret replaced by a mask: values under secret-looking keys and any
    `Secret` object. Non-JSON types become strings."""
    if key and SECRET_KEY_PATTERN.search(key):
        return MASK if value not in (None, "") else value
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, dict):
        return {str(k): mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [mask_secrets(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def actor_fields(actor: Actor) -> tuple[str, str]:
    """(actor_type, actor_id) as audit and consent rows store them: a user or operator by
    primary key, `"kind:id"` strings split, None as the system."""
    if actor is None:
        return "system", ""
    if isinstance(actor, str):
        kind, _, ident = actor.partition(":")
        return kind[:20], ident[:64]
    if getattr(actor, "is_authenticated", False):
        return ("operator" if getattr(actor, "is_staff", False) else "user"), str(actor.pk)
    return "anonymous", ""


def _tenant_id_for(obj: Model | None, tenant: Any) -> uuid.UUID | None:
    if tenant is not None:
        return getattr(tenant, "pk", tenant)
    if obj is not None:
        if obj._meta.label == "tenants.Tenant":
            return obj.pk
        if getattr(obj, "tenant_id", None):
            return obj.tenant_id
    scope = get_scope()
    if scope is not None and scope.tenant_id is not None:
        return scope.tenant_id
    return None


def record(
    action: str,
    obj: Model | None = None,
    *,
    actor: Actor,
    tenant: Any = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an audit event to its tenant's chain (or the deployment chain) and return it.

    `action` is a dotted code ("number.connected"); `data` must not hold personal data beyond
    ids, and secrets in it are masked. Runs in the caller's transaction when there is one, so
    the event commits or rolls back with the change it describes.
    """
    tenant_id = _tenant_id_for(obj, tenant)
    chain = str(tenant_id) if tenant_id else DEPLOYMENT_CHAIN
    actor_type, actor_id = actor_fields(actor)
    with transaction.atomic():
        # Lock the chain head so concurrent writers take consecutive sequence numbers.
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(chain=chain)
        event = AuditEvent(
            tenant_id=tenant_id,
            chain=chain,
            seq=head.seq + 1,
            prev_hash=head.hash,
            created_at=timezone.now(),
            action=action,
            actor_type=actor_type,
            actor_id=actor_id,
            object_type=obj._meta.label if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            data=mask_secrets(data or {}),
        )
        event.hash = event.compute_hash()
        event.save()
        head.seq = event.seq
        head.hash = event.hash
        head.save(update_fields=["seq", "hash"])
    return event


def erase_audit_chain(tenant_id: Any, *, actor: Actor) -> AuditEvent:
    """Delete a tenant's whole audit chain and its head: the one sanctioned exception to
    append-only, for tenant erasure. Returns the `audit.chain_erased` event it records first on
    the deployment chain (erased chain, event count, head seq and hash), so the erasure itself
    is chained and verification knows the chain is gone on purpose.

    On PostgreSQL the append-only triggers allow DELETE only of rows whose chain equals the
    transaction-local `klaros.audit_erase_chain` setting, which this function sets and clears
    inside its own transaction. The model-level guard is bypassed here, and only here.
    """
    # Imported here so this service is purely appended to the module.
    from django.db import connection
    from django.db.models import QuerySet

    from apps.tenants.scoping import unscoped

    from .models import GENESIS_HASH

    chain = str(getattr(tenant_id, "pk", tenant_id))
    if chain == DEPLOYMENT_CHAIN:
        raise ValueError("the deployment chain is never erased")
    # The deployment chain and every tenant's rows: this is an operator-level action.
    with unscoped("erase a tenant's audit chain"), transaction.atomic():
        head = AuditChainHead.objects.select_for_update().filter(chain=chain).first()
        events = AuditEvent.objects.filter(chain=chain)
        count = events.count()
        event = record(
            "audit.chain_erased",
            actor=actor,
            data={
                "chain": chain,
                "events": count,
                "head_seq": head.seq if head else 0,
                "head_hash": head.hash if head else GENESIS_HASH,
            },
        )
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('klaros.audit_erase_chain', %s, true)", [chain])
            # Deliberately past AuditQuerySet.delete(), which refuses every delete.
            QuerySet.delete(events)
            AuditChainHead.objects.filter(chain=chain).delete()
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('klaros.audit_erase_chain', '', true)")
    return event


def record_many(
    events: list[tuple[str, Model | None, dict[str, Any] | None]],
    *,
    actor: Actor,
    tenant: Any = None,
) -> list[AuditEvent]:
    """Append several events, `(action, obj, data)` each, as `record()` would one by one, with
    one head lock and one INSERT per chain: the drain records a batch's thousands of charges
    without a lock round trip per event. Same rules as `record()` (no personal data, secrets
    masked, runs in the caller's transaction); events keep their order within each chain."""
    if not events:
        return []
    actor_type, actor_id = actor_fields(actor)
    by_chain: dict[str, list[tuple[uuid.UUID | None, str, Model | None, dict]]] = {}
    for action, obj, data in events:
        tenant_id = _tenant_id_for(obj, tenant)
        chain = str(tenant_id) if tenant_id else DEPLOYMENT_CHAIN
        by_chain.setdefault(chain, []).append((tenant_id, action, obj, data or {}))
    written: list[AuditEvent] = []
    now = timezone.now()
    with transaction.atomic():
        # Heads are locked in one order, so two writers of the same chains cannot deadlock.
        for chain in sorted(by_chain):
            head, _ = AuditChainHead.objects.select_for_update().get_or_create(chain=chain)
            seq, prev = head.seq, head.hash
            rows = []
            for tenant_id, action, obj, data in by_chain[chain]:
                seq += 1
                event = AuditEvent(
                    tenant_id=tenant_id,
                    chain=chain,
                    seq=seq,
                    prev_hash=prev,
                    created_at=now,
                    action=action,
                    actor_type=actor_type,
                    actor_id=actor_id,
                    object_type=obj._meta.label if obj is not None else "",
                    object_id=str(obj.pk) if obj is not None else "",
                    data=mask_secrets(data),
                )
                event.hash = prev = event.compute_hash()
                rows.append(event)
            _insert_events(rows)
            head.seq, head.hash = seq, prev
            head.save(update_fields=["seq", "hash"])
            written.extend(rows)
    return written


_EVENT_COLUMNS = (
    ("tenant_id", "uuid"),
    ("chain", "varchar"),
    ("seq", "bigint"),
    ("prev_hash", "varchar"),
    ("hash", "varchar"),
    ("created_at", "timestamptz"),
    ("action", "varchar"),
    ("actor_type", "varchar"),
    ("actor_id", "varchar"),
    ("object_type", "varchar"),
    ("object_id", "varchar"),
    ("data", "jsonb"),
)


def _insert_events(rows: list[AuditEvent]) -> None:
    """INSERT events as they are (hashes computed). On PostgreSQL the rows travel as one JSON
    parameter per 1,000: `bulk_create` spent 0.12 ms per event building parameters, most of
    what recording a drain batch's charges cost. Elsewhere `bulk_create`, through the base
    manager as `record()`'s save (the deployment chain has no tenant scope)."""
    if connection.vendor != "postgresql":
        AuditEvent._base_manager.bulk_create(rows, batch_size=1000)
        return
    quote = connection.ops.quote_name
    names = [name for name, _ in _EVENT_COLUMNS]
    # Only the column names and types listed above are interpolated.
    sql = (
        f"INSERT INTO {quote(AuditEvent._meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(n) for n in names)}) "
        f"SELECT {', '.join(f'r.{quote(n)}' for n in names)} "
        "FROM jsonb_to_recordset(%s::jsonb) AS r("
        + ", ".join(f"{quote(n)} {kind}" for n, kind in _EVENT_COLUMNS)
        + ")"
    )
    for start in range(0, len(rows), 1000):
        document = [
            {
                "tenant_id": str(e.tenant_id) if e.tenant_id else None,
                "chain": e.chain,
                "seq": e.seq,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
                "created_at": e.created_at.isoformat(),
                "action": e.action,
                "actor_type": e.actor_type,
                "actor_id": e.actor_id,
                "object_type": e.object_type,
                "object_id": e.object_id,
                "data": e.data,
            }
            for e in rows[start : start + 1000]
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, [json.dumps(document, separators=(",", ":"))])
