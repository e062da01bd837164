"""One background task at a time per queue of work (the webhook journal, the outbox).

A single-row flag table coalesces requests: the first request after the flag was cleared sets
it and enqueues the task after commit; every other request sees it set and does nothing. The
task clears the flag when it has no more work, and a periodic sweep resets a flag left set by a
task that was lost (a killed worker, a flushed broker).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connections, models, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)


class CompiledExists:
    """`queryset.exists()` for a queryset without parameters that change, compiled once per
    database alias (the queryset is built lazily, on first use)."""

    def __init__(self, build_queryset):
        self.build_queryset = build_queryset
        self._sql: dict[str, tuple[str, tuple]] = {}

    def __call__(self, using: str = "default") -> bool:
        compiled = self._sql.get(using)
        if compiled is None:
            query = self.build_queryset().using(using).query.exists(limit=True)
            compiled = self._sql[using] = query.get_compiler(using=using).as_sql()
        sql, params = compiled
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() is not None


class CoalescedTask:
    def __init__(self, flag_model: type[models.Model], task: str, *, group: str, label: str):
        self.flag_model = flag_model
        self.task = task
        self.group = group
        self.label = label
        self._scheduled = CompiledExists(
            lambda: self.flag_model.objects.filter(pk=1, scheduled=True)
        )

    def is_scheduled(self) -> bool:
        # Read on every webhook: compiled once, not rebuilt by the ORM each time.
        return self._scheduled()

    def request(self) -> None:
        """Schedule the task unless it already is (inside the caller's transaction; the task is
        enqueued after commit)."""
        # Most requests of a burst find the flag set: one plain read, no row lock to wait on.
        if self.is_scheduled():
            return
        taken = self.flag_model.objects.filter(pk=1, scheduled=False).update(
            scheduled=True, scheduled_at=timezone.now()
        )
        if not taken and not self.flag_model.objects.filter(pk=1).exists():
            self.flag_model.objects.get_or_create(
                pk=1, defaults={"scheduled": True, "scheduled_at": timezone.now()}
            )
            taken = 1
        if taken:
            transaction.on_commit(self.enqueue)

    def enqueue(self) -> None:
        from django_q.tasks import async_task

        try:
            async_task(self.task, q_options={"group": self.group})
        except Exception:
            # The broker is down (or, with inline tasks, the task itself failed): release the
            # flag so the next request or the periodic sweep schedules the work again.
            logger.exception("could not run the %s; the sweep will pick it up", self.label)
            self.release_quietly()

    def clear(self) -> None:
        self.flag_model.objects.filter(pk=1).update(scheduled=False)

    def release_quietly(self) -> None:
        """Runs after commit, outside any transaction: a failure here must not turn a committed
        request into an error (the sweep resets the flag within a minute)."""
        try:
            self.clear()
        except Exception:
            logger.exception("could not release the %s flag; the sweep will reset it", self.label)

    def reset_if_stale(self, older_than: datetime) -> None:
        """Forget a schedule whose task never ran (lost task, flushed broker)."""
        self.flag_model.objects.filter(pk=1, scheduled=True, scheduled_at__lt=older_than).update(
            scheduled=False
        )
