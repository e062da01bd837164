"""The customer side: a simulated customer writing to a business number (every inbound message
type, with media, replies, referrals, errors) and changing their marketing preference, and Meta
changing a template's status. Each is posted at once as a signed webhook."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

from .errors import async_error
from .media import MediaStore
from .rules import SendingRules
from .state import SimNumber, new_wamid
from .webhooks import WebhookDelivery, webhook_envelope, webhook_metadata

# Template events that are also the status they leave the template in.
_TEMPLATE_LIST_STATUSES = frozenset(
    {"APPROVED", "REJECTED", "PENDING", "PAUSED", "DISABLED", "IN_APPEAL", "DELETED"}
    | {"PENDING_DELETION", "ARCHIVED", "LOCKED"}
)


class CustomerSide(WebhookDelivery, SendingRules, MediaStore):
    """What customers (and Meta's template review) do, delivered as webhooks."""

    def inbound(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Make a customer send a message to a number and deliver it as a signed webhook.

        See :func:`build_inbound_message` for ``spec``. Returns the wamid, the exact body
        posted, its signature and the HTTP status Klaros answered (None if unreachable).
        """
        number = self.number(spec.get("phone_number_id"))
        message, contacts, media_id = self._build_inbound(number, spec)
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": webhook_metadata(number),
        }
        if contacts:
            value["contacts"] = contacts
        value["messages"] = [message]
        if spec.get("value_errors"):
            value["errors"] = list(spec["value_errors"])
        payload = webhook_envelope(number.waba_id, [("messages", value)])
        sign = spec.get("sign", True) is not False
        deliver = spec.get("deliver", True) is not False
        if deliver and sign and spec.get("signature") is None and message["type"] != "system":
            # The customer wrote: (re)open the 24-hour window, from the message's own timestamp.
            # Recorded before posting, so a reply Klaros sends while answering already sees it.
            customers = [c for c in (message.get("from"), message.get("from_user_id")) if c]
            self._record_inbound(number.phone_number_id, customers, float(message["timestamp"]))
        result = self._post_now(
            number,
            payload,
            kind="inbound",
            sign=sign,
            signature=spec.get("signature"),
            deliver=deliver,
        )
        result.update({"wamid": message["id"], "message": message, "media_id": media_id})
        return result

    def send_user_preference(
        self,
        phone_number_id: str | None,
        wa_id: str,
        value: str = "stop",
        *,
        category: str = "marketing_messages",
        user_id: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Deliver a ``user_preferences`` webhook (customer tapped Stop/Resume promotions)."""
        number = self.number(phone_number_id)
        detail = {
            "stop": "User requested to stop marketing messages",
            "resume": "User requested to resume marketing messages",
        }.get(value, f"User preference: {value}")
        pref: dict[str, Any] = {
            "wa_id": wa_id,
            "detail": detail,
            "category": category,
            "value": value,
            "timestamp": int(time.time()),
        }
        contact: dict[str, Any] = {"profile": {"name": name or self._customers.get(wa_id, "")}}
        contact["wa_id"] = wa_id
        if user_id:
            pref["user_id"] = user_id
            contact["user_id"] = user_id
        value_obj = {
            "messaging_product": "whatsapp",
            "metadata": webhook_metadata(number),
            "contacts": [contact],
            "user_preferences": [pref],
        }
        payload = webhook_envelope(number.waba_id, [("user_preferences", value_obj)])
        if category == "marketing_messages":
            self._record_preference(number.phone_number_id, [wa_id, user_id], value)
        return self._post_now(number, payload, kind="user_preferences")

    def send_template_status(
        self,
        waba_id: str,
        name: str,
        event: str,
        *,
        language: str = "en_US",
        reason: str | None = "NONE",
    ) -> dict[str, Any]:
        """Change a template's status and deliver ``message_template_status_update``."""
        with self._lock:
            numbers = [n for n in self._numbers.values() if n.waba_id == waba_id]
            if not numbers:
                raise ValueError(f"no number registered for WABA {waba_id!r}")
            templates = self._templates.get(waba_id, [])
            match = next(
                (t for t in templates if t["name"] == name and t["language"] == language), None
            )
            if match is None:
                raise ValueError(f"template {name!r}/{language} unknown for WABA {waba_id!r}")
            if event in _TEMPLATE_LIST_STATUSES:
                match["status"] = event
            elif event in ("REINSTATED", "UNARCHIVED"):
                match["status"] = "APPROVED"
            # Meta sends the template id as an integer in this webhook only.
            template_id: int | str = int(match["id"]) if str(match["id"]).isdigit() else match["id"]
            category = match.get("category")
        value = {
            "event": event,
            "message_template_id": template_id,
            "message_template_name": name,
            "message_template_language": language,
            "reason": reason,
            "message_template_category": category,
        }
        payload = webhook_envelope(
            waba_id, [("message_template_status_update", value)], time_=int(time.time())
        )
        return self._post_now(numbers[0], payload, kind="template_status")

    def _build_inbound(
        self, number: SimNumber, spec: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
        msg_type = str(spec.get("type") or "text")
        voice = spec.get("voice")
        if msg_type == "voice":
            msg_type, voice = "audio", True
        wa_id = str(spec.get("from") or "15551234567")
        name = spec.get("name", "Test Customer")
        user_id = spec.get("user_id")
        hide_phone = bool(spec.get("hide_phone"))
        wamid = str(spec.get("wamid") or new_wamid())
        ts = spec.get("timestamp")
        message: dict[str, Any] = {}
        if spec.get("context") is not None:
            message["context"] = dict(spec["context"])
        elif spec.get("reply_to"):
            message["context"] = {
                "from": str(spec.get("reply_to_from") or number.display_phone_number),
                "id": str(spec["reply_to"]),
            }
        elif msg_type in ("interactive", "button"):
            # Replies to buttons always quote the business message that carried them.
            message["context"] = {"from": number.display_phone_number, "id": new_wamid()}
        if spec.get("forwarded"):
            message.setdefault("context", {})["forwarded"] = True
        if spec.get("frequently_forwarded"):
            message.setdefault("context", {})["frequently_forwarded"] = True
        if not hide_phone:
            message["from"] = wa_id
        if user_id:
            message["from_user_id"] = str(user_id)
        message["id"] = wamid
        message["timestamp"] = str(int(ts) if ts is not None else int(time.time()))
        if spec.get("referral"):
            referral = spec["referral"]
            message["referral"] = dict(referral) if isinstance(referral, Mapping) else _REFERRAL
        message["type"] = msg_type

        media_id = None
        content: Any
        if msg_type in ("image", "video", "audio", "document", "sticker"):
            content, media_id = self._inbound_media(number, msg_type, spec, voice)
        elif msg_type == "text":
            content = {"body": str(spec.get("text", "Hello"))}
        elif msg_type == "reaction":
            content = {"message_id": str(spec.get("reply_to") or spec.get("message_id") or "")}
            emoji = spec.get("emoji", "\N{THUMBS UP SIGN}")
            if emoji:  # missing or empty emoji means "reaction removed"
                content["emoji"] = emoji
            message.pop("context", None)
        elif msg_type == "interactive":
            kind = str(spec.get("reply_type") or "button_reply")
            reply: dict[str, Any] = {
                "id": str(spec.get("reply_id") or "option-1"),
                "title": str(spec.get("title") or "Option 1"),
            }
            if kind == "list_reply" and spec.get("description"):
                reply["description"] = str(spec["description"])
            if kind == "nfm_reply":
                reply = {"name": "flow", "body": "Sent", "response_json": '{"flow_token":"x"}'}
            content = {"type": kind, kind: reply}
        elif msg_type == "button":
            text = str(spec.get("text") or "Stop promotions")
            content = {"payload": str(spec.get("payload") or text), "text": text}
        elif msg_type == "system":
            new_wa_id = str(spec.get("new_wa_id") or "15557654321")
            content = {
                "body": f"User {name} changed from {wa_id} to {new_wa_id}",
                "wa_id": new_wa_id,
                "type": "user_changed_number",
            }
        elif msg_type == "unsupported":
            content = {"type": str(spec.get("unsupported_type") or "poll_creation")}
            message["errors"] = [async_error(int(spec.get("error_code") or 131051))]
        else:
            content = json.loads(json.dumps(_DEFAULT_CONTENT.get(msg_type, {})))
        if "content" in spec:
            content = spec["content"]  # verbatim override, e.g. a reaction without emoji
        if spec.get("errors") is not None:
            message["errors"] = list(spec["errors"])
        message[msg_type] = content

        contacts: list[dict[str, Any]] = []
        if msg_type != "system":  # system messages come without contacts[]
            contact: dict[str, Any] = {"profile": {"name": name}} if name else {"profile": {}}
            if spec.get("username"):
                contact["profile"]["username"] = spec["username"]
            if not hide_phone:
                contact["wa_id"] = wa_id
            if user_id:
                contact["user_id"] = str(user_id)
            contacts.append(contact)
            if name:
                with self._lock:
                    self._customers[wa_id] = name
        return message, contacts, media_id

    def _inbound_media(
        self, number: SimNumber, msg_type: str, spec: Mapping[str, Any], voice: Any
    ) -> tuple[dict[str, Any], str]:
        media = spec.get("media") or {}
        default_mime, default_data, default_name = _DEFAULT_MEDIA[msg_type]
        if "base64" in media:
            data = base64.b64decode(media["base64"])
        elif "text" in media:
            data = str(media["text"]).encode("utf-8")
        else:
            data = default_data
        mime = str(media.get("mime_type") or default_mime)
        filename = spec.get("filename") or media.get("filename")
        if msg_type == "document" and not filename:
            filename = default_name
        media_id = self.put_media(number.phone_number_id, data, mime, filename)
        stored = self._media[media_id]
        content: dict[str, Any] = {}
        if spec.get("caption") and msg_type in ("image", "video", "document"):
            content["caption"] = str(spec["caption"])
        if msg_type == "document":
            content["filename"] = filename
        content.update({"mime_type": mime, "sha256": stored.sha256_b64, "id": media_id})
        if spec.get("include_url", True):
            content["url"] = self.media_download_url(media_id)
        if msg_type == "audio":
            content["voice"] = bool(voice)
        if msg_type == "sticker":
            content["animated"] = bool(spec.get("animated", False))
        return content, media_id


_REFERRAL: dict[str, Any] = {
    "source_url": "https://fb.me/3cr4Wqqkv",
    "source_id": "120226305854810726",
    "source_type": "ad",
    "body": "Summer succulents are here!",
    "headline": "Chat with us",
    "media_type": "image",
    "image_url": "https://scontent.xx.fbcdn.net/v/t45.1/ad.jpg",
    "ctwa_clid": "Aff-n8ZTsimulated",
    "welcome_message": {"text": "Hi there! Let us know how we can help!"},
}

# A 1x1 transparent PNG; other defaults are recognisable byte strings with the right magic.
_PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
_DEFAULT_MEDIA: dict[str, tuple[str, bytes, str]] = {
    "image": ("image/png", _PNG_1PX, "image.png"),
    "video": ("video/mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16, "video.mp4"),
    "audio": ("audio/ogg", b"OggS\x00\x02" + b"\x00" * 22, "audio.ogg"),
    "document": ("application/pdf", b"%PDF-1.4\n%simulated\n%%EOF\n", "document.pdf"),
    "sticker": ("image/webp", b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x00" * 14, "sticker.webp"),
}

_DEFAULT_CONTENT: dict[str, Any] = {
    "location": {
        "latitude": 37.4611978,
        "longitude": -122.2164385,
        "name": "Meta HQ",
        "address": "1 Hacker Way, Menlo Park, CA 94025",
    },
    "contacts": [
        {
            "name": {
                "formatted_name": "Barbara J. Johnson",
                "first_name": "Barbara",
                "last_name": "Johnson",
            },
            "org": {"company": "Social Tsunami"},
            "phones": [{"phone": "+1 (415) 555-0829", "wa_id": "14155550829", "type": "MOBILE"}],
            "emails": [{"email": "bj@example.com", "type": "WORK"}],
        }
    ],
    "order": {
        "catalog_id": "194836987003835",
        "text": "Love these!",
        "product_items": [
            {
                "product_retailer_id": "di9ozbzfi4",
                "quantity": 2,
                "item_price": 30,
                "currency": "USD",
            },
            {
                "product_retailer_id": "nqryix03ez",
                "quantity": 1,
                "item_price": 7.99,
                "currency": "USD",
            },
        ],
    },
}
