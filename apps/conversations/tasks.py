"""django-q2 tasks of the conversations app. They take ids (or nothing), are enqueued after
commit and are idempotent."""

from .journal import drain_journal, sweep_journal


def drain_webhook_journal() -> int:
    """Drain the webhook journal in batches (one task serves a whole burst)."""
    return drain_journal()


def sweep_webhook_journal() -> int:
    """Scheduled every minute: re-schedule a drain a lost task left behind."""
    return sweep_journal()
