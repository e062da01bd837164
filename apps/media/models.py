"""MediaObject: one file a customer sent us or an agent attached, kept in private storage."""

from __future__ import annotations

import functools
import uuid

from django.db import models, transaction
from django.db.models import Q
from django.db.models.signals import post_delete
from django.dispatch import receiver

from apps.tenants.scoping import TenantOwnedModel

from . import sniffing
from .storage import delete_stored_bytes

MB = 1024 * 1024
KB = 1024


class MediaKind(models.TextChoices):
    """WhatsApp's media message types."""

    IMAGE = "image", "Image"
    VIDEO = "video", "Video"
    AUDIO = "audio", "Audio"
    DOCUMENT = "document", "Document"
    STICKER = "sticker", "Sticker"


# WhatsApp's supported types and size limits (reference §9.5), by kind.
ALLOWED_TYPES: dict[str, frozenset[str]] = {
    MediaKind.IMAGE: frozenset({"image/jpeg", "image/png"}),
    MediaKind.VIDEO: frozenset({"video/mp4", "video/3gpp"}),
    MediaKind.AUDIO: frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
    MediaKind.DOCUMENT: frozenset(
        {
            "text/plain",
            "application/pdf",
            "application/msword",
            "application/vnd.ms-excel",
            "application/vnd.ms-powerpoint",
            sniffing.DOCX,
            sniffing.XLSX,
            sniffing.PPTX,
        }
    ),
    MediaKind.STICKER: frozenset({"image/webp"}),
}
SIZE_LIMITS: dict[str, int] = {
    MediaKind.IMAGE: 5 * MB,
    MediaKind.VIDEO: 16 * MB,
    MediaKind.AUDIO: 16 * MB,
    MediaKind.DOCUMENT: 100 * MB,
    MediaKind.STICKER: 100 * KB,
}
ANIMATED_STICKER_LIMIT = 500 * KB
# Meta never hands out inbound media above 100 MB (a bigger upload arrives as error 131052).
INBOUND_MAX_BYTES = 100 * MB

# Served inline (shown in the thread) only when the bytes were sniffed as one of these.
INLINE_TYPES = frozenset(
    ALLOWED_TYPES[MediaKind.IMAGE]
    | ALLOWED_TYPES[MediaKind.VIDEO]
    | ALLOWED_TYPES[MediaKind.AUDIO]
    | ALLOWED_TYPES[MediaKind.STICKER]
)


def kind_for_type(mime_type: str) -> str | None:
    """The WhatsApp message type that carries `mime_type`, or None when WhatsApp takes none."""
    for kind, types in ALLOWED_TYPES.items():
        if mime_type in types:
            return kind
    return None


def size_limit(kind: str, *, animated: bool = False) -> int:
    if kind == MediaKind.STICKER and animated:
        return ANIMATED_STICKER_LIMIT
    return SIZE_LIMITS.get(kind, INBOUND_MAX_BYTES)


class MediaDirection(models.TextChoices):
    INBOUND = "in", "Inbound"
    OUTBOUND = "out", "Outbound"


class MediaState(models.TextChoices):
    PENDING = "pending", "Downloading"
    STORED = "stored", "Stored"
    UNAVAILABLE = "unavailable", "Unavailable"


class MediaObject(TenantOwnedModel):
    """A media file of one tenant, stored privately under `<tenant>/<random token>/<safe name>`.

    Inbound rows start `pending` (Meta's media id known, bytes not yet fetched) and end `stored`
    or `unavailable` with a human `reason`; outbound rows are created `stored` from an upload.
    Deleting a row (directly or by cascade from its message) deletes the stored bytes after the
    transaction commits (the post_delete receiver below).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # RESTRICT, not CASCADE: disconnecting a number must not silently destroy customers' files
    # (its token is also what re-downloads pending media). Unlike PROTECT, RESTRICT still lets a
    # whole tenant (or a conversation's messages) be erased, since those reach the media
    # through a cascade in the same deletion.
    number = models.ForeignKey(
        "tenants.WhatsAppNumber", on_delete=models.RESTRICT, related_name="media_objects"
    )
    # By string: media never imports conversations code (imports point down).
    message = models.ForeignKey(
        "conversations.Message",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="media_objects",
    )
    direction = models.CharField(max_length=3, choices=MediaDirection.choices)
    kind = models.CharField(max_length=10, choices=MediaKind.choices)

    # As Meta (inbound) or the uploader (outbound) described it: untrusted.
    meta_media_id = models.CharField(max_length=64, blank=True)
    expected_sha256 = models.CharField(max_length=100, blank=True)
    claimed_mime_type = models.CharField(max_length=100, blank=True)
    original_filename = models.CharField(max_length=255, blank=True)

    state = models.CharField(max_length=12, choices=MediaState.choices, default=MediaState.PENDING)
    reason = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    # What we stored: found from the bytes, never from the claims above.
    storage_key = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    content_type = models.CharField(max_length=100, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    safe_name = models.CharField(max_length=120, blank=True)
    animated = models.BooleanField(default=False)

    # One-use link for Meta's "send by link" fetch: minting a link sets a new nonce (so older
    # links die); the first successful fetch sets meta_fetched_at.
    meta_fetch_nonce = models.CharField(max_length=64, blank=True)
    meta_fetched_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "media object"
        constraints = [
            # A duplicated webhook registers the same media id again: never download twice.
            models.UniqueConstraint(
                fields=["tenant", "meta_media_id"],
                condition=Q(direction="in") & ~Q(meta_media_id=""),
                name="media_unique_inbound_meta_id",
            ),
            models.UniqueConstraint(
                fields=["storage_key"],
                condition=~Q(storage_key=""),
                name="media_unique_storage_key",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="media_retry_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.safe_name or self.meta_media_id or self.pk}"

    @property
    def is_stored(self) -> bool:
        return self.state == MediaState.STORED

    @property
    def is_active_content(self) -> bool:
        return self.content_type in sniffing.ACTIVE_TYPES

    @property
    def may_display_inline(self) -> bool:
        """Images, audio and video whose bytes were sniffed as such; everything else downloads."""
        return self.content_type in INLINE_TYPES


@receiver(post_delete, sender=MediaObject, dispatch_uid="media_delete_stored_bytes")
def _delete_bytes_after_commit(sender: type, instance: MediaObject, **kwargs: object) -> None:
    # post_delete fires for cascades too (a message or contact erased), which never call
    # delete(). The bytes go only once the deletion has committed: a rolled-back erasure must
    # not leave a row pointing at nothing.
    key = instance.storage_key
    if key:
        transaction.on_commit(functools.partial(delete_stored_bytes, key), robust=True)
