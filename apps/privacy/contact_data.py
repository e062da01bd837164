"""A contact's own data, for an access request: one ZIP with what the workspace holds about them.

- `contact.json`: the profile, the conversations, the consent ledger with its evidence, the
  internal notes, and a list of the media files in the archive;
- `messages.jsonl`: every message in and out, one per line (type, text, content, times, status
  and the status history Meta reported);
- `media/`: the stored files themselves;
- `README.txt`: a short summary a person can read.

Messages and media are written as they are read (an iterator over the messages, a copy per
file), so a long history does not sit in memory.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from django.utils import timezone

from apps.consent.models import ConsentEvent
from apps.conversations.models import Contact, Conversation, Direction, Message, StatusEvent
from apps.media.models import MediaObject
from apps.media.storage import media_storage

MESSAGE_CHUNK = 2000
_NOT_DIGITS = re.compile(r"[\s+()\-.]")


class ContactNotFound(LookupError):
    """No contact of the tenant has that phone number or WhatsApp user id."""


@dataclass
class BundleSummary:
    messages: int = 0
    notes: int = 0
    consent_events: int = 0
    media_files: int = 0
    media_missing: int = 0


def find_contact(tenant_id: Any, identity: str) -> Contact:
    """The tenant's contact with this phone number (any common spelling) or BSUID.
    Call inside the tenant's scope."""
    identity = (identity or "").strip()
    if not identity:
        raise ContactNotFound("Give the contact's phone number or WhatsApp user id.")
    digits = _NOT_DIGITS.sub("", identity)
    contacts = Contact.objects.filter(tenant_id=tenant_id)
    found = contacts.filter(wa_id=digits).first() if digits.isdigit() else None
    found = found or contacts.filter(user_id=identity).first()
    if found is None:
        raise ContactNotFound(f"No contact with the number or user id {identity!r}.")
    return found


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _profile(contact: Contact) -> dict[str, Any]:
    return {
        "id": str(contact.pk),
        "phone": contact.phone_display,
        "whatsapp_user_id": contact.user_id,
        "username": contact.username,
        "profile_name": contact.profile_name,
        "first_seen": _iso(contact.created_at),
        "updated": _iso(contact.updated_at),
    }


def _conversations(contact: Contact) -> list[dict[str, Any]]:
    return [
        {
            "id": str(c.pk),
            "business_number": c.number.display_phone_number,
            "status": c.status,
            "started": _iso(c.created_at),
            "last_message": _iso(c.last_message_at),
            "last_inbound": _iso(c.last_inbound_at),
        }
        for c in Conversation.objects.filter(tenant_id=contact.tenant_id, contact=contact)
        .select_related("number")
        .order_by("created_at")
    ]


def _consent(contact: Contact) -> list[dict[str, Any]]:
    return [
        {
            "kind": e.kind,
            "scope": e.scope,
            "source": e.source,
            "occurred_at": _iso(e.occurred_at),
            "recorded_at": _iso(e.created_at),
            "actor_type": e.actor_type,
            "evidence": e.evidence,
            "ip_address": e.ip_address,
        }
        for e in ConsentEvent.objects.filter(tenant_id=contact.tenant_id, contact=contact).order_by(
            "occurred_at", "created_at"
        )
    ]


def _messages(contact: Contact) -> Iterator[list[Message]]:
    """The contact's messages (notes included) in keyset chunks, oldest first by id order of
    (sent_at, id)."""
    base = Message.objects.filter(
        tenant_id=contact.tenant_id, conversation__contact=contact
    ).order_by("sent_at", "id")
    last = None
    while True:
        page = base
        if last is not None:
            sent_at, pk = last
            page = page.filter(sent_at__gte=sent_at).exclude(sent_at=sent_at, id__lte=pk)
        chunk = list(page[:MESSAGE_CHUNK])
        if not chunk:
            return
        yield chunk
        last = (chunk[-1].sent_at, chunk[-1].pk)
        if len(chunk) < MESSAGE_CHUNK:
            return


def _status_history(tenant_id: Any, messages: list[Message]) -> dict[str, list[dict]]:
    wamids = [m.wamid for m in messages if m.wamid and m.direction == Direction.OUTBOUND]
    history: dict[str, list[dict]] = defaultdict(list)
    if wamids:
        for event in StatusEvent.objects.filter(tenant_id=tenant_id, wamid__in=wamids).order_by(
            "occurred_at"
        ):
            history[event.wamid].append(
                {"status": event.status, "at": _iso(event.occurred_at), "errors": event.errors}
            )
    return history


def _message_record(message: Message, statuses: list[dict]) -> dict[str, Any]:
    return {
        "id": str(message.pk),
        "conversation_id": str(message.conversation_id),
        "direction": message.direction,
        "type": message.type,
        "text": message.text,
        "content": {k: v for k, v in (message.content or {}).items() if not k.startswith("_")},
        "sent_at": _iso(message.sent_at),
        "stored_at": _iso(message.created_at),
        "status": message.status,
        "status_history": statuses,
        "error": (
            {"code": message.error_code, "title": message.error_title}
            if message.error_code or message.error_title
            else None
        ),
        "wamid": message.wamid,
    }


def _summary_text(contact: Contact, summary: BundleSummary, created: datetime) -> str:
    name = contact.profile_name or contact.phone_display or contact.user_id
    lines = [
        f"Data held about {name}",
        f"Prepared {created:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Messages in and out: {summary.messages} (messages.jsonl, one per line).",
        f'Internal notes of the business\'s team: {summary.notes} (contact.json, "notes").',
        f"Consent records (opt-ins and opt-outs, with evidence): {summary.consent_events} "
        '(contact.json, "consent").',
        f"Media files: {summary.media_files} (media/)"
        + (
            f"; {summary.media_missing} more were never stored or have been deleted."
            if summary.media_missing
            else "."
        ),
        "",
        "contact.json also holds the profile and the conversations.",
    ]
    return "\n".join(lines) + "\n"


def write_contact_bundle(contact: Contact, out: IO[bytes]) -> BundleSummary:
    """Write the ZIP to `out` (a binary file). Call inside the contact's tenant scope."""
    summary = BundleSummary()
    notes: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    storage = media_storage()
    created = timezone.now()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("messages.jsonl", "w") as lines:
            for chunk in _messages(contact):
                history = _status_history(contact.tenant_id, chunk)
                for message in chunk:
                    if message.direction == Direction.NOTE:
                        summary.notes += 1
                        notes.append(
                            {
                                "id": str(message.pk),
                                "text": message.text,
                                "written_at": _iso(message.sent_at),
                            }
                        )
                        continue
                    summary.messages += 1
                    record = _message_record(message, history.get(message.wamid or "", []))
                    lines.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        for item in MediaObject.objects.filter(
            tenant_id=contact.tenant_id, message__conversation__contact=contact
        ).order_by("created_at"):
            entry = {
                "message_id": str(item.message_id),
                "kind": item.kind,
                "content_type": item.content_type,
                "size": item.size,
                "sha256": item.sha256,
                "file": None,
            }
            if item.is_stored:
                name = f"media/{item.pk}-{item.safe_name or 'file'}"
                with storage.open(item.storage_key, "rb") as source, archive.open(name, "w") as dst:
                    shutil.copyfileobj(source, dst, 1 << 20)
                entry["file"] = name
                summary.media_files += 1
            else:
                summary.media_missing += 1
            media.append(entry)
        consent = _consent(contact)
        summary.consent_events = len(consent)
        document = {
            "prepared_at": _iso(created),
            "profile": _profile(contact),
            "conversations": _conversations(contact),
            "consent": consent,
            "notes": notes,
            "media": media,
        }
        archive.writestr("contact.json", json.dumps(document, ensure_ascii=False, indent=2))
        archive.writestr("README.txt", _summary_text(contact, summary, created))
    return summary
