"""The webhook journal: written by the webhook view, drained in batches by a worker.

Every 200 Klaros gives Meta means a committed journal row. A burst of webhooks schedules one
drain task (a flag row coalesces requests), and a periodic sweep catches anything a lost task
left behind. The drain claims rows with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (on
SQLite the IMMEDIATE transaction already serialises writers), processes a batch inside one
transaction (set-wise, see `ingest.ingest_batch`, falling back to a savepoint per entry when the
batched pass fails), and commits once per batch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from apps.tenants.models import MetaApp

from ..models import JournalDrainFlag, WebhookEvent, WebhookState
from ..scheduling import CoalescedTask
from . import ingest
from .compiled import CompiledInsert
from .ingest import (
    NumberDirectory,
    ingest_batch,
    ingest_event,
    needs_per_event_path,
    parse_notification,
)

logger = logging.getLogger(__name__)

DRAIN_TASK = "apps.conversations.tasks.drain_webhook_journal"
MAX_BACKOFF = timedelta(hours=1)
# How long a lingering drain waits before it looks for new rows again. Under a steady stream
# this sets the batch size (rows that arrive meanwhile are claimed together), so it trades
# drain CPU for lag: at 0.05 s a 300 webhooks/s stream came in batches of ~15 and the drain
# cost twice the worker and database CPU per webhook of 0.25 s batches, which add at most a
# quarter second to the ingest lag.
DRAIN_POLL_SECONDS = 0.25
# How long an ending drain waits for the journal's writers before its final check (below).
JOURNAL_LOCK_TIMEOUT = "200ms"


def journal_webhook(app: MetaApp, body: bytes) -> WebhookEvent:
    """Commit a verified body to the journal, then make sure a drain is scheduled.

    The row is inserted on its own (committed when this returns, outside any caller
    transaction). No row may be stranded by a drain that is just ending: the drain clears its
    flag, then checks the journal once more, so the webhook must read the flag in a way that
    sees that clear whenever the drain's check could have missed the row:

    * on PostgreSQL the flag is read in the INSERT statement itself (one round trip per
      webhook). The drain's final check first takes a SHARE lock on the journal table, which
      waits for every INSERT in flight. An INSERT whose snapshot predates the clear therefore
      commits before that check, which sees its row (or, if the lock is not granted within
      JOURNAL_LOCK_TIMEOUT, the drain schedules another drain); any later INSERT sees the
      cleared flag;
    * elsewhere the flag is read after the commit (two round trips).

    Both statements are compiled once per process (`compiled.py`). A failure to schedule after
    the commit is logged, not raised: the row is durable and the periodic sweep schedules its
    drain.
    """
    if connection.vendor == "postgresql":
        event, (flag,) = _insert_event(_INSERT_READING_FLAG, app, body)
        scheduled = bool(flag)  # NULL: no flag row yet
    else:
        event, _ = _insert_event(_INSERT_EVENT, app, body)
        scheduled = None
    try:
        if scheduled is None:
            scheduled = DRAIN.is_scheduled()
        if not scheduled:
            with transaction.atomic():
                request_drain()
    except DatabaseError:
        logger.exception("webhook #%s journaled, but its drain could not be scheduled", event.pk)
    return event


def _drain_flag_subquery(connection) -> str:
    qn = connection.ops.quote_name
    meta = JournalDrainFlag._meta
    scheduled = meta.get_field("scheduled").column
    # Quoted names from the model's own metadata; no value is interpolated.
    table, pk = qn(meta.db_table), qn(meta.pk.column)
    return f"(SELECT {qn(scheduled)} FROM {table} WHERE {pk} = 1)"  # noqa: S608


# Only the body and its app are sent; the other columns take their database defaults.
_JOURNALED = ("app", "body")
_INSERT_EVENT = CompiledInsert(WebhookEvent, only=_JOURNALED)
_INSERT_READING_FLAG = CompiledInsert(
    WebhookEvent, only=_JOURNALED, also_return=_drain_flag_subquery
)


def _insert_event(insert: CompiledInsert, app: MetaApp, body: bytes) -> tuple[WebhookEvent, tuple]:
    """The journal INSERT doubles as the check that the persistent connection still works.

    With CONN_HEALTH_CHECKS, Django would first send `SELECT 1` on a reused connection: one more
    round trip on every webhook. Here the INSERT is sent straight away; if the connection died
    while idle (a database restart), which is what the check would have found, it is reopened
    and the INSERT sent once more. Had the first INSERT committed after all, the journal holds
    the body twice, which ingest treats like any duplicate delivery from Meta.
    """
    if connection.in_atomic_block or not connection.health_check_enabled:
        return insert.create(app=app, body=body)
    fresh = connection.connection is None
    connection.health_check_done = True
    try:
        return insert.create(app=app, body=body)
    except (InterfaceError, OperationalError):
        if fresh:
            raise
        logger.warning("journal: the database connection was lost; reconnecting once")
        connection.close()
    return insert.create(app=app, body=body)


DRAIN = CoalescedTask(JournalDrainFlag, DRAIN_TASK, group="webhook-drain", label="journal drain")
request_drain = DRAIN.request
_enqueue_drain = DRAIN.enqueue


def _claimable_sets(now) -> tuple:
    """The rows due for processing, as two querysets each served by a partial index of its own
    (`WebhookEvent.Meta`): failed rows whose retry is due, and pending rows. One query with the
    OR of both conditions would be planned as a walk over the whole journal, which keeps every
    processed row for the retention period."""
    due = WebhookEvent.objects.filter(state=WebhookState.FAILED, next_attempt_at__lte=now)
    return due.order_by("next_attempt_at"), WebhookEvent.objects.filter(
        state=WebhookState.PENDING
    ).order_by("id")


def _has_claimable(now) -> bool:
    return any(queryset.exists() for queryset in _claimable_sets(now))


def _claim(now, limit: int) -> list[WebhookEvent]:
    """Lock up to `limit` rows due for processing, returned in journal order: failed rows whose
    retry is due first (they are older), then pending rows.

    With SKIP LOCKED (PostgreSQL) both sets are locked in one statement, each in a CTE of its
    own so each keeps its partial index; elsewhere (SQLite, whose write transaction already
    excludes other drains) they are two queries.
    """
    due, pending = _claimable_sets(now)
    if connection.features.has_select_for_update_skip_locked:
        parts = [
            queryset.select_for_update(skip_locked=True).values("pk")[:limit].query
            for queryset in (due, pending)
        ]
        (due_sql, due_params), (pending_sql, pending_params) = (
            part.sql_with_params() for part in parts
        )
        qn = connection.ops.quote_name
        table, pk = qn(WebhookEvent._meta.db_table), qn(WebhookEvent._meta.pk.column)
        # The CTEs are the ORM's own SQL (each selects the id as "pk"); only quoted names are
        # interpolated.
        sql = (
            f"WITH due AS ({due_sql}), pending AS ({pending_sql})"  # noqa: S608
            f" SELECT journal.* FROM {table} AS journal JOIN"
            ' (SELECT "pk" FROM due UNION ALL SELECT "pk" FROM pending) AS claimed'
            f' ON journal.{pk} = claimed."pk" ORDER BY journal.{pk}'
        )
        events = list(WebhookEvent.objects.raw(sql, [*due_params, *pending_params]))
        return events[:limit]
    events: list[WebhookEvent] = []
    for queryset in (due, pending):
        if len(events) < limit:
            events.extend(queryset[: limit - len(events)])
    events.sort(key=lambda event: event.pk)
    return events


def drain_batch(
    batch_size: int = 200, directory: NumberDirectory | None = None, *, batched: bool = True
) -> int:
    """Claim and process up to `batch_size` journal rows in one transaction; returns how many.

    `batched` (the default) processes the claimed rows set-wise (`ingest_batch`); False is the
    one-event-at-a-time path, a savepoint per row (the benchmark's baseline, and the fallback).
    """
    now = timezone.now()
    directory = directory or NumberDirectory()
    with transaction.atomic():
        events = _claim(now, batch_size)
        if batched and _batching_possible():
            _process_batched(events, directory)
        else:
            for event in events:
                process_claimed_event(event, directory)
    return len(events)


def _batching_possible() -> bool:
    # The batched path re-implements `ingest_event` set-wise. If `ingest_event` or one of the
    # functions it is made of was replaced at runtime (fault injection, instrumentation), honour
    # the replacement by processing one event at a time.
    return ingest_event is ingest.original("ingest_event") and not (
        ingest.per_event_functions_replaced()
    )


def _process_batched(events: list[WebhookEvent], directory: NumberDirectory) -> None:
    """Parse every claimed row, then process runs of consecutive rows together; rows that need
    the per-event path (see `needs_per_event_path`) are processed alone, in journal order. A run
    whose batched pass raises is rolled back and processed one row at a time, each in its own
    savepoint, so a poison row fails alone and keeps its own reason. Journal rows are marked
    with a few grouped UPDATEs at the end."""
    run: list[tuple[WebhookEvent, object]] = []
    for event in events:
        event.attempts += 1
        try:
            notification = parse_notification(bytes(event.body))
        except Exception as exc:  # the same failure `ingest_event` would raise
            _mark_failed(event, exc)
            continue
        if needs_per_event_path(notification):
            _process_run(run, directory)
            run = []
            _process_one(event, directory)
        else:
            run.append((event, notification))
    _process_run(run, directory)
    _save_states(events)


def _process_run(run: list[tuple[WebhookEvent, object]], directory: NumberDirectory) -> None:
    if not run:
        return
    try:
        with transaction.atomic():
            results = ingest_batch(run, directory)
    except Exception as exc:
        logger.warning(
            "batched ingest of %s webhooks failed (%s: %s); processing them one by one",
            len(run),
            type(exc).__name__,
            exc,
        )
        for event, _notification in run:
            _process_one(event, directory)
        return
    processed_at = timezone.now()
    for (event, _notification), result in zip(run, results, strict=True):
        _mark_done(event, result, processed_at)


def process_claimed_event(event: WebhookEvent, directory: NumberDirectory) -> None:
    event.attempts += 1
    _process_one(event, directory)
    event.save(update_fields=_STATE_FIELDS)


_STATE_FIELDS = ["attempts", "state", "reason", "next_attempt_at", "processed_at", "counts"]


def _process_one(event: WebhookEvent, directory: NumberDirectory) -> None:
    """Process one claimed row in its own savepoint and set its state (not saved)."""
    try:
        with transaction.atomic():
            result = ingest_event(event, directory)
    except Exception as exc:
        _mark_failed(event, exc)
    else:
        _mark_done(event, result, timezone.now())


def _mark_failed(event: WebhookEvent, exc: Exception) -> None:
    logger.warning("webhook #%s failed (attempt %s): %s", event.pk, event.attempts, exc)
    event.state = WebhookState.FAILED
    event.reason = f"{type(exc).__name__}: {exc}"[:2000]
    backoff = min(timedelta(seconds=2 ** min(event.attempts, 12)), MAX_BACKOFF)
    event.next_attempt_at = timezone.now() + backoff * random.uniform(1.0, 1.5)  # noqa: S311


def _mark_done(event: WebhookEvent, result, processed_at) -> None:
    event.counts = dict(result.counts)
    event.processed_at = processed_at
    event.next_attempt_at = None
    if result.quarantined:
        event.state = WebhookState.QUARANTINED
        event.reason = "\n".join(result.quarantined)[:4000]
    else:
        event.state = WebhookState.PROCESSED
        event.reason = ""


def _save_states(events: list[WebhookEvent]) -> None:
    """One UPDATE per distinct outcome (a uniform batch is one statement)."""
    groups: dict[tuple, list[int]] = {}
    for event in events:
        values = tuple(getattr(event, name) for name in _STATE_FIELDS[:-1])
        key = (*values, json.dumps(event.counts))
        groups.setdefault(key, []).append(event.pk)
    for key, ids in groups.items():
        values = dict(zip(_STATE_FIELDS[:-1], key[:-1], strict=True))
        WebhookEvent.objects.filter(pk__in=ids).update(**values, counts=json.loads(key[-1]))


def drain_journal(
    batch_size: int = 200, time_budget: float = 50.0, linger: float | None = None
) -> int:
    """Drain until the journal is empty or the time budget is spent; returns rows processed.

    The flag stays set while this task drains and lingers (a short wait for more webhooks), so
    a steady stream of webhooks is served by one long-running task instead of enqueuing a task
    every few requests. On the way out the flag is cleared and the journal checked once more
    (`journal_webhook` explains why no row committed meanwhile is stranded); the periodic sweep
    stays the safety net for a task that was lost.
    """
    if linger is None:
        # Inline tasks (tests, sync mode) run inside a request: never wait there.
        inline = settings.Q_CLUSTER.get("sync", False)
        linger = 0.0 if inline else float(getattr(settings, "KLAROS_DRAIN_LINGER_SECONDS", 1.0))
    directory = NumberDirectory()
    deadline = time.monotonic() + time_budget
    total = 0
    idle_since = None
    while time.monotonic() < deadline:
        done = drain_batch(batch_size, directory)
        total += done
        if done:
            idle_since = None
            if done == batch_size:
                continue
        now = time.monotonic()
        idle_since = idle_since or now
        if now - idle_since >= linger:
            break
        time.sleep(DRAIN_POLL_SECONDS)
    else:
        with transaction.atomic():
            DRAIN.clear()
            request_drain()  # more work left: continue in a fresh task
        return total
    DRAIN.clear()
    if _work_left_after_clearing():
        with transaction.atomic():
            request_drain()
    return total


def _work_left_after_clearing() -> bool:
    """The final check of an ending drain, after its flag was cleared (see `journal_webhook`:
    on PostgreSQL, wait for the journal INSERTs in flight, which may have read the flag before
    it was cleared, to commit).

    Webhook INSERTs take well under a millisecond, but the SHARE lock also waits for any other
    transaction writing the journal (a second drain's batch, a replay), and webhooks queue
    behind a waiting lock. So it waits at most JOURNAL_LOCK_TIMEOUT; if that is not enough, it
    answers that work may be left, and the drain it schedules finds out.
    """
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    table = connection.ops.quote_name(WebhookEvent._meta.db_table)
                    cursor.execute(f"SET LOCAL lock_timeout = '{JOURNAL_LOCK_TIMEOUT}'")
                    cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            return _has_claimable(timezone.now())
    except OperationalError:
        logger.info("journal busy at the end of a drain; scheduling another to be sure")
        return True


def replay_quarantined(ids: list[int] | None = None) -> int:
    """Send quarantined rows (all, or the given ids) through routing again, e.g. after the
    number they name was connected. Already-stored messages stay single."""
    with transaction.atomic():
        queryset = WebhookEvent.objects.filter(state=WebhookState.QUARANTINED)
        if ids is not None:
            queryset = queryset.filter(pk__in=ids)
        count = queryset.update(state=WebhookState.PENDING, next_attempt_at=None)
        if count:
            request_drain()
    return count


def sweep_journal() -> int:
    """Periodic safety net: schedule a drain when claimable rows exist but no task is queued
    (a lost task, a flushed broker)."""
    now = timezone.now()
    stale = now - timedelta(minutes=5)
    if not _has_claimable(now):
        return 0
    with transaction.atomic():
        DRAIN.reset_if_stale(stale)
        request_drain()
    return 1


PRUNE_CHUNK = 2_000


def prune_journal(*, chunk: int = PRUNE_CHUNK, time_budget: float = 20.0) -> int:
    """Delete processed rows received more than KLAROS_JOURNAL_RETENTION_DAYS ago; returns how
    many. Run by the periodic sweep, in chunks of `chunk` rows (each its own transaction, so
    webhooks and the drain never wait long) until none are left or `time_budget` seconds are
    spent; the next sweep goes on. Pending, failed and quarantined rows are never deleted."""
    cutoff = timezone.now() - timedelta(days=settings.KLAROS_JOURNAL_RETENTION_DAYS)
    expired = WebhookEvent.objects.filter(state=WebhookState.PROCESSED, received_at__lt=cutoff)
    deadline = time.monotonic() + time_budget
    deleted = 0
    while time.monotonic() < deadline:
        ids = list(expired.order_by("received_at").values_list("pk", flat=True)[:chunk])
        if not ids:
            break
        with transaction.atomic():
            # Error reports keep their text; they lose the link to the body (SET_NULL). The
            # rows are loaded for that, without their bodies.
            expired.filter(pk__in=ids).only("pk").delete()
        deleted += len(ids)
        if len(ids) < chunk:
            break
    if deleted:
        logger.info("journal: deleted %s processed webhook bodies past retention", deleted)
    return deleted
