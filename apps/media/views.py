"""Media views: a scoped view that hands out short-lived signed links, and the filesystem
backend's serving views for those links (agents) and for Meta's one-use fetch."""

from __future__ import annotations

import logging
import uuid

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from apps.tenants.scoping import tenant_scope

from . import services
from .models import MediaObject, MediaState
from .signing import InvalidMediaToken, read_meta_fetch_token, read_view_token
from .storage import media_storage

logger = logging.getLogger("klaros.media")

# The serving views' headers: the browser must treat the bytes as exactly the sniffed type,
# run nothing from them and leak nothing about where they came from.
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "private, max-age=60",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def get_media_or_404(request: HttpRequest, media_id: uuid.UUID) -> MediaObject:
    """The member's tenant's media object; the same 404 for missing and another tenant's."""
    if getattr(request, "tenant", None) is None:
        raise Http404
    media_object = MediaObject.objects.filter(pk=media_id).first()
    if media_object is None:
        raise Http404
    return media_object


@require_safe
@login_required
@never_cache
def view_media(request: HttpRequest, media_id: uuid.UUID) -> HttpResponse:
    """`GET /media/<id>/`: 302 to a signed URL that expires within minutes (`?download=1` for
    an attachment). Pending or unavailable media: 404 (the thread shows why)."""
    media_object = get_media_or_404(request, media_id)
    if media_object.state != MediaState.STORED:
        raise Http404
    disposition = "attachment" if request.GET.get("download") else "auto"
    url = services.signed_url(media_object, disposition=disposition, user=request.user)
    response = redirect(url)
    response["Referrer-Policy"] = "no-referrer"
    return response


def _forbidden() -> HttpResponse:
    response = HttpResponseForbidden(
        b"This media link is invalid or has expired.", content_type="text/plain"
    )
    response["Cache-Control"] = "no-store"
    return response


def _file_response(media_object: MediaObject, disposition: str) -> HttpResponse:
    handle = media_storage().open(media_object.storage_key, "rb")
    response = FileResponse(handle, content_type=services.served_content_type(media_object))
    response["Content-Disposition"] = services.content_disposition(media_object, disposition)
    if media_object.size is not None:
        response["Content-Length"] = str(media_object.size)
    for header, value in _SECURITY_HEADERS.items():
        response[header] = value
    return response


@require_safe
def serve_signed_media(request: HttpRequest, token: str) -> HttpResponse:
    """`GET /media/f/<token>/`: the filesystem backend's signed link. Valid only unexpired,
    untampered, for the member it was minted for, acting in the media's tenant: 403 otherwise.
    """
    try:
        claims = read_view_token(token)
    except InvalidMediaToken:
        return _forbidden()
    user = request.user
    tenant = getattr(request, "tenant", None)
    if (
        not user.is_authenticated
        or str(user.pk) != claims.user_id
        or tenant is None
        or str(tenant.pk) != claims.tenant_id
    ):
        return _forbidden()
    # The middleware's scope is the member's tenant, which is the token's tenant (checked above).
    media_object = MediaObject.objects.filter(pk=claims.media_id).first()
    if (
        media_object is None
        or media_object.state != MediaState.STORED
        or media_object.storage_key != claims.storage_key
    ):
        return _forbidden()
    disposition = services.resolve_disposition(media_object, claims.disposition)
    return _file_response(media_object, disposition)


@require_safe
@never_cache
def serve_media_to_meta(request: HttpRequest, token: str) -> HttpResponse:
    """`GET /media/meta/<token>/`: the "send by link" fetch. No session (Meta has none), so the
    link is one-use: the first successful GET spends it; HEAD does not."""
    try:
        claims = read_meta_fetch_token(token)
    except InvalidMediaToken:
        return _forbidden()
    # Entry point: the signed token names the tenant, as the webhook router's number does.
    with tenant_scope(claims.tenant_id):
        media_object = MediaObject.objects.filter(pk=claims.media_id).first()
        if (
            media_object is None
            or media_object.state != MediaState.STORED
            or media_object.storage_key != claims.storage_key
            or media_object.meta_fetch_nonce != claims.nonce
            or media_object.meta_fetched_at is not None
        ):
            return _forbidden()
        if request.method == "GET" and not services.claim_meta_fetch(media_object, claims.nonce):
            return _forbidden()
        return _file_response(media_object, "attachment")
