"""Outbound attachments: an agent's file, checked by its bytes, stored privately, queued like any
other reply, and handed to Meta only by the outbox dispatcher (issue 5, item 4).

Queueing (`queue_media_reply`, in the request):
1. the send gate (FREE_FORM) first: a refused send stores nothing;
2. `store_outbound_upload` checks the bytes (type, size, names that lie) and stores the file
   privately, or raises MediaRejected with a sentence for the agent;
3. `add_to_outbox_after_gate` creates the outbox row (type = the media kind) and the row is
   linked to the media object in the same transaction. The content keeps `_media_object_id`
   (private keys never reach Meta: `build_payload` drops them) plus the caption (image, video,
   document) and the filename (document).

Sending (`attach_media_or_settle`, called by the dispatcher right after its gate re-check):
`prepare_media_payload` turns `_media_object_id` into `{"id": ...}` (KLAROS_MEDIA_SEND_MODE
"upload": POST /{phone_number_id}/media first) or `{"link": ...}` ("link": a signed, one-use
link on KLAROS_PUBLIC_URL that Meta fetches).

It runs in the dispatcher's main thread, inside the tenant's scope, not in the pool threads:
it reads the media row, writes Meta's media id (upload) or the link's nonce (link) on it, and
settles the message when preparation fails; the pool threads have no database access by
design (see dispatcher.py). The price: an upload (up to 16 MB for video, 100 MB for documents)
holds the main loop for its duration. A retried send reuses the media id of an earlier
successful upload, so a file is uploaded once per message in the common case.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.audit.services import Actor
from apps.media.models import MediaKind, MediaObject
from apps.media.services import (
    MediaRejected,
    delete_media,
    public_fetch_url_for_meta,
    store_outbound_upload,
    upload_outbound_media_to_meta,
)
from apps.whatsapp.graph import GraphError, GraphTransportError

from ..models import Conversation, Message
from .gate import FREE_FORM, send_gate
from .outbox import SendError, add_to_outbox_after_gate
from .settle import MAX_ATTEMPTS, fail_send, handle_graph_error, retry_later

logger = logging.getLogger(__name__)

MEDIA_PATH = "agent_media"
# WhatsApp's caption limit (image, video, document).
MAX_CAPTION_LENGTH = 1024
CAPTIONED_KINDS = frozenset({MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.DOCUMENT})
MEDIA_KEY = "_media_object_id"

_PREVIEW_LABELS = {
    MediaKind.IMAGE: "Photo",
    MediaKind.VIDEO: "Video",
    MediaKind.AUDIO: "Audio",
    MediaKind.DOCUMENT: "Document",
    MediaKind.STICKER: "Sticker",
}


def _preview_text(media_object: MediaObject, caption: str) -> str:
    label = _PREVIEW_LABELS.get(media_object.kind, "Attachment")
    if media_object.kind == MediaKind.DOCUMENT:
        parts = [p for p in (media_object.safe_name, caption) if p]
        return f"{label}: " + " — ".join(parts) if parts else label
    return f"{label}: {caption}" if caption else label


def queue_media_reply(
    conversation: Conversation, uploaded_file: Any, *, caption: str = "", actor: Actor
) -> Message:
    """Queue an attachment (with an optional caption) as a free-form reply.

    Raises SendRefused (the gate; nothing stored), MediaRejected (the file; nothing stored) or
    SendError (the caption; nothing kept). Never calls Graph: the dispatcher does.
    """
    caption = (caption or "").strip()
    if len(caption) > MAX_CAPTION_LENGTH:
        raise SendError(f"Captions are limited to {MAX_CAPTION_LENGTH} characters.")
    if uploaded_file is None:
        raise SendError("Choose a file to attach.")
    send_gate(conversation, kind=FREE_FORM, path=MEDIA_PATH, actor=actor)
    media_object = store_outbound_upload(
        tenant=conversation.tenant_id,
        number=conversation.number,
        uploaded_file=uploaded_file,
        actor=actor,
    )
    committed: list[bool] = []
    try:
        if caption and media_object.kind not in CAPTIONED_KINDS:
            raise SendError(
                f"WhatsApp does not show captions on {media_object.kind} messages. Send the "
                "file without a caption and write the text as a separate reply."
            )
        content: dict[str, Any] = {MEDIA_KEY: str(media_object.pk)}
        if caption:
            content["caption"] = caption
        if media_object.kind == MediaKind.DOCUMENT:
            content["filename"] = media_object.safe_name
        with transaction.atomic():
            # Registered before add_to_outbox_after_gate's own hooks, so it has run when one of
            # those raises: an error after the commit must not erase the file of a queued
            # message.
            transaction.on_commit(lambda: committed.append(True))
            message = add_to_outbox_after_gate(
                conversation,
                type=str(media_object.kind),
                content=content,
                text=_preview_text(media_object, caption),
                path=MEDIA_PATH,
                actor=actor,
            )
            MediaObject.objects.filter(pk=media_object.pk).update(message=message)
            media_object.message = message
    except BaseException:
        if not committed:
            # Stored but not queued: erase it (audited; the bytes go after commit).
            delete_media(media_object, actor=actor)
        raise
    return message


# --- Dispatch ------------------------------------------------------------------------------


def send_mode() -> str:
    return str(getattr(settings, "KLAROS_MEDIA_SEND_MODE", "upload"))


def media_object_for(message: Message) -> MediaObject:
    """The stored media object of an outbound media message (tenant scope active)."""
    media_id = (message.content or {}).get(MEDIA_KEY)
    media_object = (
        MediaObject.objects.select_related("number").filter(pk=media_id, message=message).first()
        if media_id
        else None
    )
    if media_object is None:
        raise MediaRejected("The attachment was deleted before it could be sent.")
    if not media_object.is_stored:
        raise MediaRejected("The attachment is not stored any more, so it cannot be sent.")
    return media_object


def prepare_media_payload(message: Message) -> dict[str, Any]:
    """The `payload[message.type]` object for Meta: the public content (caption, filename) plus
    `id` (upload mode: Meta's media id, uploaded now unless an earlier attempt did) or `link`
    (link mode: a fresh one-use link; minting it voids the previous one).

    Main thread, tenant scope (database access). Raises MediaRejected, GraphError or
    GraphTransportError."""
    media_object = media_object_for(message)
    content = {k: v for k, v in (message.content or {}).items() if not k.startswith("_")}
    if send_mode() == "link":
        content["link"] = public_fetch_url_for_meta(media_object)
    else:
        meta_id = media_object.meta_media_id or upload_outbound_media_to_meta(media_object)
        content["id"] = meta_id
    return content


def attach_media_or_settle(message: Message, payload: dict[str, Any]) -> bool:
    """Called by the dispatcher after the gate re-check: put the media reference into
    `payload`. True: send it. False: the message was settled here (failed with a reason an
    agent can read, or queued again for a retry) and must not be sent this time."""
    try:
        payload[message.type] = prepare_media_payload(message)
        return True
    except MediaRejected as rejected:
        fail_send(
            message,
            code=None,
            title="The attachment could not be sent",
            details=rejected.message,
            audit="send.failed",
        )
        return False
    except (GraphError, GraphTransportError) as error:
        # Preparation does not count as a send attempt in `_take_attempts`; count it here so a
        # file Meta keeps refusing cannot be retried forever.
        Message.objects.filter(pk=message.pk).update(attempts=F("attempts") + 1)
        message.attempts += 1
        logger.warning("preparing media for message %s failed: %s", message.pk, error)
        if isinstance(error, GraphError):
            if error.token_invalid:
                # The outbox's own handling: the number's credentials are marked broken (once),
                # the message fails, and the gate refuses the number's other sends.
                handle_graph_error(message, message.conversation.number, error)
                return False
            if not error.retryable or message.attempts >= MAX_ATTEMPTS:
                fail_send(
                    message,
                    code=error.code,
                    title=f"WhatsApp refused the attachment: {error.title}"[:300],
                    details=error.human_explanation,
                    audit="send.failed",
                )
                return False
            retry_later(message, f"uploading the attachment: ({error.code}) {error.title}")
            return False
        if message.attempts >= MAX_ATTEMPTS:
            fail_send(
                message,
                code=None,
                title="The attachment could not be uploaded to WhatsApp",
                details=f"Meta could not be reached: {error}",
                audit="send.failed",
            )
            return False
        retry_later(message, f"uploading the attachment: {error}")
        return False
