"""From a verified webhook body in the journal to rows in the tenants' inboxes.

Every entry, change, message, status and error of a body is walked. Each change is routed by
`metadata.phone_number_id` to the tenant owning that number, and only when the number belongs to
the Meta app whose secret verified the body; anything else is quarantined and reaches no tenant.
All writes are idempotent by database constraint, so a replay of the journal changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest

from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.payloads import (
    Change,
    ContactProfile,
    InboundMessage,
    StatusUpdate,
    message_preview,
    parse_notification,
)

from .models import (
    STATUS_RANK,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    MetaErrorReport,
    StatusEvent,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

# Fields Klaros does not act on yet. They are counted (visible to operators) and the raw body
# stays in the journal, so they can be replayed once they are handled.
KNOWN_STATUS_VALUES = {s.value for s in MessageStatus} - {"received", "queued", "accepted"}


@dataclass
class IngestResult:
    counts: Counter = field(default_factory=Counter)
    quarantined: list[str] = field(default_factory=list)


class NumberDirectory:
    """Looks business numbers up by phone_number_id, once per drain batch.

    Routing is the one place that must see every tenant's numbers: it is how the tenant scope is
    chosen in the first place.
    """

    def __init__(self) -> None:
        self._cache: dict[str, WhatsAppNumber | None] = {}

    def get(self, phone_number_id: str) -> WhatsAppNumber | None:
        if phone_number_id not in self._cache:
            with unscoped("webhook routing by phone_number_id"):
                self._cache[phone_number_id] = (
                    WhatsAppNumber.objects.filter(phone_number_id=phone_number_id)
                    .select_related("app")
                    .first()
                )
        return self._cache[phone_number_id]


def ingest_event(event: WebhookEvent, directory: NumberDirectory | None = None) -> IngestResult:
    """Process one journal entry. Raises on malformed bodies or database errors (the caller
    marks the entry failed and retries it)."""
    directory = directory or NumberDirectory()
    notification = parse_notification(bytes(event.body))
    body_digest = hashlib.sha256(bytes(event.body)).hexdigest()
    result = IngestResult()
    for entry_index, entry in enumerate(notification.entries):
        for change_index, change in enumerate(entry.changes):
            where = f"entry[{entry_index}].changes[{change_index}]"
            if change.field not in ("messages",):
                result.counts[f"unhandled_field:{change.field}"] += 1
                continue
            pnid = change.phone_number_id
            number = directory.get(pnid) if pnid else None
            if number is None:
                result.quarantined.append(
                    f"{where}: phone_number_id {pnid or '(missing)'} is not connected"
                )
                continue
            if number.app_id != event.app_id:
                result.quarantined.append(
                    f"{where}: phone_number_id {pnid} belongs to another Meta app than the "
                    "one whose secret signed this body"
                )
                continue
            with tenant_scope(number.tenant_id):
                _ingest_change(change, number, event, f"{body_digest}:{where}", result)
    return result


def _ingest_change(
    change: Change, number: WhatsAppNumber, event: WebhookEvent, origin: str, result: IngestResult
) -> None:
    for message in change.messages:
        created = ingest_inbound_message(number, message, change.contact_for(message))
        result.counts["messages"] += 1
        result.counts["messages_new" if created else "messages_duplicate"] += 1
    for status in change.statuses:
        apply_status(number, status)
        result.counts["statuses"] += 1
    for index, error in enumerate(change.errors):
        fingerprint = hashlib.sha256(f"{origin}:errors[{index}]".encode()).hexdigest()
        MetaErrorReport.objects.bulk_create(
            [
                MetaErrorReport(
                    tenant_id=number.tenant_id,
                    number=number,
                    webhook_event=event,
                    fingerprint=fingerprint,
                    code=error.code,
                    title=error.title[:300],
                    details=error.details,
                )
            ],
            ignore_conflicts=True,
        )
        result.counts["errors"] += 1


def upsert_contact(
    number: WhatsAppNumber, wa_id: str | None, user_id: str | None, profile: ContactProfile | None
) -> Contact:
    """Find the tenant's contact by business-scoped user id or wa_id, creating it when new and
    filling in identifiers and profile name as Meta reveals them."""
    wa_id = wa_id or (profile.wa_id if profile else None) or ""
    user_id = user_id or (profile.user_id if profile else None) or ""
    name = (profile.name if profile else None) or ""
    username = (profile.username if profile else None) or ""
    if not wa_id and not user_id:
        raise ValueError("an inbound message names no sender (no wa_id, no user_id)")
    lookup = Q()
    if user_id:
        lookup |= Q(user_id=user_id)
    if wa_id:
        lookup |= Q(wa_id=wa_id)
    for _attempt in range(3):
        candidates = list(Contact.objects.filter(lookup))
        contact = next((c for c in candidates if user_id and c.user_id == user_id), None)
        contact = contact or next((c for c in candidates if wa_id and c.wa_id == wa_id), None)
        if contact is None:
            try:
                with transaction.atomic():
                    return Contact.objects.create(
                        tenant_id=number.tenant_id,
                        wa_id=wa_id,
                        user_id=user_id,
                        profile_name=name[:256],
                        username=username[:100],
                    )
            except IntegrityError:
                continue  # created concurrently: read it again
        updates = {}
        if user_id and not contact.user_id:
            updates["user_id"] = user_id
        if wa_id and not contact.wa_id:
            updates["wa_id"] = wa_id
        if name and name != contact.profile_name:
            updates["profile_name"] = name[:256]
        if username and username != contact.username:
            updates["username"] = username[:100]
        if updates:
            try:
                with transaction.atomic():
                    Contact.objects.filter(pk=contact.pk).update(**updates)
            except IntegrityError:
                updates.pop("wa_id", None)
                updates.pop("user_id", None)
                if updates:
                    Contact.objects.filter(pk=contact.pk).update(**updates)
            for key, value in updates.items():
                setattr(contact, key, value)
        return contact
    raise IntegrityError("could not create or find the contact")


def get_or_create_conversation(number: WhatsAppNumber, contact: Contact) -> Conversation:
    for _attempt in range(3):
        conversation = Conversation.objects.filter(number=number, contact=contact).first()
        if conversation is not None:
            return conversation
        try:
            with transaction.atomic():
                return Conversation.objects.create(
                    tenant_id=number.tenant_id, number=number, contact=contact
                )
        except IntegrityError:
            continue
    raise IntegrityError("could not create or find the conversation")


def ingest_inbound_message(
    number: WhatsAppNumber, message: InboundMessage, profile: ContactProfile | None
) -> bool:
    """Store one inbound message; returns False when it was already stored (a duplicate)."""
    contact = upsert_contact(number, message.from_wa_id, message.user_id, profile)
    conversation = get_or_create_conversation(number, contact)
    context = message.context
    content = dict(message.content)
    if message.errors:
        content["_errors"] = [e.raw for e in message.errors]
    if context and context.referred_product:
        content["_referred_product"] = context.referred_product
    first_error = message.errors[0] if message.errors else None
    preview = message_preview(message)
    row = Message(
        tenant_id=number.tenant_id,
        conversation=conversation,
        direction=Direction.INBOUND,
        wamid=message.wamid,
        type=message.type,
        content=content,
        text=preview,
        status=MessageStatus.RECEIVED,
        sent_at=message.timestamp,
        context_wamid=(context.quoted_wamid or "") if context else "",
        forwarded=bool(context and context.forwarded),
        frequently_forwarded=bool(context and context.frequently_forwarded),
        referral=message.referral,
        error_code=first_error.code if first_error else None,
        error_title=(first_error.title or "")[:300] if first_error else "",
        error_details=first_error.details if first_error else "",
    )
    try:
        with transaction.atomic():
            row.save(force_insert=True)
    except IntegrityError:
        return False  # unique (tenant, wamid): already stored
    _touch_conversation(conversation, message.timestamp, preview[:200])
    return True


def _touch_conversation(conversation: Conversation, at: datetime, preview: str) -> None:
    """Move the conversation's window, ordering and unread count forward, in SQL, so concurrent
    and out-of-order messages end in the same state."""
    is_latest = Q(last_message_at__isnull=True) | Q(last_message_at__lte=at)
    Conversation.objects.filter(pk=conversation.pk).update(
        last_inbound_at=Greatest(Coalesce(F("last_inbound_at"), Value(at)), Value(at)),
        last_message_preview=Case(
            When(is_latest, then=Value(preview)), default=F("last_message_preview")
        ),
        last_message_at=Greatest(Coalesce(F("last_message_at"), Value(at)), Value(at)),
        unread_count=F("unread_count") + 1,
        status=ConversationStatus.OPEN,
    )


def apply_status(number: WhatsAppNumber, status: StatusUpdate) -> None:
    """Record a status event (once per wamid and status) and move its message forward."""
    if status.status not in KNOWN_STATUS_VALUES:
        logger.info("ignoring unknown status value %r", status.status)
        return
    StatusEvent.objects.bulk_create(
        [
            StatusEvent(
                tenant_id=number.tenant_id,
                wamid=status.wamid,
                status=status.status,
                occurred_at=status.timestamp,
                recipient_id=status.recipient_id or status.recipient_user_id or "",
                pricing=status.pricing,
                errors=[e.raw for e in status.errors],
                biz_opaque_callback_data=(status.biz_opaque_callback_data or "")[:512],
            )
        ],
        ignore_conflicts=True,
    )
    update_message_status(
        Message.objects.filter(wamid=status.wamid, direction=Direction.OUTBOUND),
        status.status,
        errors=[(e.code, e.title, e.details) for e in status.errors],
        pricing=status.pricing,
    )


def update_message_status(
    messages, status: str, *, errors: list[tuple], pricing: dict | None
) -> int:
    """Apply one status to the given outbound messages with conditional updates: statuses never
    move backwards, a failure's error is recorded whenever it comes, pricing is kept once."""
    rank = STATUS_RANK[MessageStatus(status)]
    changed = messages.filter(status_rank__lt=rank).update(status=status, status_rank=rank)
    if status == MessageStatus.FAILED and errors:
        code, title, details = errors[0]
        messages.update(error_code=code, error_title=(title or "")[:300], error_details=details)
    if pricing:
        messages.filter(pricing__isnull=True).update(pricing=pricing)
    return changed


def apply_pending_statuses(message: Message) -> None:
    """Apply statuses that arrived before we knew this message's wamid (crash reconciliation,
    out-of-order delivery)."""
    if not message.wamid:
        return
    target = Message.objects.filter(pk=message.pk)
    for event in StatusEvent.objects.filter(wamid=message.wamid).order_by("occurred_at"):
        update_message_status(
            target,
            event.status,
            errors=[
                (e.get("code"), e.get("title", ""), (e.get("error_data") or {}).get("details", ""))
                for e in event.errors
            ],
            pricing=event.pricing,
        )


def canonical_counts(result: IngestResult) -> dict:
    return json.loads(json.dumps(dict(result.counts)))
