"""The consent ledger: append-only opt-in / opt-out events with their evidence.

A contact's current consent is derived from the ledger (the latest event per scope wins); no
event is ever updated or deleted through the application.
"""

from __future__ import annotations

import uuid

from django.db import models

from apps.tenants.scoping import TenantOwnedModel, TenantScopedManager


class AppendOnlyError(RuntimeError):
    pass


class ConsentKind(models.TextChoices):
    OPT_IN = "opt_in", "Opt-in"
    OPT_OUT = "opt_out", "Opt-out"


class ConsentScope(models.TextChoices):
    MARKETING = "marketing", "Marketing messages"
    ALL = "all", "All messages"


class ConsentSource(models.TextChoices):
    KEYWORD = "keyword", "Keyword sent by the customer"
    META_PREFERENCE = "meta_preference", "Meta marketing preference (Stop promotions)"
    META_ERROR = "meta_error", "Meta refused a marketing send (131050)"
    AGENT = "agent", "Recorded by an agent"
    IMPORT = "import", "Imported"
    FORM = "form", "Signed up through a form"


class ConsentQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("the consent ledger is append-only")

    def delete(self):
        raise AppendOnlyError("the consent ledger is append-only")


class ConsentEventManager(TenantScopedManager.from_queryset(ConsentQuerySet)):
    pass


class ConsentEvent(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    contact = models.ForeignKey(
        "conversations.Contact", on_delete=models.CASCADE, related_name="consent_events"
    )
    kind = models.CharField(max_length=10, choices=ConsentKind.choices)
    scope = models.CharField(max_length=10, choices=ConsentScope.choices)
    source = models.CharField(max_length=20, choices=ConsentSource.choices)
    # Evidence: what the customer sent (message id and text), the note an agent gave, Meta's
    # detail text, the form or import reference.
    evidence = models.JSONField(default=dict, blank=True)
    actor_type = models.CharField(max_length=20)
    actor_id = models.CharField(max_length=64, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Idempotency for events derived from Meta (a message's wamid, a preference timestamp).
    dedupe_key = models.CharField(max_length=200, blank=True)

    objects = ConsentEventManager()

    class Meta:
        ordering = ["-occurred_at", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "dedupe_key"],
                condition=~models.Q(dedupe_key=""),
                name="consent_event_unique_dedupe",
            )
        ]
        indexes = [
            models.Index(fields=["contact", "scope", "-occurred_at"], name="consent_idx"),
            # The contact-book export reads a chunk's events by a range of contact ids.
            models.Index(fields=["tenant", "contact"], name="consent_contact_book_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.scope}) via {self.source}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("the consent ledger is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("the consent ledger is append-only")


class KeywordRule(TenantOwnedModel):
    """A tenant's own opt-out / opt-in word (for example PARAR, DETENER, ABMELDEN)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    word = models.CharField(max_length=50)
    kind = models.CharField(max_length=10, choices=ConsentKind.choices)
    language = models.CharField(max_length=10, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "word"], name="keyword_rule_unique_word")
        ]
        ordering = ["word"]

    def __str__(self) -> str:
        return f"{self.word} → {self.get_kind_display()}"
