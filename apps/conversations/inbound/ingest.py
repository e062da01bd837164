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
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from apps.audit.services import record
from apps.billing.services import PricedStatus, record_charges
from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.payloads import (
    Change,
    ContactProfile,
    InboundMessage,
    Notification,
    PayloadError,
    StatusUpdate,
    message_preview,
    parse_notification,
    parse_template_category_update,
)

from ..models import (
    MEDIA_TYPES,
    STATUS_RANK,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    MetaErrorReport,
    StatusEvent,
    Template,
    WebhookEvent,
)
from ..outbound.statuses import record_meta_failures, update_message_status
from ..services import record_meta_marketing_refusal
from .consent import handle_consent_keyword, record_marketing_preference

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
            if change.field == "message_template_status_update":
                _apply_template_status(entry.waba_id, change, event, result, where)
                continue
            if change.field == "template_category_update":
                _apply_template_category(entry.waba_id, change, event, result, where)
                continue
            number = _route(change, event, directory, result, where)
            if number is None:
                continue
            with tenant_scope(number.tenant_id):
                _ingest_change(change, number, event, f"{body_digest}:{where}", result)
    return result


def _route(
    change: Change,
    event: WebhookEvent,
    directory: NumberDirectory,
    result: IngestResult,
    where: str,
) -> WhatsAppNumber | None:
    """The number a `messages`/`user_preferences` change belongs to, or None (counted or
    quarantined in `result`): only numbers of the app whose secret signed the body."""
    if change.field not in ("messages", "user_preferences"):
        result.counts[f"unhandled_field:{change.field}"] += 1
        return None
    pnid = change.phone_number_id
    number = directory.get(pnid) if pnid else None
    if number is None:
        result.quarantined.append(
            f"{where}: phone_number_id {pnid or '(missing)'} is not connected"
        )
        return None
    if number.app_id != event.app_id:
        result.quarantined.append(
            f"{where}: phone_number_id {pnid} belongs to another Meta app than the "
            "one whose secret signed this body"
        )
        return None
    return number


def _apply_template_status(
    waba_id: str, change: Change, event: WebhookEvent, result: IngestResult, where: str
) -> None:
    """Template reviews are per WABA: update that template for every tenant whose number of
    the signing app uses the WABA."""
    update = change.template_status
    if update is None:
        result.counts["template_status_malformed"] += 1
        return
    tenant_ids = _waba_tenants(waba_id, event, result, where)
    language = update.language.replace("-", "_")
    for tenant_id in tenant_ids:
        with tenant_scope(tenant_id):
            fields = {"status_reason": (update.reason or "")[:300]}
            status = template_status_after(update.event)
            if status:
                fields["status"] = status
            if update.category:
                fields["category"] = update.category.upper()
            changed = Template.objects.filter(
                waba_id=waba_id, name=update.name, language__in={language, update.language}
            ).update(**fields)
            result.counts["template_status" if changed else "template_status_unknown"] += 1


def _waba_tenants(
    waba_id: str, event: WebhookEvent, result: IngestResult, where: str
) -> set[uuid.UUID]:
    """The tenants with a number of this WABA under the app that signed the body; none
    (the change quarantined in `result`) when there is no such number."""
    with unscoped("webhook routing by WABA id"):
        tenant_ids = set(
            WhatsAppNumber.objects.filter(waba_id=waba_id, app_id=event.app_id).values_list(
                "tenant_id", flat=True
            )
        )
    if not tenant_ids:
        result.quarantined.append(f"{where}: WABA {waba_id} has no connected number of this app")
    return tenant_ids


def _apply_template_category(
    waba_id: str, change: Change, event: WebhookEvent, result: IngestResult, where: str
) -> None:
    """Meta re-categorised a template (typically UTILITY to MARKETING after an automated
    review). Only the completed change moves the template: it is what Meta bills and what the
    send gate must hold against the marketing rules from now on. The notice of an impending
    change is audited, and the template keeps its category until the change arrives."""
    try:
        update = parse_template_category_update(change.value_raw)
    except PayloadError:
        result.counts["template_category_malformed"] += 1
        return
    languages = {update.language, update.language.replace("_", "-")}
    for tenant_id in _waba_tenants(waba_id, event, result, where):
        with tenant_scope(tenant_id), transaction.atomic():
            templates = list(
                Template.objects.filter(waba_id=waba_id, name=update.name, language__in=languages)
            )
            if not templates:
                result.counts["template_category_unknown"] += 1
                continue
            for template in templates:
                if not update.completed:
                    record(
                        "template.category_change_announced",
                        template,
                        actor="meta",
                        data={
                            "category": template.category,
                            "correct_category": update.correct_category,
                            "takes_effect_at": (
                                update.takes_effect_at.isoformat()
                                if update.takes_effect_at
                                else None
                            ),
                        },
                    )
                    result.counts["template_category_announced"] += 1
                    continue
                if template.category.upper() == update.new_category:
                    result.counts["template_category_unchanged"] += 1
                    continue
                previous = template.category
                Template.objects.filter(pk=template.pk).update(category=update.new_category)
                record(
                    "template.category_changed",
                    template,
                    actor="meta",
                    data={"from": previous, "to": update.new_category},
                )
                result.counts["template_category"] += 1


# Webhook events that are not list statuses: a reinstated or unarchived template is approved
# again; FLAGGED warns about quality but leaves the template sendable.
_TEMPLATE_EVENT_STATUS = {"REINSTATED": "APPROVED", "UNARCHIVED": "APPROVED", "FLAGGED": None}


def template_status_after(event: str) -> str | None:
    """The template status a `message_template_status_update` event leaves (None: unchanged)."""
    event = (event or "").upper()
    if event in _TEMPLATE_EVENT_STATUS:
        return _TEMPLATE_EVENT_STATUS[event]
    return event[:20] or None


def _ingest_change(
    change: Change, number: WhatsAppNumber, event: WebhookEvent, origin: str, result: IngestResult
) -> None:
    for preference in change.user_preferences:
        contact = upsert_contact(number, preference.wa_id, preference.user_id, None)
        record_marketing_preference(
            contact,
            value=preference.value,
            detail=preference.detail,
            occurred_at=preference.timestamp,
            key=f"{origin}:{preference.wa_id or preference.user_id}:{preference.value}",
        )
        result.counts["user_preferences"] += 1
    for message in change.messages:
        created = ingest_inbound_message(number, message, change.contact_for(message))
        result.counts["messages"] += 1
        result.counts["messages_new" if created else "messages_duplicate"] += 1
    for status in change.statuses:
        apply_status(number, status)
        result.counts["statuses"] += 1
    for index, error in enumerate(change.errors):
        MetaErrorReport.objects.bulk_create(
            [_error_report(number, event, origin, index, error)], ignore_conflicts=True
        )
        result.counts["errors"] += 1


def _error_report(
    number: WhatsAppNumber, event: WebhookEvent, origin: str, index: int, error
) -> MetaErrorReport:
    return MetaErrorReport(
        tenant_id=number.tenant_id,
        number=number,
        webhook_event=event,
        fingerprint=hashlib.sha256(f"{origin}:errors[{index}]".encode()).hexdigest(),
        code=error.code,
        title=error.title[:300],
        details=error.details,
    )


def _identity(
    wa_id: str | None, user_id: str | None, profile: ContactProfile | None
) -> tuple[str, str, str, str]:
    wa_id = wa_id or (profile.wa_id if profile else None) or ""
    user_id = user_id or (profile.user_id if profile else None) or ""
    name = (profile.name if profile else None) or ""
    username = (profile.username if profile else None) or ""
    if not wa_id and not user_id:
        raise ValueError("an inbound message names no sender (no wa_id, no user_id)")
    return wa_id, user_id, name, username


def _profile_updates(
    contact: Contact | _Contact, wa_id: str, user_id: str, name: str, username: str
) -> dict:
    updates = {}
    if user_id and not contact.user_id:
        updates["user_id"] = user_id
    if wa_id and not contact.wa_id:
        updates["wa_id"] = wa_id
    if name and name != contact.profile_name:
        updates["profile_name"] = name[:256]
    if username and username != contact.username:
        updates["username"] = username[:100]
    return updates


def upsert_contact(
    number: WhatsAppNumber, wa_id: str | None, user_id: str | None, profile: ContactProfile | None
) -> Contact:
    """Find the tenant's contact by business-scoped user id or wa_id, creating it when new and
    filling in identifiers and profile name as Meta reveals them."""
    wa_id, user_id, name, username = _identity(wa_id, user_id, profile)
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
        updates = _profile_updates(contact, wa_id, user_id, name, username)
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
    """Store one inbound message; returns False when it was already stored (a duplicate).

    A duplicate (a Meta retry, a journal replay) changes nothing, not even its contact: the
    profile it carries may be older than the one stored. It is looked up first; the unique
    (tenant, wamid) index still decides when two copies are stored at the same time."""
    if Message.objects.filter(wamid=message.wamid).exists():
        return False
    contact = upsert_contact(number, message.from_wa_id, message.user_id, profile)
    conversation = get_or_create_conversation(number, contact)
    row, preview = _inbound_row(number, conversation, message)
    try:
        with transaction.atomic():
            row.save(force_insert=True)
    except IntegrityError:
        return False  # unique (tenant, wamid): already stored
    register_media_of(number, row)
    _touch_conversation(conversation, message.timestamp, preview[:200])
    if message.type in ("text", "button"):
        conversation.number = number
        conversation.contact = contact
        conversation.last_inbound_at = max(
            filter(None, [conversation.last_inbound_at, message.timestamp])
        )
        handle_consent_keyword(conversation, row)
    return True


def register_media_of(number: WhatsAppNumber, row: Message) -> None:
    """A newly stored media message: record its media and fetch it in the background (the
    download is enqueued after commit; a duplicate webhook never downloads twice)."""
    if row.type in MEDIA_TYPES and row.content.get("id"):
        from apps.media.services import register_inbound_media

        register_inbound_media(number=number, message_id=row.pk, media=row.content, kind=row.type)


def _inbound_row(
    number: WhatsAppNumber, conversation: Conversation, message: InboundMessage
) -> tuple[Message, str]:
    """The unsaved Message row for an inbound message (its UUID pk already assigned here) and
    its preview."""
    values, preview = _inbound_values(message)
    row = Message(tenant_id=number.tenant_id, conversation=conversation, **_INBOUND, **values)
    return row, preview


# The fields every inbound message has in common.
_INBOUND = {"direction": Direction.INBOUND, "status": MessageStatus.RECEIVED}


def _inbound_values(message: InboundMessage) -> tuple[dict, str]:
    """The fields of an inbound message's row that come from the message (all but tenant,
    conversation, `_INBOUND` and the defaults), and its preview."""
    context = message.context
    content = dict(message.content)
    if message.errors:
        content["_errors"] = [e.raw for e in message.errors]
    if context and context.referred_product:
        content["_referred_product"] = context.referred_product
    first_error = message.errors[0] if message.errors else None
    preview = message_preview(message)
    values = {
        "wamid": message.wamid,
        "type": message.type,
        "content": content,
        "text": preview,
        "sent_at": message.timestamp,
        "context_wamid": (context.quoted_wamid or "") if context else "",
        "forwarded": bool(context and context.forwarded),
        "frequently_forwarded": bool(context and context.frequently_forwarded),
        "referral": message.referral,
        "error_code": first_error.code if first_error else None,
        "error_title": (first_error.title or "")[:300] if first_error else "",
        "error_details": first_error.details if first_error else "",
    }
    return values, preview


def _touch_conversation(conversation: Conversation, at: datetime, preview: str) -> None:
    """Move the conversation's window, ordering and unread count forward, in SQL, so concurrent
    and out-of-order messages end in the same state."""
    _touch(conversation.pk, at, preview, 1)


def _touch(pk: uuid.UUID, at: datetime, preview: str, count: int) -> None:
    is_latest = Q(last_message_at__isnull=True) | Q(last_message_at__lte=at)
    Conversation.objects.filter(pk=pk).update(
        last_inbound_at=Greatest(Coalesce(F("last_inbound_at"), Value(at)), Value(at)),
        last_message_preview=Case(
            When(is_latest, then=Value(preview)), default=F("last_message_preview")
        ),
        last_message_at=Greatest(Coalesce(F("last_message_at"), Value(at)), Value(at)),
        unread_count=F("unread_count") + count,
        status=ConversationStatus.OPEN,
    )


def apply_status(number: WhatsAppNumber, status: StatusUpdate) -> int:
    """Record a status event (once per wamid and status) and move its message forward."""
    if status.status not in KNOWN_STATUS_VALUES:
        logger.info("ignoring unknown status value %r", status.status)
        return 0
    StatusEvent.objects.bulk_create([_status_event_row(number, status)], ignore_conflicts=True)
    target = Message.objects.filter(wamid=status.wamid, direction=Direction.OUTBOUND)
    if status.biz_opaque_callback_data:
        # If the worker died before recording Meta's answer, our message id comes back in
        # biz_opaque_callback_data and the wamid is attached now (a no-op otherwise).
        _attach_wamid(status.biz_opaque_callback_data, status.wamid)
    changed = update_message_status(
        target,
        status.status,
        errors=[(e.code, e.title, e.details) for e in status.errors],
        pricing=status.pricing,
    )
    if status.status == MessageStatus.FAILED and any(e.code == 131050 for e in status.errors):
        for message in target.select_related("conversation__contact"):
            record_meta_marketing_refusal(message, status.wamid)
    if status.pricing:
        record_charges(number.tenant_id, [priced_status(number, status)])
    return changed


def priced_status(number: WhatsAppNumber, status: StatusUpdate) -> PricedStatus:
    """The billing service's view of a status that carries a pricing object."""
    return PricedStatus(
        number_id=number.pk,
        wamid=status.wamid,
        occurred_at=status.timestamp,
        recipient_id=status.recipient_id or "",
        pricing=status.pricing,
        conversation=status.conversation,
    )


def _status_event_row(number: WhatsAppNumber, status: StatusUpdate) -> StatusEvent:
    return StatusEvent(tenant_id=number.tenant_id, **_status_event_values(status))


def _status_event_values(status: StatusUpdate) -> dict:
    return {
        "wamid": status.wamid,
        "status": status.status,
        "occurred_at": status.timestamp,
        "recipient_id": status.recipient_id or status.recipient_user_id or "",
        "pricing": status.pricing,
        "errors": [e.raw for e in status.errors],
        "biz_opaque_callback_data": (status.biz_opaque_callback_data or "")[:512],
    }


# An outbound message still waiting for Meta's answer: the only kind a wamid is attached to.
_ATTACHABLE = {
    "direction": Direction.OUTBOUND,
    "wamid__isnull": True,
    "status__in": [MessageStatus.SENDING, MessageStatus.QUEUED],
}
_ATTACHED = {
    "status": MessageStatus.ACCEPTED,
    "status_rank": STATUS_RANK[MessageStatus.ACCEPTED],
    "lease_until": None,
    "next_attempt_at": None,
}


def _attach_wamid(callback_data: str, wamid: str) -> None:
    try:
        message_id = uuid.UUID(callback_data)
    except ValueError:
        return
    with transaction.atomic():
        Message.objects.filter(pk=message_id, **_ATTACHABLE).update(wamid=wamid, **_ATTACHED)


# --- Batched ingest ---------------------------------------------------------------------------
#
# `ingest_batch` ends in exactly the database state that calling `ingest_event` on each event in
# journal order would, with a handful of set-wise statements per tenant instead of ~12 per
# inbound message and 3-4 per status:
#
# * inbound: one SELECT of the contacts named anywhere in the batch, upserts replayed in memory
#   in order (the same lookup, identifier and profile rules as `upsert_contact`), one INSERT of
#   the new contacts, one SELECT + one INSERT for conversations, one SELECT of the wamids
#   already stored, one INSERT ... ON CONFLICT DO NOTHING of the other messages returning
#   those it inserted (elsewhere than on PostgreSQL, a SELECT of their pks), one UPDATE of the
#   touched conversations (the same SQL expressions as `_touch_conversation`, aggregated; on
#   PostgreSQL one statement, elsewhere one per conversation). Contacts, conversations and
#   messages are handled as values, not model instances; on PostgreSQL the rows of each INSERT
#   and of the UPDATE travel as one JSON parameter (see `_insert`);
# * statuses: one INSERT ... ON CONFLICT DO NOTHING of the status events, one forward-only
#   UPDATE per target status over `wamid IN (...)` (forward-only updates commute: the result is
#   the highest rank, whatever the order), one pricing UPDATE per distinct pricing object (the
#   first one in journal order wins, as `pricing IS NULL` makes it win one by one), error
#   fields per distinct error (the last failure in journal order wins, as one by one).
#
# Anything rare and order-sensitive keeps the one-by-one code inside the batch: wamid attachment
# by biz_opaque_callback_data, the 131050 refusal, consent keywords (a conversation with a
# keyword message is touched message by message with the hook after each, as one by one).
# Events with user_preferences or template reviews are not batched at all (see
# `needs_per_event_path`). Any exception aborts the whole batched pass: the caller rolls its
# savepoint back and processes the same events one by one, so only a bad event fails.

_IN_CHUNK = 5000  # values per `IN (...)` list
_INSERT_CHUNK = 1000


def needs_per_event_path(notification: Notification) -> bool:
    """Template reviews and categories and user_preferences are rare and run through other services
    (templates, the consent ledger): events carrying them are processed one by one, in
    journal order between batched runs."""
    return any(
        change.field in ("message_template_status_update", "template_category_update")
        or change.user_preferences
        for _entry, change in notification.changes()
    )


@dataclass(slots=True)
class _Inbound:
    number: WhatsAppNumber
    message: InboundMessage
    profile: ContactProfile | None
    result: IngestResult
    contact: _Contact | None = None
    conversation: uuid.UUID | None = None  # its pk
    pk: uuid.UUID | None = None  # only the first occurrence of a wamid in the batch has a row
    values: dict | None = None  # `_inbound_values` of that first occurrence
    preview: str = ""
    new: bool = False


@dataclass(slots=True, eq=False)
class _Contact:
    """What the batch needs of a contact to replay `upsert_contact` (full rows are loaded only
    for the rare consent keyword)."""

    pk: uuid.UUID
    wa_id: str
    user_id: str
    profile_name: str
    username: str
    new: bool = False


@dataclass
class _TenantWork:
    inbound: list[_Inbound] = field(default_factory=list)
    statuses: list[tuple[WhatsAppNumber, StatusUpdate]] = field(default_factory=list)
    errors: list[MetaErrorReport] = field(default_factory=list)


def ingest_batch(
    items: Sequence[tuple[WebhookEvent, Notification]], directory: NumberDirectory
) -> list[IngestResult]:
    """Process parsed journal events together; returns one result per event, equal to what
    `ingest_event` returns for it. All or nothing: raises on any error (the caller falls back
    to one event at a time)."""
    results: list[IngestResult] = []
    work: dict[uuid.UUID, _TenantWork] = {}
    for event, notification in items:
        result = IngestResult()
        results.append(result)
        body_digest = hashlib.sha256(bytes(event.body)).hexdigest()
        for entry_index, entry in enumerate(notification.entries):
            for change_index, change in enumerate(entry.changes):
                where = f"entry[{entry_index}].changes[{change_index}]"
                if change.field == "message_template_status_update" or change.user_preferences:
                    raise ValueError(f"webhook #{event.pk} needs the per-event path")
                number = _route(change, event, directory, result, where)
                if number is None:
                    continue
                tenant = work.setdefault(number.tenant_id, _TenantWork())
                for message in change.messages:
                    tenant.inbound.append(
                        _Inbound(number, message, change.contact_for(message), result)
                    )
                    result.counts["messages"] += 1
                for status in change.statuses:
                    tenant.statuses.append((number, status))
                    result.counts["statuses"] += 1
                origin = f"{body_digest}:{where}"
                for index, error in enumerate(change.errors):
                    tenant.errors.append(_error_report(number, event, origin, index, error))
                    result.counts["errors"] += 1
    for tenant_id, tenant in work.items():
        with tenant_scope(tenant_id):
            if tenant.inbound:
                _ingest_inbound_batch(tenant_id, tenant.inbound)
            if tenant.statuses:
                _apply_status_batch(tenant.statuses)
            if tenant.errors:
                MetaErrorReport.objects.bulk_create(
                    tenant.errors, ignore_conflicts=True, batch_size=_INSERT_CHUNK
                )
    return results


def _chunks(values: Sequence, size: int = _IN_CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _ingest_inbound_batch(tenant_id: uuid.UUID, items: list[_Inbound]) -> None:
    # Messages already stored (a Meta retry, a journal replay) change nothing, not even their
    # contact (`ingest_inbound_message`), so they are found first and left out of the contact
    # and conversation upserts: only the first occurrence of a new wamid goes on. A replay of
    # inbound messages then costs one SELECT per chunk of wamids.
    wamids = sorted({item.message.wamid for item in items})
    seen: set[str] = set()
    for chunk in _chunks(wamids):
        seen.update(Message.objects.filter(wamid__in=chunk).values_list("wamid", flat=True))
    fresh: list[_Inbound] = []
    for item in items:
        if item.message.wamid not in seen:
            seen.add(item.message.wamid)
            fresh.append(item)
    identities = [_identity(i.message.from_wa_id, i.message.user_id, i.profile) for i in fresh]
    _resolve_contacts(tenant_id, fresh, identities)
    _resolve_conversations(tenant_id, fresh)
    rows: list[dict] = []
    for item in fresh:
        item.values, item.preview = _inbound_values(item.message)
        item.pk = uuid.uuid4()
        rows.append({"id": item.pk, "conversation_id": item.conversation, **item.values})
    # ON CONFLICT DO NOTHING: a message already stored (a Meta retry, a journal replay) is
    # skipped by the unique (tenant, wamid) index, exactly like the IntegrityError one by one.
    # The pks are UUIDs generated here, so the pks inserted tell which rows *this* batch
    # inserted. If another drain inserts the same wamid concurrently (two journal rows carrying
    # one message, claimed by two workers), PostgreSQL makes the second INSERT wait for the
    # first transaction: if it commits, the second row is skipped and counted as a duplicate
    # (no unread increment, no keyword hook); if it rolls back, the second row is inserted.
    # Either way the message exists once and its conversation counts it once.
    inserted = _insert(
        Message, rows, {"tenant_id": tenant_id, **_INBOUND}, ignore_conflicts=True, returning=True
    )

    rules = None
    keyword_conversations: set[uuid.UUID] = set()
    for item in items:
        item.new = item.pk is not None and item.pk in inserted
        item.result.counts["messages_new" if item.new else "messages_duplicate"] += 1
        if item.new and item.values["type"] in ("text", "button"):
            if rules is None:
                from apps.consent.services import load_keyword_rules

                rules = load_keyword_rules()
            if _keyword_of(item.values["type"], item.values["content"], rules) is not None:
                keyword_conversations.add(item.conversation)

    # The hooks take model instances: the rows of new media messages and of conversations with
    # a keyword message are built from their values; those conversations and their contacts
    # are read (as they were before this batch touched them).
    for item in items:
        if item.new and item.values["type"] in MEDIA_TYPES:
            register_media_of(item.number, _stored_row(tenant_id, item))
    keyed = [item for item in items if item.new and item.conversation in keyword_conversations]
    if keyed:
        conversations = Conversation.objects.in_bulk(list(keyword_conversations))
        contacts = Contact.objects.in_bulk(list({item.contact.pk for item in keyed}))

    # Conversations without a keyword message: one aggregated touch. Applying
    # `_touch_conversation` for messages m1..mk in order ends with last_inbound_at and
    # last_message_at moved to max(t), the preview of the last message (in order) carrying
    # max(t) when max(t) >= the stored last_message_at, and unread_count + k.
    touches: dict[uuid.UUID, list] = {}
    for item in items:
        if not item.new or item.conversation in keyword_conversations:
            continue
        at = item.message.timestamp
        touch = touches.get(item.conversation)
        if touch is None:
            touches[item.conversation] = [at, item.preview[:200], 1]
            continue
        if at >= touch[0]:
            touch[0], touch[1] = at, item.preview[:200]
        touch[2] += 1
    _touch_conversations(tenant_id, [(pk, *touch) for pk, touch in touches.items()])

    # Conversations with a keyword message: exactly the one-by-one sequence.
    for item in keyed:
        conversation = conversations[item.conversation]
        _touch_conversation(conversation, item.message.timestamp, item.preview[:200])
        conversation.last_inbound_at = max(
            filter(None, [conversation.last_inbound_at, item.message.timestamp])
        )
        if item.message.type in ("text", "button"):
            conversation.number = item.number
            conversation.contact = contacts[item.contact.pk]
            handle_consent_keyword(conversation, _stored_row(tenant_id, item))


def _stored_row(tenant_id: uuid.UUID, item: _Inbound) -> Message:
    """The Message instance of an inserted row, as `bulk_create` leaves it."""
    row = Message(
        pk=item.pk,
        tenant_id=tenant_id,
        conversation_id=item.conversation,
        **_INBOUND,
        **item.values,
    )
    row._state.adding = False
    row._state.db = connection.alias
    return row


def _keyword_of(kind: str, content: dict, rules) -> str | None:
    from apps.consent.services import match_keyword

    text = content.get("body") if kind == "text" else content.get("text")
    return match_keyword(text or "", rules)


def _resolve_contacts(
    tenant_id: uuid.UUID, items: list[_Inbound], identities: list[tuple[str, str, str, str]]
) -> None:
    """`upsert_contact` for every item, in order, against one SELECT of every contact the batch
    names (any row that could match or collide has one of these identifiers)."""
    wa_ids = sorted({wa_id for wa_id, _, _, _ in identities if wa_id})
    user_ids = sorted({user_id for _, user_id, _, _ in identities if user_id})
    known: dict[uuid.UUID, _Contact] = {}
    columns = ("pk", "wa_id", "user_id", "profile_name", "username")
    for name, values in (("wa_id", wa_ids), ("user_id", user_ids)):
        for chunk in _chunks(values):
            # The exclude repeats the condition of the partial unique index on the field, so
            # PostgreSQL can use that index: without it, a lookup of 200 numbers scanned all of
            # a 200,000-contact tenant (26 ms against 1 ms).
            contacts = Contact.objects.filter(**{f"{name}__in": chunk}).exclude(**{name: ""})
            for row in contacts.values_list(*columns):
                known[row[0]] = _Contact(*row)
    by_wa = {c.wa_id: c for c in known.values() if c.wa_id}
    by_user = {c.user_id: c for c in known.values() if c.user_id}
    created: dict[uuid.UUID, _Contact] = {}
    changed: dict[uuid.UUID, dict] = {}
    for item, (wa_id, user_id, name, username) in zip(items, identities, strict=True):
        contact = by_user.get(user_id) if user_id else None
        contact = contact or (by_wa.get(wa_id) if wa_id else None)
        if contact is None:
            contact = _Contact(uuid.uuid4(), wa_id, user_id, name[:256], username[:100], new=True)
            created[contact.pk] = contact
        else:
            updates = _profile_updates(contact, wa_id, user_id, name, username)
            if ("wa_id" in updates and wa_id in by_wa) or (
                "user_id" in updates and user_id in by_user
            ):
                # Another contact holds that identifier: `upsert_contact` meets the unique
                # constraint and keeps the identifiers as they are.
                updates.pop("wa_id", None)
                updates.pop("user_id", None)
            for key, value in updates.items():
                setattr(contact, key, value)
            if updates and not contact.new:
                changed.setdefault(contact.pk, {}).update(updates)
        if contact.wa_id:
            by_wa.setdefault(contact.wa_id, contact)
        if contact.user_id:
            by_user.setdefault(contact.user_id, contact)
        item.contact = contact
    # Plain INSERT: a contact created concurrently by another drain raises IntegrityError and
    # the batch falls back to one by one, whose upsert re-reads it.
    _insert(
        Contact,
        [
            {
                "id": c.pk,
                "wa_id": c.wa_id,
                "user_id": c.user_id,
                "profile_name": c.profile_name,
                "username": c.username,
            }
            for c in created.values()
        ],
        {"tenant_id": tenant_id},
    )
    for pk, updates in changed.items():
        Contact.objects.filter(pk=pk).update(**updates)


def _resolve_conversations(tenant_id: uuid.UUID, items: list[_Inbound]) -> None:
    numbers = {item.number.pk for item in items}
    stored = sorted({item.contact.pk for item in items if not item.contact.new})
    conversations: dict[tuple, uuid.UUID] = {}
    for chunk in _chunks(stored):
        for pk, number_id, contact_id in Conversation.objects.filter(
            number_id__in=numbers, contact_id__in=chunk
        ).values_list("pk", "number_id", "contact_id"):
            conversations[(number_id, contact_id)] = pk
    created = []
    for item in items:
        key = (item.number.pk, item.contact.pk)
        pk = conversations.get(key)
        if pk is None:
            pk = conversations[key] = uuid.uuid4()
            created.append({"id": pk, "number_id": key[0], "contact_id": key[1]})
        item.conversation = pk
    _insert(Conversation, created, {"tenant_id": tenant_id})


def _insert(
    model,
    rows: list[dict],
    common: dict,
    *,
    ignore_conflicts: bool = False,
    returning: bool = False,
) -> set[uuid.UUID]:
    """INSERT rows into `model`'s table as `bulk_create` would: `rows` give fields by attname
    (the same ones in every row, the pk included), `common` fields shared by every row, and
    the other fields take their defaults (auto_now fields the time of each row). With
    `ignore_conflicts` a row hitting a unique index is skipped (ON CONFLICT DO NOTHING); with
    `returning`, the pks of the rows inserted are returned (else an empty set).

    On PostgreSQL the rows travel as one JSON document, `INSERT ... SELECT FROM
    jsonb_to_recordset(%s)` per 1,000 rows, the shared values as one parameter each: a short
    statement with a few parameters instead of one per value. Elsewhere `bulk_create`."""
    if not rows:
        return set()
    if connection.vendor != "postgresql":
        objs = [model(**common, **row) for row in rows]
        model.objects.bulk_create(objs, ignore_conflicts=ignore_conflicts, batch_size=_INSERT_CHUNK)
        inserted: set[uuid.UUID] = set()
        if returning:
            for chunk in _chunks([obj.pk for obj in objs]):
                inserted.update(model.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        return inserted
    plan = _insert_plan(model, tuple(rows[0]), tuple(common))
    shared = [
        plan.fields[name].get_db_prep_save(common.get(name, default), connection)
        for name, default in plan.shared
    ]
    now = timezone.now
    inserted = set()
    for chunk in _chunks(rows, _INSERT_CHUNK):
        document = []
        for row in chunk:
            record = {column: convert(row[name]) for name, column, convert in plan.given}
            for column in plan.stamped:
                record[column] = now().isoformat()
            document.append(record)
        with connection.cursor() as cursor:
            sql = plan.sql + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")
            if returning:
                sql += f" RETURNING {plan.pk}"
            cursor.execute(sql, [*shared, json.dumps(document, separators=(",", ":"))])
            if returning:
                inserted.update(pk for (pk,) in cursor.fetchall())
    return inserted


@dataclass(frozen=True)
class _InsertPlan:
    fields: dict  # attname → field
    given: tuple  # (attname, column, JSON conversion) of the fields each row gives
    stamped: tuple  # columns of auto_now / auto_now_add fields, stamped per row
    shared: tuple  # (attname, default) of the fields with one value for every row
    sql: str
    pk: str  # quoted column


_INSERT_PLANS: dict[tuple, _InsertPlan] = {}


def _insert_plan(model, given: tuple[str, ...], common: tuple[str, ...]) -> _InsertPlan:
    key = (model, given, common)
    plan = _INSERT_PLANS.get(key)
    if plan is not None:
        return plan
    quote = connection.ops.quote_name
    fields = {f.attname: f for f in model._meta.concrete_fields}
    stamped, shared = [], []
    for name, f in fields.items():
        if name in given or name in common:
            continue
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            stamped.append(name)
        elif f.has_default() and callable(f.default) and f.default not in (dict, list):
            raise TypeError(f"{model.__name__}.{name}: a per-row default must be given")
        else:
            shared.append((name, f.get_default()))
    shared = [(name, None) for name in common] + shared
    columns = [*given, *stamped]
    # Base types without modifiers: a too long value fails the INSERT instead of being cut.
    types = {name: fields[name].db_type(connection).split("(")[0] for name in fields}
    insert = ", ".join(quote(fields[name].column) for name in [*(n for n, _ in shared), *columns])
    select = ", ".join(
        [f"%s::{types[name]}" for name, _ in shared]
        + [f"r.{quote(fields[name].column)}" for name in columns]
    )
    record = ", ".join(f"{quote(fields[name].column)} {types[name]}" for name in columns)
    table = quote(model._meta.db_table)
    # Only quoted identifiers and types from the model are interpolated.
    sql = (
        f"INSERT INTO {table} ({insert}) SELECT {select} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS r({record})"
    )
    plan = _InsertPlan(
        fields=fields,
        given=tuple((name, fields[name].column, _json_form(fields[name])) for name in given),
        stamped=tuple(fields[name].column for name in stamped),
        shared=tuple(shared),
        sql=sql,
        pk=quote(model._meta.pk.column),
    )
    _INSERT_PLANS[key] = plan
    return plan


def _json_form(f):
    """How a value of field `f` is written into the JSON document of `_insert`."""
    target = f.target_field if f.is_relation else f
    kind = target.get_internal_type()
    if kind == "UUIDField":
        return _uuid_text
    if kind == "DateTimeField":
        return _aware_iso
    if kind == "JSONField":
        if f.encoder is not None:
            raise TypeError(f"{f}: JSON with a custom encoder is not supported")
        return _same
    if kind in _PLAIN_JSON:
        return _same
    raise TypeError(f"{f}: {kind} is not supported")


# Field types whose values are written into JSON as they are (str, bool, int).
_PLAIN_JSON = frozenset(
    {
        "CharField",
        "TextField",
        "BooleanField",
        "IntegerField",
        "SmallIntegerField",
        "BigIntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "PositiveBigIntegerField",
        "AutoField",
        "SmallAutoField",
        "BigAutoField",
    }
)


def _same(value):
    return value


def _uuid_text(value):
    return None if value is None else str(value)


def _aware_iso(value):
    if value is None:
        return None
    if timezone.is_naive(value):
        raise ValueError("a naive datetime")  # never here: timestamps are parsed in UTC
    return value.isoformat()


def _touch_conversations(
    tenant_id: uuid.UUID, touches: list[tuple[uuid.UUID, datetime, str, int]]
) -> None:
    """`_touch_conversation` for many conversations at once: (pk, latest timestamp, preview of
    the latest message, number of new messages). On PostgreSQL one `UPDATE ... FROM
    jsonb_to_recordset(...)` per 1,000 conversations with the same expressions (every SET
    expression reads the row as it was, like the ORM's single UPDATE); elsewhere one UPDATE per
    conversation."""
    if not touches:
        return
    if connection.vendor != "postgresql":
        for pk, at, preview, count in touches:
            _touch(pk, at, preview, count)
        return
    quote = connection.ops.quote_name
    table = quote(Conversation._meta.db_table)
    inbound, last_at, last_preview, unread, state = (
        quote(Conversation._meta.get_field(name).column)
        for name in (
            "last_inbound_at",
            "last_message_at",
            "last_message_preview",
            "unread_count",
            "status",
        )
    )
    # Only quoted identifiers from the model and placeholders are interpolated.
    sql = (
        f"UPDATE {table} AS c SET "  # noqa: S608
        f"{inbound} = GREATEST(COALESCE(c.{inbound}, v.at), v.at), "
        f"{last_preview} = CASE WHEN c.{last_at} IS NULL OR c.{last_at} <= v.at "
        f"THEN v.preview ELSE c.{last_preview} END, "
        f"{last_at} = GREATEST(COALESCE(c.{last_at}, v.at), v.at), "
        f"{unread} = c.{unread} + v.n, "
        f"{state} = %s "
        "FROM jsonb_to_recordset(%s::jsonb) AS v(id uuid, at timestamptz, preview varchar, "
        "n integer) WHERE c.id = v.id AND c.tenant_id = %s"
    )
    for chunk in _chunks(touches, 1000):
        document = [
            {"id": str(pk), "at": _aware_iso(at), "preview": preview, "n": count}
            for pk, at, preview, count in chunk
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                sql,
                [
                    ConversationStatus.OPEN,
                    json.dumps(document, separators=(",", ":")),
                    tenant_id,
                ],
            )


def _apply_status_batch(items: list[tuple[WhatsAppNumber, StatusUpdate]]) -> None:
    """`apply_status` for every status of one tenant, in journal order."""
    known = []
    for number, status in items:
        if status.status not in KNOWN_STATUS_VALUES:
            logger.info("ignoring unknown status value %r", status.status)
            continue
        known.append((number, status))
    if not known:
        return
    # First (wamid, status) wins, within the statement as against stored rows.
    _insert(
        StatusEvent,
        [{"id": uuid.uuid4(), **_status_event_values(status)} for _number, status in known],
        {"tenant_id": known[0][0].tenant_id},
        ignore_conflicts=True,
    )

    # Attach wamids by biz_opaque_callback_data (rare: only after a worker crash). One by one,
    # a message waiting for its wamid takes the one of the first status naming it; statuses of
    # that wamid before that point found no message.
    callbacks: dict[uuid.UUID, int] = {}
    for index, (_number, status) in enumerate(known):
        if status.biz_opaque_callback_data:
            try:
                callbacks.setdefault(uuid.UUID(status.biz_opaque_callback_data), index)
            except ValueError:
                continue
    attached_at: dict[str, int] = {}
    if callbacks:
        waiting = Message.objects.filter(pk__in=list(callbacks), **_ATTACHABLE).values_list(
            "pk", flat=True
        )
        for pk in sorted(waiting, key=callbacks.__getitem__):
            index = callbacks[pk]
            wamid = known[index][1].wamid
            # A wamid already used raises IntegrityError here, as one by one: fall back.
            Message.objects.filter(pk=pk, **_ATTACHABLE).update(wamid=wamid, **_ATTACHED)
            attached_at.setdefault(wamid, index)

    best: dict[str, tuple[int, str]] = {}
    first_pricing: dict[str, dict] = {}
    last_error: dict[str, tuple] = {}
    refusals: list[str] = []
    for index, (_number, status) in enumerate(known):
        wamid = status.wamid
        if index < attached_at.get(wamid, -1):
            continue
        rank = STATUS_RANK[MessageStatus(status.status)]
        if rank > best.get(wamid, (-1, ""))[0]:
            best[wamid] = (rank, status.status)
        if status.status == MessageStatus.FAILED and status.errors:
            error = status.errors[0]
            last_error[wamid] = (error.code, (error.title or "")[:300], error.details)
        if status.pricing and wamid not in first_pricing:
            first_pricing[wamid] = status.pricing
        if status.status == MessageStatus.FAILED and any(e.code == 131050 for e in status.errors):
            refusals.append(wamid)

    outbound = Message.objects.filter(direction=Direction.OUTBOUND)
    by_status: dict[tuple[int, str], list[str]] = defaultdict(list)
    for wamid, rank_status in best.items():
        by_status[rank_status].append(wamid)
    for (rank, value), wamids in by_status.items():
        for chunk in _chunks(wamids):
            outbound.filter(wamid__in=chunk, status_rank__lt=rank).update(
                status=value, status_rank=rank
            )
    by_error: dict[tuple, list[str]] = defaultdict(list)
    for wamid, error in last_error.items():
        by_error[error].append(wamid)
    for (code, title, details), wamids in by_error.items():
        for chunk in _chunks(wamids):
            record_meta_failures(outbound.filter(wamid__in=chunk), code, title)
            outbound.filter(wamid__in=chunk).update(
                error_code=code, error_title=title, error_details=details
            )
    by_pricing: dict[str, tuple[dict, list[str]]] = {}
    for wamid, pricing in first_pricing.items():
        key = json.dumps(pricing, sort_keys=True, default=str)
        by_pricing.setdefault(key, (pricing, []))[1].append(wamid)
    for pricing, wamids in by_pricing.values():
        for chunk in _chunks(wamids):
            outbound.filter(wamid__in=chunk, pricing__isnull=True).update(pricing=pricing)

    if refusals:
        for wamid in refusals:
            for message in outbound.filter(wamid=wamid).select_related("conversation__contact"):
                record_meta_marketing_refusal(message, wamid)

    # Charges: every pricing object in journal order, as one by one (the first status naming
    # a wamid and category wins, in the batch as against stored charges).
    priced = [priced_status(number, status) for number, status in known if status.pricing]
    if priced:
        record_charges(known[0][0].tenant_id, priced)


# The functions the one-by-one path is made of. When one of them is replaced at runtime (fault
# injection in tests, instrumentation), the batched path would silently bypass the replacement;
# `per_event_functions_replaced()` tells the drain to use the one-by-one path instead.
_PER_EVENT_FUNCTIONS = (
    "ingest_event",
    "_ingest_change",
    "upsert_contact",
    "get_or_create_conversation",
    "ingest_inbound_message",
    "_touch_conversation",
    "apply_status",
    "_attach_wamid",
)
_ORIGINALS = {name: globals()[name] for name in _PER_EVENT_FUNCTIONS}


def original(name: str):
    return _ORIGINALS[name]


def per_event_functions_replaced() -> bool:
    module = globals()
    return any(module[name] is not function for name, function in _ORIGINALS.items())
