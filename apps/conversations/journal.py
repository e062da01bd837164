"""The webhook journal: written by the webhook view, drained in batches by a worker.

Every 200 Klaros gives Meta means a committed journal row. A burst of webhooks schedules one
drain task (a flag row coalesces requests), and a periodic sweep catches anything a lost task
left behind. The drain claims rows with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (on
SQLite the IMMEDIATE transaction already serialises writers), processes a batch inside one
transaction with a savepoint per entry, and commits once per batch.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.tenants.models import MetaApp

from .ingest import NumberDirectory, ingest_event
from .models import JournalDrainFlag, WebhookEvent, WebhookState

logger = logging.getLogger(__name__)

DRAIN_TASK = "apps.conversations.tasks.drain_webhook_journal"
MAX_BACKOFF = timedelta(hours=1)


def journal_webhook(app: MetaApp, body: bytes) -> WebhookEvent:
    """Commit a verified body to the journal and make sure a drain is scheduled after commit."""
    with transaction.atomic():
        event = WebhookEvent.objects.create(app=app, body=body)
        request_drain()
    return event


def request_drain() -> None:
    """Schedule one drain task unless one is already scheduled (inside the caller's transaction;
    the task is enqueued after commit)."""
    flag_taken = JournalDrainFlag.objects.filter(pk=1, scheduled=False).update(
        scheduled=True, scheduled_at=timezone.now()
    )
    if not flag_taken and not JournalDrainFlag.objects.filter(pk=1).exists():
        JournalDrainFlag.objects.get_or_create(
            pk=1, defaults={"scheduled": True, "scheduled_at": timezone.now()}
        )
        flag_taken = 1
    if flag_taken:
        transaction.on_commit(_enqueue_drain)


def _enqueue_drain() -> None:
    from django_q.tasks import async_task

    try:
        async_task(DRAIN_TASK, task_name=None, q_options={"group": "webhook-drain"})
    except Exception:
        # The broker is down: release the flag so the periodic sweep (or the next webhook)
        # schedules a drain. The journal row itself is already committed.
        logger.exception("could not enqueue the journal drain; the sweep will pick it up")
        JournalDrainFlag.objects.filter(pk=1).update(scheduled=False)


def _claimable(now) -> Q:
    return Q(state=WebhookState.PENDING) | Q(state=WebhookState.FAILED, next_attempt_at__lte=now)


def drain_batch(batch_size: int = 200, directory: NumberDirectory | None = None) -> int:
    """Claim and process up to `batch_size` journal rows in one transaction; returns how many."""
    now = timezone.now()
    directory = directory or NumberDirectory()
    with transaction.atomic():
        queryset = WebhookEvent.objects.filter(_claimable(now)).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            queryset = queryset.select_for_update(skip_locked=True)
        events = list(queryset[:batch_size])
        for event in events:
            process_claimed_event(event, directory)
    return len(events)


def process_claimed_event(event: WebhookEvent, directory: NumberDirectory) -> None:
    event.attempts += 1
    try:
        with transaction.atomic():
            result = ingest_event(event, directory)
    except Exception as exc:
        logger.warning("webhook #%s failed (attempt %s): %s", event.pk, event.attempts, exc)
        event.state = WebhookState.FAILED
        event.reason = f"{type(exc).__name__}: {exc}"[:2000]
        backoff = min(timedelta(seconds=2 ** min(event.attempts, 12)), MAX_BACKOFF)
        event.next_attempt_at = timezone.now() + backoff * random.uniform(1.0, 1.5)  # noqa: S311
    else:
        event.counts = dict(result.counts)
        event.processed_at = timezone.now()
        event.next_attempt_at = None
        if result.quarantined:
            event.state = WebhookState.QUARANTINED
            event.reason = "\n".join(result.quarantined)[:4000]
        else:
            event.state = WebhookState.PROCESSED
            event.reason = ""
    event.save(
        update_fields=["attempts", "state", "reason", "next_attempt_at", "processed_at", "counts"]
    )


def drain_journal(batch_size: int = 200, time_budget: float = 50.0) -> int:
    """Drain until the journal is empty or the time budget is spent; returns rows processed."""
    # Clear the flag first: anything journaled from now on schedules a new task, and anything
    # journaled before is drained by this loop.
    JournalDrainFlag.objects.filter(pk=1).update(scheduled=False)
    directory = NumberDirectory()
    deadline = time.monotonic() + time_budget
    total = 0
    while time.monotonic() < deadline:
        done = drain_batch(batch_size, directory)
        total += done
        if done < batch_size:
            break
    else:
        with transaction.atomic():
            request_drain()  # more work left: continue in a fresh task
    return total


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
    has_work = WebhookEvent.objects.filter(_claimable(now)).exists()
    if not has_work:
        return 0
    with transaction.atomic():
        JournalDrainFlag.objects.filter(pk=1, scheduled=True, scheduled_at__lt=stale).update(
            scheduled=False
        )
        request_drain()
    return 1
