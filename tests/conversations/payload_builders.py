"""Meta-shaped webhook bodies for the inbound tests (shapes from whatsapp-cloud-api.md §4-6).

Builders return plain dicts; `encode` serialises them the way Meta does (compact, non-ASCII as
``\\uXXXX``) and `post_signed` sends the exact bytes through the Django test client with the
simulator's signer (`apps.whatsapp.signature.sign_body`).
"""

from __future__ import annotations

import itertools
from typing import Any

from apps.whatsapp.signature import dumps_like_meta, sign_body

WEBHOOK_URL = "/webhooks/whatsapp/"
BASE_TS = 1767225600  # 2026-01-01T00:00:00Z
CUSTOMER = "15551234567"

_counter = itertools.count(1)


def new_wamid(prefix: str = "IN") -> str:
    return f"wamid.TEST{prefix}{next(_counter):08d}"


def notification(*entries: dict) -> dict:
    return {"object": "whatsapp_business_account", "entry": list(entries)}


def entry(*changes: dict, waba_id: str = "200000000001") -> dict:
    return {"id": waba_id, "changes": list(changes)}


def messages_change(
    world_or_pnid: Any,
    *,
    messages: list[dict] | None = None,
    statuses: list[dict] | None = None,
    contacts: list[dict] | None = None,
    errors: list[dict] | None = None,
) -> dict:
    """A `field: messages` change for a number (a TenantWorld, a WhatsAppNumber or a pnid)."""
    pnid = _pnid(world_or_pnid)
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": f"1555{pnid[-7:]}", "phone_number_id": pnid},
    }
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    if errors is not None:
        value["errors"] = errors
    return {"field": "messages", "value": value}


def contact(wa_id: str = CUSTOMER, name: str = "Dana Levi", user_id: str | None = None) -> dict:
    block: dict[str, Any] = {"profile": {"name": name}, "wa_id": wa_id}
    if user_id:
        block["user_id"] = user_id
    return block


def inbound(
    msg_type: str,
    content: Any,
    *,
    wamid: str | None = None,
    from_: str = CUSTOMER,
    ts: int = BASE_TS,
    **extra: Any,
) -> dict:
    """One `messages[]` item; `extra` adds top-level keys (context, referral, errors)."""
    message: dict[str, Any] = {}
    if "context" in extra:
        message["context"] = extra.pop("context")
    message.update({"from": from_, "id": wamid or new_wamid(), "timestamp": str(ts)})
    message.update(extra)
    message["type"] = msg_type
    if content is not None:
        message[msg_type] = content
    return message


def text(body: str, **kwargs: Any) -> dict:
    return inbound("text", {"body": body}, **kwargs)


def inbound_change(world: Any, *messages: dict, name: str = "Dana Levi") -> dict:
    senders = {m["from"] for m in messages}
    return messages_change(
        world, contacts=[contact(wa_id, name) for wa_id in sorted(senders)], messages=list(messages)
    )


PRICING_SERVICE = {
    "billable": False,
    "pricing_model": "PMP",
    "type": "free_customer_service",
    "category": "service",
}
PRICING_MARKETING = {
    "billable": True,
    "pricing_model": "PMP",
    "type": "regular",
    "category": "marketing",
}


def status(
    wamid: str,
    value: str,
    *,
    ts: int = BASE_TS + 100,
    recipient: str = CUSTOMER,
    pricing: dict | None = None,
    errors: list[dict] | None = None,
) -> dict:
    item: dict[str, Any] = {
        "id": wamid,
        "status": value,
        "timestamp": str(ts),
        "recipient_id": recipient,
    }
    if pricing is not None:
        item["pricing"] = pricing
    if errors is not None:
        item["errors"] = errors
    return item


def meta_error(code: int, title: str, details: str) -> dict:
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": "/documentation/business-messaging/whatsapp/support/error-codes",
    }


def status_body(world: Any, *statuses: dict) -> dict:
    return notification(entry(messages_change(world, statuses=list(statuses))))


def text_body(world: Any, body: str = "Hello", *, name: str = "Dana Levi", **kwargs: Any):
    """A one-message body; returns (body dict, wamid)."""
    message = text(body, **kwargs)
    return notification(entry(inbound_change(world, message, name=name))), message["id"]


def encode(payload: dict) -> bytes:
    return dumps_like_meta(payload)


def post_signed(
    client: Any,
    body: bytes,
    app_secret: str,
    *,
    url: str = WEBHOOK_URL,
    signature: str | None = None,
    **headers: Any,
):
    """POST raw bytes with `X-Hub-Signature-256` computed like Meta (or the given header)."""
    header = sign_body(body, app_secret) if signature is None else signature
    return client.post(
        url,
        data=body,
        content_type="application/json",
        headers={"X-Hub-Signature-256": header, **headers},
    )


def _pnid(world_or_pnid: Any) -> str:
    if isinstance(world_or_pnid, str):
        return world_or_pnid
    number = getattr(world_or_pnid, "number", world_or_pnid)
    return number.phone_number_id


# Every inbound type of the reference (§5), as (label, messages[] item, expectations).
# Expectations: `type`, a substring of the stored preview, and media fields when relevant.
MEDIA_SHA = "5i3Dp6l8wXhXb0o2bq2b3MHrP8K0m4uQWZkq2GZ9K6o="


def every_inbound_type() -> list[tuple[str, dict, dict]]:
    ctx = {"from": "15550000001", "id": "wamid.OUTBOUND_BUTTONS"}
    return [
        ("text", text("Hi there"), {"type": "text", "preview": "Hi there"}),
        (
            "image",
            inbound(
                "image",
                {"caption": "Look", "mime_type": "image/jpeg", "sha256": MEDIA_SHA, "id": "9001"},
            ),
            {"type": "image", "preview": "Photo: Look", "media": ("9001", "image/jpeg")},
        ),
        (
            "video",
            inbound(
                "video",
                {"caption": "Clip", "mime_type": "video/mp4", "sha256": MEDIA_SHA, "id": "9002"},
            ),
            {"type": "video", "preview": "Video: Clip", "media": ("9002", "video/mp4")},
        ),
        (
            "audio",
            inbound(
                "audio",
                {"mime_type": "audio/ogg", "sha256": MEDIA_SHA, "id": "9003", "voice": False},
            ),
            {"type": "audio", "preview": "Audio", "media": ("9003", "audio/ogg")},
        ),
        (
            "voice",
            inbound(
                "audio",
                {
                    "mime_type": "audio/ogg; codecs=opus",
                    "sha256": MEDIA_SHA,
                    "id": "9004",
                    "voice": True,
                },
            ),
            {
                "type": "audio",
                "preview": "Voice message",
                "media": ("9004", "audio/ogg; codecs=opus"),
            },
        ),
        (
            "document",
            inbound(
                "document",
                {
                    "caption": "Invoice",
                    "filename": "inv.pdf",
                    "mime_type": "application/pdf",
                    "sha256": MEDIA_SHA,
                    "id": "9005",
                },
            ),
            {"type": "document", "preview": "inv.pdf", "media": ("9005", "application/pdf")},
        ),
        (
            "sticker",
            inbound(
                "sticker",
                {"mime_type": "image/webp", "sha256": MEDIA_SHA, "id": "9006", "animated": False},
            ),
            {"type": "sticker", "preview": "Sticker", "media": ("9006", "image/webp")},
        ),
        (
            "location",
            inbound(
                "location",
                {
                    "latitude": 37.4611978,
                    "longitude": -122.2164385,
                    "name": "Meta HQ",
                    "address": "1 Hacker Way",
                },
            ),
            {"type": "location", "preview": "Meta HQ"},
        ),
        (
            "contacts",
            inbound(
                "contacts",
                [
                    {
                        "name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
                        "phones": [
                            {"phone": "+1 415 555 0829", "wa_id": "14155550829", "type": "MOBILE"}
                        ],
                    }
                ],
            ),
            {"type": "contacts", "preview": "Barbara J. Johnson"},
        ),
        (
            "button_reply",
            inbound(
                "interactive",
                {
                    "type": "button_reply",
                    "button_reply": {"id": "cancel-button", "title": "Cancel"},
                },
                context=dict(ctx),
            ),
            {"type": "interactive", "preview": "Cancel", "context": "wamid.OUTBOUND_BUTTONS"},
        ),
        (
            "list_reply",
            inbound(
                "interactive",
                {
                    "type": "list_reply",
                    "list_reply": {
                        "id": "priority_express",
                        "title": "Priority Mail Express",
                        "description": "Next Day",
                    },
                },
                context=dict(ctx),
            ),
            {"type": "interactive", "preview": "Priority Mail Express"},
        ),
        (
            "template_button",
            inbound(
                "button",
                {"payload": "unsubscribe_promo_42", "text": "Unsubscribe"},
                context={"from": "15550000001", "id": "wamid.OUTBOUND_TEMPLATE"},
            ),
            {"type": "button", "preview": "Unsubscribe"},
        ),
        (
            "reaction",
            inbound("reaction", {"message_id": "wamid.TARGET", "emoji": "\U0001f44d"}),
            {"type": "reaction", "preview": "Reacted \U0001f44d"},
        ),
        (
            "reaction_removed",
            inbound("reaction", {"message_id": "wamid.TARGET"}),
            {"type": "reaction", "preview": "Removed a reaction"},
        ),
        (
            "order",
            inbound(
                "order",
                {
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
            ),
            {"type": "order", "preview": "Order: 2 items"},
        ),
        (
            "system",
            inbound(
                "system",
                {
                    "body": "User Dana Levi changed from 15551234567 to 15557654321",
                    "wa_id": "15557654321",
                    "type": "user_changed_number",
                },
            ),
            {"type": "system", "preview": "changed from"},
        ),
        (
            "unsupported",
            inbound(
                "unsupported",
                {"type": "poll_creation"},
                errors=[
                    meta_error(
                        131051, "Message type unknown", "Message type is currently not supported."
                    )
                ],
            ),
            {"type": "unsupported", "preview": "not supported", "error_code": 131051},
        ),
        (
            "context_reply",
            text("Yes, that one", context={"from": CUSTOMER, "id": "wamid.QUOTED"}),
            {"type": "text", "preview": "Yes, that one", "context": "wamid.QUOTED"},
        ),
        (
            "forwarded",
            text("fwd", context={"forwarded": True}),
            {"type": "text", "preview": "fwd", "forwarded": True},
        ),
        (
            "frequently_forwarded",
            text("chain letter", context={"frequently_forwarded": True}),
            {"type": "text", "preview": "chain letter", "frequently_forwarded": True},
        ),
        (
            "referral",
            text(
                "From the ad",
                referral={
                    "source_url": "https://fb.me/3cr4Wqqkv",
                    "source_id": "120226305854810726",
                    "source_type": "ad",
                    "body": "Summer succulents",
                    "headline": "Chat with us",
                    "media_type": "image",
                    "ctwa_clid": "Aff-n8ZT",
                },
            ),
            {"type": "text", "preview": "From the ad", "referral": "120226305854810726"},
        ),
    ]


# --- Delivery helpers -------------------------------------------------------------------------


def deliver(client: Any, world: Any, payload: dict | bytes, *, secret: str | None = None):
    """Post a body signed with the world's app secret, then drain the journal in-process."""
    from apps.conversations.inbound.journal import drain_journal

    body = payload if isinstance(payload, bytes) else encode(payload)
    response = post_signed(client, body, secret or world.credentials.app_secret)
    assert response.status_code == 200, response.content
    drain_journal()
    return response
