"""The audit log: append-only and hash-chained per tenant (plus one chain for deployment-level
events such as operator actions and failed logins)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from django.db import models

from apps.tenants.scoping import TenantScopedManager

DEPLOYMENT_CHAIN = "deployment"
GENESIS_HASH = "0" * 64  # what the first event of every chain links to


class AppendOnlyError(RuntimeError):
    pass


# The field names that enter an event's hash, in the order verification reads them back.
HASHED_FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "created_at",
    "action",
    "actor_type",
    "actor_id",
    "object_type",
    "object_id",
    "data",
)


def canonical_event(
    *,
    chain: str,
    seq: int,
    prev_hash: str,
    created_at: datetime,
    action: str,
    actor_type: str,
    actor_id: str,
    object_type: str,
    object_id: str,
    data: Any,
) -> bytes:
    """The bytes an event's hash is taken over. One definition for writing (`record`) and for
    verifying rows read back (which never build model instances, to stay fast at millions of
    rows). Sorted keys make it independent of how the database returns JSON objects."""
    return json.dumps(
        {
            "chain": chain,
            "seq": seq,
            "prev_hash": prev_hash,
            "created_at": created_at.isoformat(),
            "action": action,
            "actor_type": actor_type,
            "actor_id": actor_id,
            "object_type": object_type,
            "object_id": object_id,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("audit events are append-only")

    def delete(self):
        raise AppendOnlyError("audit events are append-only")


class AuditEventManager(TenantScopedManager.from_queryset(AuditQuerySet)):
    pass


class AuditEvent(models.Model):
    """One thing that happened. No personal data beyond ids, so erasure never breaks the chain;
    no secrets (`record` masks them). Actors and objects are plain values, not foreign keys,
    so deleting a user or an object never rewrites history."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,  # the log outlives an erased tenant
        related_name="+",
    )
    chain = models.CharField(max_length=64, editable=False)
    seq = models.PositiveBigIntegerField(editable=False)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(editable=False)
    action = models.CharField(max_length=100, db_index=True)
    actor_type = models.CharField(max_length=20)
    actor_id = models.CharField(max_length=64, blank=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)

    objects = AuditEventManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="audit_unique_chain_seq")
        ]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} #{self.seq}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit events are append-only")

    def canonical(self) -> bytes:
        return canonical_event(
            chain=self.chain,
            seq=self.seq,
            prev_hash=self.prev_hash,
            created_at=self.created_at,
            action=self.action,
            actor_type=self.actor_type,
            actor_id=self.actor_id,
            object_type=self.object_type,
            object_id=self.object_id,
            data=self.data,
        )

    def compute_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


class AuditChainHead(models.Model):
    """The latest link of each chain; locked while appending so sequence numbers never fork."""

    chain = models.CharField(max_length=64, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"{self.chain} @ {self.seq}"
