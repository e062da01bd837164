"""The contact book, streamed: every contact of one tenant with its activity and current consent
per scope, read in keyset chunks over the primary key (never the whole book in memory, and no
long-held cursor, so it also works behind PgBouncer), formatted as CSV or JSON lines.

Per chunk of contacts: one query for the contacts, one for their conversations' counts and last
inbound, one for their last outbound message, one for their consent events. Everything is
filtered by the tenant explicitly (the scoped manager is the safety net), so an export never
holds another tenant's row.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, connections
from django.db.models import CharField, Count, Func, Max, OuterRef, Subquery

from apps.audit.presentation import neutralise_cell
from apps.consent.models import ConsentEvent
from apps.consent.services import fold_ledger
from apps.conversations.models import Contact, Conversation, Direction, Message
from apps.tenants.scoping import tenant_scope

CHUNK = 5000

COLUMNS = [
    "contact_id",
    "phone",
    "bsuid",
    "username",
    "name",
    "created_at",
    "last_inbound_at",
    "last_outbound_at",
    "conversations",
    "consent_all",
    "consent_all_since",
    "consent_all_source",
    "consent_marketing",
    "consent_marketing_since",
    "consent_marketing_source",
]


@dataclass
class _Event:
    scope: str
    kind: str
    occurred_at: datetime | str  # as the database gives it; `_iso` formats it
    source: str


class IsoTimestamp(Func):
    """A timestamp as ISO 8601 text in UTC with microseconds. PostgreSQL formats it itself:
    parsing each timestamp into a datetime only to print it again was the export's largest
    cost. Other databases return the value, formatted by `_iso`."""

    output_field = CharField()

    def as_sql(self, compiler, connection, **extra_context):
        return compiler.compile(self.source_expressions[0])

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return (
            f"to_char(({sql}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
            params,
        )


def _iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if "T" in value:  # formatted by the database
            return value
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def contact_rows(tenant_id: Any, *, chunk: int = CHUNK) -> Iterator[list[Any]]:
    """One list of values per contact, in COLUMNS order, ordered by contact id.

    Each chunk is read inside the tenant's scope, entered here because a streamed response is
    read after the request's own scope has closed; the scope is left again before the chunk's
    rows are handed out, so it never leaks into whoever consumes them. On PostgreSQL, outside a
    transaction, the next chunk is read on a second connection while this one is formatted
    (`_rows_read_ahead`): the database's work and Python's then overlap."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        yield from _rows_read_ahead(tenant_id, chunk)
        return
    last = None
    while True:
        with tenant_scope(tenant_id):
            rows = _chunk_rows(tenant_id, last, chunk)
        yield from rows
        if len(rows) < chunk:
            return
        last = rows[-1][0]


def _rows_read_ahead(tenant_id: Any, chunk: int) -> Iterator[list[Any]]:
    """The chunks read by one worker thread, one ahead of the reader. The thread has its own
    connection (Django's are per thread), closed when the export ends or is abandoned. Only
    outside a transaction: the second connection sees committed rows only."""

    def read(last):
        with tenant_scope(tenant_id):
            return _chunk_rows(tenant_id, last, chunk)

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contact-export")
    pending = reader.submit(read, None)
    try:
        while True:
            rows = pending.result()
            pending = reader.submit(read, rows[-1][0]) if len(rows) == chunk else None
            yield from rows
            if pending is None:
                return
    finally:
        if pending is not None:
            pending.cancel() or pending.exception()  # wait for a read in flight
        # The same single thread closes the connection it opened.
        reader.submit(connections.close_all).result()
        reader.shutdown()


def _chunk_rows(tenant_id: Any, last: str | None, chunk: int) -> list[list[Any]]:
    contacts = Contact.objects.filter(tenant_id=tenant_id)
    if last is not None:
        contacts = contacts.filter(pk__gt=last)
    page = list(
        contacts.order_by("pk")
        .annotate(created=IsoTimestamp("created_at"))
        .values_list("pk", "wa_id", "user_id", "username", "profile_name", "created")[:chunk]
    )
    if not page:
        return []
    # The other queries select the chunk's rows by its range of contact ids, through indexes
    # on (tenant, contact): exactly this tenant's rows of the chunk, two parameters, where an
    # IN list would bind thousands and a join lets the planner hash the tenant's whole table
    # for every chunk.
    in_chunk = {"contact_id__gte": page[0][0], "contact_id__lte": page[-1][0]}
    # Each conversation's last outbound message is found through the thread index
    # (conversation, sent_at), newest first; a join over the chunk's messages would let the
    # planner scan the tenant's every message for every chunk.
    last_outbound = (
        Message.objects.filter(
            tenant_id=tenant_id, conversation=OuterRef("pk"), direction=Direction.OUTBOUND
        )
        .order_by("-sent_at")
        .values("sent_at")[:1]
    )
    activity = {
        row["contact_id"]: row
        for row in Conversation.objects.filter(tenant_id=tenant_id, **in_chunk)
        .values("contact_id")
        .annotate(
            count=Count("id"),
            last_inbound=IsoTimestamp(Max("last_inbound_at")),
            last_outbound=IsoTimestamp(Max(Subquery(last_outbound))),
        )
    }
    ledgers: dict[Any, list[_Event]] = defaultdict(list)
    for contact_id, scope, kind, occurred_at, source in (
        ConsentEvent.objects.filter(tenant_id=tenant_id, **in_chunk)
        .order_by("contact_id", "occurred_at", "created_at")
        .annotate(at=IsoTimestamp("occurred_at"))
        .values_list("contact_id", "scope", "kind", "at", "source")
    ):
        ledgers[contact_id].append(_Event(scope, kind, occurred_at, source))
    rows = []
    for pk, wa_id, user_id, username, name, created_at in page:
        conversations = activity.get(pk)
        fold = fold_ledger(ledgers.get(pk, ()))
        rows.append(
            [
                str(pk),
                wa_id,  # digits without "+", as WhatsApp gives them: no cell starts with "+"
                user_id,
                username,
                name,
                _iso(created_at),
                _iso(conversations["last_inbound"] if conversations else None),
                _iso(conversations["last_outbound"] if conversations else None),
                conversations["count"] if conversations else 0,
                fold.everything.kind or "",
                _iso(fold.everything.since),
                fold.everything.source,
                fold.marketing.kind or "",
                _iso(fold.marketing.since),
                fold.marketing.source,
            ]
        )
    return rows


# Rows per piece handed to the server: one write per piece, not one per row.
ROWS_PER_PIECE = 1000


def csv_pieces(rows: Iterator[list[Any]]) -> Iterator[str]:
    """The header at once (the first byte does not wait for a query), then CSV text in pieces
    of ROWS_PER_PIECE rows. The cells that hold text from Meta or a customer (phone, BSUID,
    username, name) are neutralised when they look like a formula; the others are ids, dates,
    counts and ledger codes written here, which never start with a formula character."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    yield buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    count = 0
    for row in rows:
        row[1:5] = [neutralise_cell(value) for value in row[1:5]]
        writer.writerow(row)
        count += 1
        if count == ROWS_PER_PIECE:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            count = 0
    if count:
        yield buffer.getvalue()


def jsonl_pieces(rows: Iterator[list[Any]]) -> Iterator[str]:
    """One JSON object per contact and line (values as they are: JSON is not run by
    spreadsheets), in pieces of ROWS_PER_PIECE lines."""
    lines = []
    for row in rows:
        lines.append(json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False))
        if len(lines) == ROWS_PER_PIECE:
            yield "\n".join(lines) + "\n"
            lines = []
    if lines:
        yield "\n".join(lines) + "\n"


FORMATS = {"csv": csv_pieces, "jsonl": jsonl_pieces}
