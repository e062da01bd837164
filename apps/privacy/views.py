"""Downloads of the tenant's own data, for its owners and admins."""

from __future__ import annotations

import tempfile
import uuid

from django.http import FileResponse, HttpRequest, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.conversations.inbox.access import member_required, require_admin
from apps.conversations.inbox.lookups import get_contact_or_404

from .services import ContactExport, export_contact_data


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


# Bundles up to this size are built in memory; larger ones spill to a temporary file.
BUNDLE_IN_MEMORY = 8 * 1024 * 1024


@member_required
@require_GET
def export_contact(request: HttpRequest, pk: uuid.UUID) -> FileResponse:
    """One contact's own data as a ZIP (an access request), for owners and admins."""
    require_admin(request)
    contact = get_contact_or_404(request, pk)
    bundle = tempfile.SpooledTemporaryFile(max_size=BUNDLE_IN_MEMORY)  # noqa: SIM115 (the response closes it)
    export_contact_data(contact, bundle, actor=request.user, via="inbox")
    bundle.seek(0)
    stamp = timezone.now().strftime("%Y%m%d")
    return FileResponse(
        bundle,
        as_attachment=True,
        filename=f"contact-data-{contact.pk}-{stamp}.zip",
        content_type="application/zip",
    )
