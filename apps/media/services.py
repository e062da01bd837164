"""Every state change of media: inbound registration and download, outbound uploads, signed
links, erasure. Other apps call these functions; they never touch storage themselves.

All functions run inside the owning tenant's scope (the task decorator, the web middleware or the
webhook router switched it on).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import random
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header

from apps.audit.services import record
from apps.tenants.scoping import current_tenant_id
from apps.whatsapp.graph import (
    GraphClient,
    GraphError,
    GraphTransportError,
    MediaTooLargeError,
    explain_error_code,
    media_sha256_matches,
)

from . import signing, sniffing
from .models import (
    ALLOWED_TYPES,
    INBOUND_MAX_BYTES,
    MB,
    MediaDirection,
    MediaKind,
    MediaObject,
    MediaState,
    kind_for_type,
    size_limit,
)
from .storage import (
    clean_original_filename,
    delete_stored_bytes,
    is_s3_storage,
    media_storage,
    new_storage_key,
    safe_filename,
)

__all__ = [
    "MAX_DOWNLOAD_ATTEMPTS",
    "MediaRejected",
    "delete_media",
    "download_inbound_media",
    "media_view_url",
    "public_fetch_url_for_meta",
    "register_inbound_media",
    "served_content_type",
    "signed_url",
    "store_outbound_upload",
    "upload_outbound_media_to_meta",
]

logger = logging.getLogger("klaros.media")

MAX_DOWNLOAD_ATTEMPTS = 6
# Delay before retry n (after failed attempt n), with up to 20 % jitter added: ~3 h in total,
# well inside Meta's 7-day window, long enough to ride out an outage or a token being fixed.
RETRY_DELAYS = (30, 120, 600, 1800, 7200)
# A claimed download is someone's for this long; a worker that died mid-download leaves the row
# pending and the sweep picks it up once the lease has passed.
DOWNLOAD_LEASE = timedelta(minutes=10)
# Media ids from webhooks can be downloaded for 7 days (reference §9.3).
META_MEDIA_ID_LIFETIME = timedelta(days=7)
# Graph errors meaning "this media id is gone" (unknown object / invalid parameter).
_GONE_CODES = frozenset({33, 100})

_TYPE_LABELS = {
    "image/jpeg": "a JPEG image",
    "image/png": "a PNG image",
    "image/webp": "a WebP image",
    "image/gif": "a GIF image",
    "video/mp4": "an MP4 video",
    "video/3gpp": "a 3GPP video",
    "audio/ogg": "OGG audio",
    "audio/mpeg": "MP3 audio",
    "audio/aac": "AAC audio",
    "audio/mp4": "M4A audio",
    "audio/amr": "AMR audio",
    "application/pdf": "a PDF document",
    "text/plain": "a plain text file",
    "application/msword": "a Word document",
    "application/vnd.ms-excel": "an Excel spreadsheet",
    "application/vnd.ms-powerpoint": "a PowerPoint presentation",
    sniffing.DOCX: "a Word document",
    sniffing.XLSX: "an Excel spreadsheet",
    sniffing.PPTX: "a PowerPoint presentation",
    "application/zip": "a ZIP archive",
    "text/html": "a web page (HTML)",
    "application/xhtml+xml": "a web page (XHTML)",
    "image/svg+xml": "an SVG image (which can contain scripts)",
    "application/xml": "an XML document",
    "text/javascript": "a JavaScript program",
    "application/octet-stream": "a file of unknown type",
}
# Names browsers and operating systems use for the same types.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-aac": "audio/aac",
    "audio/opus": "audio/ogg",
    "audio/3gpp": "video/3gpp",
    "application/ogg": "audio/ogg",
    "application/x-javascript": "text/javascript",
    "application/javascript": "text/javascript",
    "text/xml": "application/xml",
}
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# One container, two names: an .m4a may carry a generic MP4 brand, a voice note a 3GPP one.
_SAME_CONTAINER = {
    frozenset({"audio/mp4", "video/mp4"}),
    frozenset({"audio/mp4", "video/3gpp"}),
    frozenset({"video/3gpp", "video/mp4"}),
}


class MediaRejected(Exception):
    """An upload that cannot be sent; `message` is written for the agent who chose the file."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def _label(mime_type: str) -> str:
    return _TYPE_LABELS.get(mime_type, mime_type or "a file of unknown type")


def _normalise_type(mime_type: str | None) -> str:
    base = (mime_type or "").split(";")[0].strip().lower()
    return _ALIASES.get(base, base)


def _same_type(a: str, b: str) -> bool:
    return a == b or frozenset({a, b}) in _SAME_CONTAINER


def _ttl() -> int:
    return int(getattr(settings, "KLAROS_MEDIA_URL_TTL", 300))


def _graph_client(number: Any, max_bytes: int) -> GraphClient:
    return GraphClient(
        settings.WHATSAPP_GRAPH_URL,
        number.access_token.reveal(),
        max_download_bytes=max_bytes,
    )


def _save_bytes(tenant_id: Any, name: str, data: bytes) -> str:
    storage = media_storage()
    return storage.save(new_storage_key(tenant_id, name), ContentFile(data))


# ------------------------------------------------------------------------------------ inbound


def _kind_from(kind: str | None, claimed_type: str) -> str:
    if kind in MediaKind.values:
        return str(kind)
    if claimed_type == "image/webp":
        return MediaKind.STICKER
    return kind_for_type(claimed_type) or MediaKind.DOCUMENT


def register_inbound_media(
    *, number: Any, message_id: Any, media: Mapping[str, Any], kind: str | None = None
) -> MediaObject:
    """Record an inbound media object from a webhook's media dict and fetch it after commit.

    `media` is Meta's object (`id`, `mime_type`, `sha256`, `filename`, ...); `kind` the message
    type (image, video, audio, document, sticker), guessed from the MIME type when omitted.
    Idempotent: a duplicated webhook (same media id in this tenant) returns the existing row and
    downloads nothing. Call inside the tenant's scope, in the ingest transaction.
    """
    media = media if isinstance(media, Mapping) else {}
    tenant_id = current_tenant_id()
    meta_media_id = str(media.get("id") or "")[:64]
    claimed = _normalise_type(str(media.get("mime_type") or ""))[:100]
    fields = {
        "number": number,
        "message_id": getattr(message_id, "pk", message_id),
        "direction": MediaDirection.INBOUND,
        "kind": _kind_from(kind, claimed),
        "expected_sha256": str(media.get("sha256") or "")[:100],
        "claimed_mime_type": claimed,
        "original_filename": clean_original_filename(media.get("filename")),
        "animated": bool(media.get("animated")),
    }
    if not meta_media_id:
        return MediaObject.objects.create(
            tenant_id=tenant_id,
            state=MediaState.UNAVAILABLE,
            reason="WhatsApp delivered this media message without a media id.",
            **fields,
        )
    existing = MediaObject.objects.filter(
        direction=MediaDirection.INBOUND, meta_media_id=meta_media_id
    ).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            media_object = MediaObject.objects.create(
                tenant_id=tenant_id, meta_media_id=meta_media_id, **fields
            )
    except IntegrityError:
        # A concurrent drain of the same webhook won the race: theirs is the one to download.
        return MediaObject.objects.get(
            direction=MediaDirection.INBOUND, meta_media_id=meta_media_id
        )
    enqueue_download(media_object)
    return media_object


def enqueue_download(media_object: MediaObject) -> None:
    """Queue the download task once the current transaction commits."""
    from django_q.tasks import async_task

    tenant_id, media_id = str(media_object.tenant_id), str(media_object.pk)
    transaction.on_commit(
        lambda: async_task(
            "apps.media.tasks.download_inbound_media",
            tenant_id,
            media_id,
            task_name=f"media-download-{media_id}",
        )
    )


def _claim_download(media_object: MediaObject) -> bool:
    now = timezone.now()
    claimed = (
        MediaObject.objects.filter(pk=media_object.pk, state=MediaState.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(attempts=F("attempts") + 1, next_attempt_at=now + DOWNLOAD_LEASE)
    )
    if claimed:
        media_object.refresh_from_db()
    return bool(claimed)


def _mark_unavailable(media_object: MediaObject, reason: str) -> MediaObject:
    media_object.state = MediaState.UNAVAILABLE
    media_object.reason = reason[:300]
    media_object.next_attempt_at = None
    media_object.save(update_fields=["state", "reason", "next_attempt_at"])
    logger.info("media %s unavailable: %s", media_object.pk, reason)
    return media_object


def _retry_later(media_object: MediaObject, reason: str) -> MediaObject:
    if media_object.attempts >= MAX_DOWNLOAD_ATTEMPTS:
        return _mark_unavailable(
            media_object,
            f"Gave up after {media_object.attempts} attempts. Last problem: {reason}",
        )
    delay = RETRY_DELAYS[min(media_object.attempts, len(RETRY_DELAYS)) - 1]
    delay += random.uniform(0, delay * 0.2)  # noqa: S311 - jitter, not security
    media_object.next_attempt_at = timezone.now() + timedelta(seconds=delay)
    media_object.reason = f"Retrying: {reason}"[:300]
    media_object.save(update_fields=["next_attempt_at", "reason"])
    return media_object


def download_inbound_media(media_object: MediaObject) -> MediaObject:
    """Fetch an inbound media object from Meta, check it and store it privately.

    `GET /{media_id}` then the download URL, both with the number's token; Meta's sha256 must
    match, the size must be within WhatsApp's limit for the kind, and the bytes must sniff as a
    type of that kind (documents may be any type, but are only ever served as attachments).
    Retryable failures (5xx, rate limits, network, our storage) reschedule with backoff up to
    MAX_DOWNLOAD_ATTEMPTS; anything else, or Meta's media id having expired, ends `unavailable`
    with a reason a person can read. A row that is not pending, or is leased by another worker,
    is left alone, so duplicate tasks never download twice.
    """
    if media_object.state != MediaState.PENDING or not _claim_download(media_object):
        return media_object
    if timezone.now() - media_object.created_at > META_MEDIA_ID_LIFETIME:
        return _mark_unavailable(
            media_object,
            "WhatsApp's copy of this file expired (media can only be fetched for 7 days).",
        )
    kind = media_object.kind
    limit = INBOUND_MAX_BYTES if kind == MediaKind.DOCUMENT else size_limit(kind, animated=True)
    number = media_object.number
    try:
        with _graph_client(number, limit) as client:
            info = client.get_media(
                media_object.meta_media_id, phone_number_id=number.phone_number_id
            )
            if info.file_size is not None and info.file_size > limit:
                raise MediaTooLargeError(f"{info.file_size} bytes")
            data = client.download_media(info.url, max_bytes=limit)
    except MediaTooLargeError:
        return _mark_unavailable(
            media_object,
            f"The file is larger than WhatsApp allows for {media_object.get_kind_display().lower()}"
            f" messages ({limit // 1024} KB).",
        )
    except GraphTransportError as exc:
        return _retry_later(media_object, f"could not reach WhatsApp ({exc}).")
    except GraphError as exc:
        if exc.http_status == 404 or exc.code in _GONE_CODES:
            return _mark_unavailable(
                media_object,
                "WhatsApp no longer has this file (its media id expired or was deleted).",
            )
        if exc.retryable or exc.token_invalid:
            # A broken token may be fixed by an admin within the retry window.
            return _retry_later(media_object, explain_error_code(exc.code, exc.http_status))
        return _mark_unavailable(
            media_object, f"WhatsApp refused the download: {explain_error_code(exc.code)}"
        )
    except ValueError:
        # GraphClient refuses to send the token to a host that is not Meta's.
        return _mark_unavailable(
            media_object, "WhatsApp gave a download link on an unexpected host; not fetched."
        )
    expected = media_object.expected_sha256 or info.sha256
    if expected and not media_sha256_matches(data, expected):
        return _mark_unavailable(
            media_object,
            "The downloaded file does not match the checksum WhatsApp sent; it was discarded.",
        )
    return _store_inbound(media_object, data, limit)


def _store_inbound(media_object: MediaObject, data: bytes, limit: int) -> MediaObject:
    kind = media_object.kind
    sniffed = sniffing.sniff(data)
    content_type = sniffed.mime_type
    if kind != MediaKind.DOCUMENT:
        allowed = ALLOWED_TYPES[kind]
        match = next((t for t in allowed if _same_type(t, content_type)), None)
        if match is None:
            return _mark_unavailable(
                media_object,
                f"The {media_object.get_kind_display().lower()} is really {_label(content_type)},"
                " which WhatsApp does not allow here; it was not stored.",
            )
        content_type = match  # e.g. an .m4a voice note with a generic MP4 brand
        limit = size_limit(kind, animated=sniffed.animated or media_object.animated)
        if len(data) > limit:
            return _mark_unavailable(
                media_object,
                f"The file is larger than WhatsApp allows for {kind} messages "
                f"({limit // 1024} KB).",
            )
    name = safe_filename(
        media_object.original_filename,
        sniffing.EXTENSIONS.get(content_type, ".bin"),
        fallback=kind,
    )
    try:
        key = _save_bytes(media_object.tenant_id, name, data)
    except Exception as exc:  # storage down (disk full, S3 unreachable): try again later
        logger.exception("storing media %s failed", media_object.pk)
        return _retry_later(media_object, f"the media storage failed ({type(exc).__name__}).")
    media_object.storage_key = key
    media_object.safe_name = name
    media_object.sha256 = hashlib.sha256(data).hexdigest()
    media_object.content_type = content_type
    media_object.size = len(data)
    media_object.animated = sniffed.animated
    media_object.state = MediaState.STORED
    media_object.reason = ""
    media_object.next_attempt_at = None
    media_object.stored_at = timezone.now()
    try:
        media_object.save()
    except Exception:
        delete_stored_bytes(key)
        raise
    return media_object


# ----------------------------------------------------------------------------------- outbound


def _read_upload(uploaded_file: Any, cap: int) -> bytes:
    """The upload's bytes, refusing (before reading it all) anything above `cap`."""
    too_big = MediaRejected(f"This file is larger than WhatsApp accepts ({cap // MB} MB).")
    size = getattr(uploaded_file, "size", None)
    if size is not None and size > cap:
        raise too_big
    if hasattr(uploaded_file, "seek"):
        uploaded_file.seek(0)
    chunks: list[bytes] = []
    total = 0
    for chunk in uploaded_file.chunks():
        total += len(chunk)
        if total > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def store_outbound_upload(
    *, tenant: Any, number: Any, uploaded_file: Any, actor: Any, message_id: Any = None
) -> MediaObject:
    """Check an agent's upload by its bytes and store it privately for sending.

    The content must sniff as a type WhatsApp can send (reference §9.5), within that kind's size
    limit; web pages, SVG, XML and scripts are refused whatever their name, and so is a file
    whose name or declared type says something else than its content. Raises MediaRejected with
    a message for the agent. Returns a `stored` outbound MediaObject whose `kind` is the
    WhatsApp message type to send it as.
    """
    tenant_id = getattr(tenant, "pk", tenant)
    if str(number.tenant_id) != str(tenant_id) or str(current_tenant_id()) != str(tenant_id):
        raise ValueError("the number and the active scope must belong to the uploading tenant")
    original = clean_original_filename(getattr(uploaded_file, "name", ""))
    data = _read_upload(uploaded_file, INBOUND_MAX_BYTES)
    if not data:
        raise MediaRejected("This file is empty.")
    sniffed = sniffing.sniff(data)
    shown = f'"{original}"' if original else "This file"
    if sniffed.active:
        raise MediaRejected(
            f"{shown} is really {_label(sniffed.mime_type)}. Web pages, SVG images and scripts "
            "cannot be sent."
        )
    kind = kind_for_type(sniffed.mime_type)
    if kind is None:
        raise MediaRejected(
            f"{shown} is {_label(sniffed.mime_type)}, which WhatsApp cannot send. Send a JPEG or "
            "PNG image, an MP4 or 3GPP video, AAC, AMR, MP3, M4A or OGG audio, or a PDF, Word, "
            "Excel, PowerPoint or plain text document."
        )
    claimed = _normalise_type(getattr(uploaded_file, "content_type", ""))
    by_name = _normalise_type(mimetypes.guess_type(original)[0]) if original else ""
    for said in (claimed, by_name):
        if said not in _GENERIC_TYPES and not _same_type(said, sniffed.mime_type):
            raise MediaRejected(
                f"{shown} claims to be {_label(said)} but its content is "
                f"{_label(sniffed.mime_type)}. Save it with the right type and try again."
            )
    limit = size_limit(kind, animated=sniffed.animated)
    if len(data) > limit:
        raise MediaRejected(
            f"{shown} is {len(data) / 1024:.0f} KB; WhatsApp accepts {kind} files up to "
            f"{limit // 1024} KB."
        )
    name = safe_filename(original, sniffed.extension, fallback=kind)
    key = _save_bytes(tenant_id, name, data)
    try:
        with transaction.atomic():
            media_object = MediaObject.objects.create(
                tenant_id=tenant_id,
                number=number,
                message_id=getattr(message_id, "pk", message_id),
                direction=MediaDirection.OUTBOUND,
                kind=kind,
                claimed_mime_type=claimed[:100],
                original_filename=original,
                state=MediaState.STORED,
                storage_key=key,
                safe_name=name,
                sha256=hashlib.sha256(data).hexdigest(),
                content_type=sniffed.mime_type,
                size=len(data),
                animated=sniffed.animated,
                stored_at=timezone.now(),
            )
            record(
                "media.uploaded",
                media_object,
                actor=actor,
                data={"kind": kind, "content_type": sniffed.mime_type, "size": len(data)},
            )
    except Exception:
        delete_stored_bytes(key)
        raise
    return media_object


def upload_outbound_media_to_meta(media_object: MediaObject) -> str:
    """Upload stored media to Meta's `/{phone_number_id}/media` and return Meta's media id (the
    "upload" send mode). Raises GraphError / GraphTransportError for the send path to classify."""
    number = media_object.number
    with media_storage().open(media_object.storage_key, "rb") as handle:
        data = handle.read()
    with _graph_client(number, INBOUND_MAX_BYTES) as client:
        meta_id = client.upload_media(
            number.phone_number_id, data, media_object.content_type, media_object.safe_name
        )
    media_object.meta_media_id = meta_id[:64]
    media_object.save(update_fields=["meta_media_id"])
    return meta_id


# ------------------------------------------------------------------------------ signed links


def served_content_type(media_object: MediaObject) -> str:
    """The Content-Type a download carries: the sniffed type, except that active content is
    served as an opaque download (a second lock behind `attachment`)."""
    if media_object.is_active_content or not media_object.content_type:
        return "application/octet-stream"
    if media_object.content_type == "text/plain":
        return "text/plain; charset=utf-8"
    return media_object.content_type


def resolve_disposition(media_object: MediaObject, disposition: str) -> str:
    """`inline` only for images, audio and video sniffed as such; everything else attachment."""
    if disposition in ("inline", "auto") and media_object.may_display_inline:
        return "inline"
    return "attachment"


def content_disposition(media_object: MediaObject, disposition: str) -> str:
    return content_disposition_header(disposition == "attachment", media_object.safe_name)


def signed_url(media_object: MediaObject, *, disposition: str = "auto", user: Any = None) -> str:
    """A short-lived URL to the stored bytes (KLAROS_MEDIA_URL_TTL, default 300 s).

    S3: a SigV4 presigned GET that also fixes Content-Disposition and Content-Type. Filesystem:
    a signed, expiring link to Klaros's own serving view, bound to `user` (required there), who
    must present their session in this tenant. `disposition`: "auto" (inline when safe),
    "inline" (downgraded to attachment for anything but images, audio and video) or
    "attachment". Views hand these out through `GET /media/<id>/`; prefer `media_view_url`.
    """
    if not media_object.is_stored:
        raise ValueError("media is not stored")
    disposition = resolve_disposition(media_object, disposition)
    storage = media_storage()
    if is_s3_storage(storage):
        return storage.url(
            media_object.storage_key,
            parameters={
                "ResponseContentDisposition": content_disposition(media_object, disposition),
                "ResponseContentType": served_content_type(media_object),
                "ResponseCacheControl": "private, max-age=60",
            },
            expire=_ttl(),
        )
    if user is None or not getattr(user, "pk", None):
        raise ValueError("filesystem media links are bound to a member: pass user=")
    token = signing.make_view_token(
        media_object, disposition=disposition, user_id=user.pk, ttl=_ttl()
    )
    return reverse("media:serve", args=[token])


def media_view_url(media_object: MediaObject, *, download: bool = False) -> str:
    """The stable, scoped URL a page embeds (`/media/<id>/`); it redirects to a fresh signed
    link. `download=True` asks for an attachment even for images, audio and video."""
    url = reverse("media:view", args=[media_object.pk])
    return f"{url}?download=1" if download else url


def public_fetch_url_for_meta(media_object: MediaObject) -> str:
    """An absolute link (on KLAROS_PUBLIC_URL) Meta can fetch once, without a session, within
    KLAROS_MEDIA_META_LINK_TTL seconds (default 300): the "send by link" mode. Minting a new
    link invalidates the previous one."""
    if not media_object.is_stored:
        raise ValueError("media is not stored")
    media_object.meta_fetch_nonce = secrets.token_urlsafe(16)
    media_object.meta_fetched_at = None
    media_object.save(update_fields=["meta_fetch_nonce", "meta_fetched_at"])
    ttl = int(getattr(settings, "KLAROS_MEDIA_META_LINK_TTL", 300))
    token = signing.make_meta_fetch_token(
        media_object, nonce=media_object.meta_fetch_nonce, ttl=ttl
    )
    base = str(getattr(settings, "KLAROS_PUBLIC_URL", "")).rstrip("/") + "/"
    return urljoin(base, reverse("media:meta_fetch", args=[token]).lstrip("/"))


def claim_meta_fetch(media_object: MediaObject, nonce: str) -> bool:
    """Mark the Meta link with `nonce` used; False when it was used already or superseded."""
    return bool(
        MediaObject.objects.filter(
            pk=media_object.pk, meta_fetch_nonce=nonce, meta_fetched_at__isnull=True
        )
        .exclude(meta_fetch_nonce="")
        .update(meta_fetched_at=timezone.now())
    )


# ------------------------------------------------------------------------------------ erasure


def delete_media(media_object: MediaObject, *, actor: Any) -> None:
    """Erase a media object: its audit event, the row, then (after commit) the stored bytes.

    Cascading deletes (a message or contact erased) remove the bytes too, through the
    post_delete signal in apps.media.models.
    """
    with transaction.atomic():
        record(
            "media.deleted",
            media_object,
            actor=actor,
            data={"kind": media_object.kind, "direction": media_object.direction},
        )
        media_object.delete()
