"""django-q2 tasks of the media app: they take ids, are enqueued after commit, are idempotent."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from apps.tenants.scoping import ScopeError, in_tenant_scope, unscoped

from . import services
from .models import MediaObject, MediaState

# A freshly registered download has its own task queued; the sweep leaves it this long first.
FRESH_GRACE = timedelta(minutes=2)
SWEEP_BATCH = 500


@in_tenant_scope
def download_inbound_media(tenant_id: str, media_object_id: str) -> str:
    """Download one inbound media object (a no-op unless it is pending and due)."""
    media_object = MediaObject.objects.filter(pk=media_object_id).first()
    if media_object is None:
        # Deleted since, or a job naming another tenant's object: the scoped lookup finds
        # nothing, and the failure is recorded on the task instead of leaking.
        raise ScopeError(f"media object {media_object_id} not found in tenant {tenant_id}")
    return services.download_inbound_media(media_object).state


def sweep_media_downloads() -> int:
    """Scheduled every minute: queue every pending download whose retry is due, and any whose
    task was lost (worker killed mid-download once its lease expired, broker flushed).

    Retries live on the row (`next_attempt_at`) rather than as one django-q schedule per retry:
    a sweep survives a flushed broker, needs no cleanup, and the claim in the download makes a
    duplicate task harmless.
    """
    now = timezone.now()
    with unscoped("media download sweep: due retries of every tenant"):
        due = list(
            MediaObject.objects.filter(state=MediaState.PENDING)
            .filter(
                Q(next_attempt_at__lte=now)
                | Q(next_attempt_at__isnull=True, created_at__lte=now - FRESH_GRACE)
            )
            .order_by("next_attempt_at")
            .values_list("tenant_id", "pk")[:SWEEP_BATCH]
        )
    for tenant_id, media_id in due:
        async_task("apps.media.tasks.download_inbound_media", str(tenant_id), str(media_id))
    return len(due)
