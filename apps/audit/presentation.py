"""Audit events as a person reads them: who acted (an email, resolved when shown: the row keeps
ids only, so erasing a user never rewrites history), what was touched, and the data as short
"key: value" pairs. Shared by the operator admin and the tenant's Activity page; everything
returned is plain text, escaped by the templates that show it."""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model

from .models import AuditEvent

SUMMARY_ITEMS = 6
SUMMARY_VALUE_LENGTH = 80

# What an actor string other than a user means, for people.
ACTOR_KINDS = {
    "system": "Klaros",
    "meta": "Meta",
    "customer": "The customer",
    "command": "A management command",
    "test": "A test",
    "anonymous": "An anonymous visitor",
}


def actor_emails(events: Iterable[AuditEvent]) -> dict[str, str]:
    """The email of every user or operator among the events' actors, in one query."""
    ids = set()
    for event in events:
        if event.actor_type in ("user", "operator") and event.actor_id:
            try:
                ids.add(uuid.UUID(event.actor_id))
            except ValueError:
                continue
    if not ids:
        return {}
    users = get_user_model().objects.filter(pk__in=ids).values_list("pk", "email")
    return {str(pk): email for pk, email in users}


def actor_label(event: AuditEvent, emails: dict[str, str], *, show_operators: bool = True) -> str:
    if event.actor_type in ("user", "operator"):
        if event.actor_type == "operator" and not show_operators:
            return "A Klaros operator"
        email = emails.get(event.actor_id)
        if email is None:
            return "A former user" if event.actor_type == "user" else "A former operator"
        return email
    kind = ACTOR_KINDS.get(event.actor_type, event.actor_type or "Unknown")
    return f"{kind} ({event.actor_id})" if event.actor_id else kind


def object_label(event: AuditEvent) -> str:
    """The object as a person reads it: its model's name and the start of its id (the full id
    is on the detail page and in the CSV)."""
    if not event.object_type:
        return ""
    try:
        name = str(apps.get_model(event.object_type)._meta.verbose_name)
    except (LookupError, ValueError):
        name = event.object_type.rsplit(".", 1)[-1]
    name = name[:1].upper() + name[1:]
    return f"{name} {event.object_id[:8]}" if event.object_id else name


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > SUMMARY_VALUE_LENGTH:
        text = text[: SUMMARY_VALUE_LENGTH - 1] + "…"
    return text


def data_items(data: Any) -> list[tuple[str, str]]:
    """Every key of the event's data as (label, short text)."""
    if not isinstance(data, dict):
        return [("data", _short(data))] if data not in (None, "", [], {}) else []
    return [(str(key).replace("_", " "), _short(value)) for key, value in data.items()]


def data_summary(data: Any) -> str:
    items = data_items(data)
    text = "; ".join(f"{label}: {value}" for label, value in items[:SUMMARY_ITEMS])
    if len(items) > SUMMARY_ITEMS:
        text += f"; and {len(items) - SUMMARY_ITEMS} more"
    return text


def label_events(events: list[AuditEvent], *, show_operators: bool = True) -> list[AuditEvent]:
    """Give each event `actor_label`, `object_label` and `data_summary` for display."""
    emails = actor_emails(events)
    for event in events:
        event.actor_label = actor_label(event, emails, show_operators=show_operators)
        event.object_label = object_label(event)
        event.data_summary = data_summary(event.data)
    return events


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "created_at",
    "chain",
    "seq",
    "tenant_id",
    "action",
    "actor_type",
    "actor_id",
    "actor",
    "object_type",
    "object_id",
    "data",
    "hash",
]
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> str:
    """The value as CSV text that no spreadsheet evaluates: a formula-looking cell gets a
    leading apostrophe (OWASP's advice for CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


class _Echo:
    """A file-like object whose write returns the line, for csv.writer inside a generator."""

    def write(self, value: str) -> str:
        return value


def stream_events_csv(
    queryset, *, chunk_size: int = 2000, show_operators: bool = True
) -> Iterator[str]:
    """CSV lines of the events in `queryset`, newest first, read in keyset chunks over the
    primary key (never the whole log in memory, and no sort of the whole log per chunk), actors
    resolved per chunk. Build `queryset` inside the caller's scope: its tenant filter is part of
    it, so the chunks read later (while the response streams, after the request's scope has
    closed) see no other tenant's rows."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    queryset = queryset.order_by("-id")
    last: int | None = None
    while True:
        page = queryset if last is None else queryset.filter(id__lt=last)
        events = list(page[:chunk_size])
        if not events:
            return
        emails = actor_emails(events)
        for event in events:
            yield writer.writerow(
                [
                    neutralise_cell(v)
                    for v in (
                        event.created_at.isoformat(),
                        event.chain,
                        event.seq,
                        event.tenant_id or "",
                        event.action,
                        event.actor_type,
                        event.actor_id,
                        actor_label(event, emails, show_operators=show_operators),
                        event.object_type,
                        event.object_id,
                        json.dumps(event.data, ensure_ascii=False, sort_keys=True, default=str),
                        event.hash,
                    )
                ]
            )
        last = events[-1].pk
        if len(events) < chunk_size:
            return
