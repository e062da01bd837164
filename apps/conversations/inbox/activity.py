"""Activity (tenant owners and admins): the workspace's own audit trail, newest first, with who
did what in words, filtered by kind of event, and the same events as a streamed CSV. Only this
tenant's chain is ever read; operators appear as "a Klaros operator", not by email."""

from __future__ import annotations

from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.audit.models import AuditEvent
from apps.audit.presentation import label_events, stream_events_csv
from apps.audit.services import record

from .access import member_required, require_admin

ACTIVITY_PAGE_SIZE = 100
# The kinds of event an admin filters by: the first part of the dotted action code.
ACTIVITY_KINDS = {
    "send": "Sending",
    "consent": "Consent",
    "conversation": "Conversations",
    "user": "Members",
    "tenant": "Workspace",
    "number": "Numbers",
    "meta_app": "Meta apps",
    "media": "Media",
    "template": "Templates",
    "webhook": "Webhooks",
    "auth": "Sign-ins",
    "audit": "Audit exports",
}


def _events(request: HttpRequest) -> tuple[QuerySet[AuditEvent], str]:
    events = AuditEvent.objects.filter(tenant_id=request.tenant.pk)
    kind = request.GET.get("kind", "")
    if kind in ACTIVITY_KINDS:
        events = events.filter(action__startswith=f"{kind}.")
    else:
        kind = ""
    return events, kind


@member_required
@require_GET
def activity(request: HttpRequest) -> HttpResponse:
    require_admin(request)
    events, kind = _events(request)
    before = request.GET.get("before", "")
    if before:
        anchor = None
        if before.isdigit():
            anchor = events.filter(pk=int(before)).only("id", "created_at").first()
        if anchor is None:
            raise Http404("Not found.")
        events = events.filter(
            Q(created_at__lt=anchor.created_at) | Q(created_at=anchor.created_at, id__lt=anchor.pk)
        )
    page = list(events.order_by("-created_at", "-id")[: ACTIVITY_PAGE_SIZE + 1])
    has_more = len(page) > ACTIVITY_PAGE_SIZE
    page = label_events(page[:ACTIVITY_PAGE_SIZE], show_operators=False)
    filters = {"kind": kind} if kind else {}
    context = {
        "events": page,
        "kinds": ACTIVITY_KINDS,
        "kind": kind,
        "next_url": f"?{urlencode({**filters, 'before': page[-1].pk})}" if has_more else "",
        "first_url": f"?{urlencode(filters)}" if before else "",
        "export_query": f"?{urlencode(filters)}" if filters else "",
    }
    return render(request, "conversations/activity.html", context)


@member_required
@require_GET
def activity_export(request: HttpRequest) -> StreamingHttpResponse:
    """Every event of the workspace (of one kind, when filtered) as CSV, streamed."""
    require_admin(request)
    events, kind = _events(request)
    record("audit.exported", request.tenant, actor=request.user, data={"kind": kind or "all"})
    response = StreamingHttpResponse(
        stream_events_csv(events, show_operators=False), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = (
        f'attachment; filename="activity-{request.tenant.slug}-{stamp}.csv"'
    )
    return response
