"""`{% message_media m as media %}`: what the thread shows for a message's media objects.

The thread views prefetch `media_objects` on the messages they render
(`.prefetch_related("media_objects")`: one query per page or poll); without the prefetch this
falls back to one query per media message (correct, but N+1).

Every URL is the scoped `/media/<id>/` view (`media_view_url`), which checks the member's
tenant and redirects to a short-lived signed link: no storage key, bucket or signed URL is
ever written into a page.
"""

from __future__ import annotations

from typing import Any

from django import template

from apps.media.models import MediaKind, MediaState
from apps.media.services import media_view_url

register = template.Library()

MEDIA_TYPES = frozenset(MediaKind.values)


def _media_objects(message: Any) -> list:
    cache = getattr(message, "_prefetched_objects_cache", {})
    if "media_objects" in cache:
        objects = list(cache["media_objects"])
    else:
        objects = list(message.media_objects.all())
    return sorted(objects, key=lambda o: (o.created_at, str(o.pk)))


def media_item(media_object: Any) -> dict[str, Any]:
    """The renderable facts of one media object (all strings escaped by the template)."""
    state = media_object.state
    item: dict[str, Any] = {
        "pk": media_object.pk,
        "kind": media_object.kind,
        "state": state,
        "reason": media_object.reason,
        "name": media_object.safe_name or media_object.original_filename,
        "size": media_object.size,
        "content_type": media_object.content_type,
        "show": "file",
        "url": "",
        "download_url": "",
    }
    if state == MediaState.STORED:
        item["url"] = media_view_url(media_object)
        item["download_url"] = media_view_url(media_object, download=True)
        inline = (
            media_object.may_display_inline
            and not media_object.is_active_content
            and media_object.kind != MediaKind.DOCUMENT  # documents always download
        )
        content_type = media_object.content_type or ""
        if inline and content_type.startswith("image/"):
            item["show"] = "image"
        elif inline and content_type.startswith("video/") and media_object.kind == MediaKind.VIDEO:
            item["show"] = "video"
        elif inline and content_type.startswith(("audio/", "video/")):
            # A voice note or an .m4a in an MP4/3GPP container is still audio.
            item["show"] = "audio"
    return item


@register.simple_tag
def message_media(message: Any) -> list[dict[str, Any]]:
    """The media of `message` ([] for messages that carry none)."""
    if getattr(message, "type", "") not in MEDIA_TYPES:
        return []
    return [media_item(o) for o in _media_objects(message)]
