"""Contacts, conversations, messages and the webhook journal.

Idempotency lives in the database: a message is unique per (tenant, wamid), a status event per
(tenant, wamid, status), and statuses only move forward through conditional updates, so replaying
the journal, duplicate deliveries and concurrent duplicates change nothing.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from apps.tenants.scoping import TenantOwnedModel


class Contact(TenantOwnedModel):
    """A customer of one tenant. Identified by `wa_id` (phone digits) and/or the business-scoped
    `user_id` Meta introduced in 2026: the phone number may be missing from newer webhooks."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    wa_id = models.CharField("WhatsApp id", max_length=32, blank=True)
    user_id = models.CharField("business-scoped user id", max_length=100, blank=True)
    profile_name = models.CharField(max_length=256, blank=True)
    username = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "wa_id"], condition=~Q(wa_id=""), name="contact_unique_wa_id"
            ),
            models.UniqueConstraint(
                fields=["tenant", "user_id"],
                condition=~Q(user_id=""),
                name="contact_unique_user_id",
            ),
            models.CheckConstraint(
                condition=~Q(wa_id="", user_id=""), name="contact_has_an_identity"
            ),
        ]
        # The contact book is read in keyset chunks by id within one tenant (the export):
        # without the tenant in front, a small tenant's chunk walks past every other tenant's
        # contacts whose random ids fall in between. The conversation and consent indexes on
        # (tenant, contact) serve the same chunks.
        indexes = [models.Index(fields=["tenant", "id"], name="contact_tenant_book_idx")]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return self.profile_name or self.phone_display or self.username or self.user_id

    @property
    def phone_display(self) -> str:
        return f"+{self.wa_id}" if self.wa_id else ""


class ConversationStatus(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


class Conversation(TenantOwnedModel):
    """The thread between one business number and one contact."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    number = models.ForeignKey(
        "tenants.WhatsAppNumber", on_delete=models.PROTECT, related_name="conversations"
    )
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="conversations")
    status = models.CharField(
        max_length=10, choices=ConversationStatus.choices, default=ConversationStatus.OPEN
    )
    # The customer's last message, by the message's own timestamp: the 24-hour window.
    last_inbound_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)
    last_message_preview = models.CharField(max_length=200, blank=True)
    unread_count = models.PositiveIntegerField(default=0)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_conversations",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["number", "contact"], name="conversation_unique_number_contact"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "-last_message_at", "-id"], name="conv_list_idx"),
            models.Index(
                fields=["tenant", "status", "-last_message_at", "-id"], name="conv_status_idx"
            ),
            # The contact-book export reads a chunk's conversations by a range of contact ids;
            # with the id and last inbound in the index, PostgreSQL reads no table page.
            models.Index(
                fields=["tenant", "contact"],
                include=["id", "last_inbound_at"],
                name="conv_contact_book_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.contact} ↔ {self.number}"


class Direction(models.TextChoices):
    INBOUND = "in", "Inbound"
    OUTBOUND = "out", "Outbound"
    NOTE = "note", "Internal note"  # never leaves Klaros


class MessageStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    NOTE = "note", "Internal note"
    ACCEPTED = "accepted", "Accepted by Meta"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    DELIVERED = "delivered", "Delivered"
    READ = "read", "Read"
    PLAYED = "played", "Played"


# Statuses only move forward. `failed` sits between sent and delivered: a failure after `sent`
# shows, while a late failure for a message already delivered (multi-device) is recorded on the
# message's error fields without hiding that it was delivered.
STATUS_RANK = {
    MessageStatus.RECEIVED: 0,
    MessageStatus.QUEUED: 0,
    MessageStatus.NOTE: 0,
    MessageStatus.SENDING: 5,
    MessageStatus.ACCEPTED: 10,
    MessageStatus.SENT: 20,
    MessageStatus.FAILED: 25,
    MessageStatus.DELIVERED: 30,
    MessageStatus.READ: 40,
    MessageStatus.PLAYED: 50,
}


class Message(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    direction = models.CharField(max_length=4, choices=Direction.choices)
    # NULL until Meta gives one: unique per tenant only once set.
    wamid = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    type = models.CharField(max_length=30)
    # The type-specific object exactly as Meta sent it (inbound) or as we will send it.
    content = models.JSONField(default=dict, blank=True)
    # Plain text for previews and search: the body, caption or a short description.
    text = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=MessageStatus.choices)
    status_rank = models.PositiveSmallIntegerField(default=0)
    # When the customer sent it (inbound, Meta's timestamp) or when it was created (outbound).
    sent_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    context_wamid = models.CharField(max_length=200, blank=True)
    forwarded = models.BooleanField(default=False)
    frequently_forwarded = models.BooleanField(default=False)
    referral = models.JSONField(null=True, blank=True)
    error_code = models.IntegerField(null=True, blank=True)
    error_title = models.CharField(max_length=300, blank=True)
    error_details = models.TextField(blank=True)
    # Meta's pricing object from the first status that carried one (charges come from it).
    pricing = models.JSONField(null=True, blank=True)

    # --- Outbox (outbound messages only) ---------------------------------------------------
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    send_path = models.CharField(max_length=20, blank=True)
    template = models.ForeignKey(
        "conversations.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Makes "send this once" requests (the opt-out confirmation) idempotent.
    idempotency_key = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "wamid"],
                condition=Q(wamid__isnull=False),
                name="message_unique_tenant_wamid",
            ),
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="message_unique_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "sent_at", "id"], name="msg_thread_idx"),
            models.Index(fields=["status", "next_attempt_at"], name="msg_outbox_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.type} {self.wamid or self.pk}"

    @property
    def is_media(self) -> bool:
        return self.type in MEDIA_TYPES


MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})


class TemplateStatus(models.TextChoices):
    APPROVED = "APPROVED", "Approved"
    PENDING = "PENDING", "In review"
    REJECTED = "REJECTED", "Rejected"
    PAUSED = "PAUSED", "Paused"
    DISABLED = "DISABLED", "Disabled"
    IN_APPEAL = "IN_APPEAL", "In appeal"
    PENDING_DELETION = "PENDING_DELETION", "Pending deletion"
    DELETED = "DELETED", "Deleted"
    ARCHIVED = "ARCHIVED", "Archived"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED", "Limit exceeded"
    LOCKED = "LOCKED", "Locked"


class Template(TenantOwnedModel):
    """A message template of one of the tenant's WABAs, synced from Meta and kept current by
    `message_template_status_update` and `template_category_update` webhooks."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    waba_id = models.CharField(max_length=32)
    meta_id = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=512)
    language = models.CharField(max_length=20)
    status = models.CharField(max_length=20)
    category = models.CharField(max_length=30, blank=True)
    parameter_format = models.CharField(max_length=20, default="POSITIONAL")
    components = models.JSONField(default=list, blank=True)
    status_reason = models.CharField(max_length=300, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "language"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "waba_id", "name", "language"], name="template_unique_name_lang"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.language})"

    @property
    def is_usable(self) -> bool:
        return self.status == TemplateStatus.APPROVED

    @property
    def is_marketing(self) -> bool:
        return self.category.upper() == "MARKETING"


class StatusEvent(TenantOwnedModel):
    """Every status Meta reported, kept even when its message is not (yet) known: it is applied
    when a message with that wamid appears."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    wamid = models.CharField(max_length=200)
    status = models.CharField(max_length=10)
    occurred_at = models.DateTimeField()
    recipient_id = models.CharField(max_length=100, blank=True)
    pricing = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True)
    biz_opaque_callback_data = models.CharField(max_length=512, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "wamid", "status"], name="status_event_unique"
            )
        ]
        indexes = [models.Index(fields=["tenant", "wamid"], name="status_event_wamid_idx")]

    def __str__(self) -> str:
        return f"{self.wamid} {self.status}"


class MetaErrorReport(TenantOwnedModel):
    """A value-level `errors[]` item Meta reported for a number (not tied to one message)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    number = models.ForeignKey(
        "tenants.WhatsAppNumber", on_delete=models.CASCADE, related_name="error_reports"
    )
    webhook_event = models.ForeignKey(
        "conversations.WebhookEvent", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    fingerprint = models.CharField(max_length=64)
    code = models.IntegerField(null=True, blank=True)
    title = models.CharField(max_length=300, blank=True)
    details = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "fingerprint"], name="meta_error_report_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.title}"


class WebhookState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed (will retry)"
    QUARANTINED = "quarantined", "Quarantined"


class WebhookEvent(models.Model):
    """The journal: every verified webhook body, committed before Meta gets its 200.

    Deployment-level, not tenant data: a body is verified before it is routed, and one body can
    carry changes for several numbers. Quarantined changes are never shown to any tenant.
    """

    id = models.BigAutoField(primary_key=True)
    # The webhook sends only `app` and `body` (`journal.journal_webhook`); the database fills in
    # the rest from these defaults.
    app = models.ForeignKey("tenants.MetaApp", on_delete=models.PROTECT, related_name="+")
    body = models.BinaryField()
    received_at = models.DateTimeField(db_default=Now(), db_index=True, editable=False)
    state = models.CharField(
        max_length=12,
        choices=WebhookState.choices,
        default=WebhookState.PENDING,
        db_default=WebhookState.PENDING,
    )
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="", db_default="")
    counts = models.JSONField(default=dict, db_default={}, blank=True)

    class Meta:
        # The journal keeps processed rows for KLAROS_JOURNAL_RETENTION_DAYS, so almost every
        # row is processed. The drain and the operators' lists only look for the others: each
        # kind has a partial index of its own, which holds just those rows (a claim never walks
        # past processed ones), and which a row leaves when it is processed.
        indexes = [
            models.Index(
                fields=["id"], condition=Q(state=WebhookState.PENDING), name="webhook_pending_idx"
            ),
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(state=WebhookState.FAILED),
                name="webhook_retry_idx",
            ),
            models.Index(
                fields=["id"],
                condition=Q(state=WebhookState.QUARANTINED),
                name="webhook_quarantined_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"webhook #{self.pk} ({self.state})"


class JournalDrainFlag(models.Model):
    """One row: whether a drain task is already queued, so a burst of webhooks enqueues one
    task instead of one per webhook."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    scheduled = models.BooleanField(default=False)
    scheduled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return "drain scheduled" if self.scheduled else "drain idle"


class OutboxDrainFlag(models.Model):
    """One row: whether an outbox dispatcher is already queued (same pattern as the journal)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    scheduled = models.BooleanField(default=False)
    scheduled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return "dispatch scheduled" if self.scheduled else "dispatch idle"
