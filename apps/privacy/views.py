"""Downloads of the tenant's own data, for its owners and admins."""

from __future__ import annotations

from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.conversations.inbox.access import member_required, require_admin

from .services import ContactExport


@member_required
@require_GET
def export_contacts(request: HttpRequest) -> StreamingHttpResponse:
    """The whole contact book as CSV. The download starts at once (the header goes out before
    any query) and streams chunk by chunk, at any size."""
    require_admin(request)
    response = StreamingHttpResponse(
        ContactExport(request.tenant, actor=request.user, fmt="csv", via="inbox"),
        content_type="text/csv; charset=utf-8",
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = (
        f'attachment; filename="contacts-{request.tenant.slug}-{stamp}.csv"'
    )
    # Proxies must pass the stream on as it comes, not buffer the whole book.
    response["X-Accel-Buffering"] = "no"
    return response
