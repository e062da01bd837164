"""Turn stored messages into plain values the inbox templates can render.

Everything in ``Message.content`` and ``Message.referral`` came from Meta (and, before that, from
a customer): any key may be missing, of the wrong type, or hold markup. The functions here only
pick, type-check and compute values; they never build HTML and never mark anything safe. The
templates render every value through Django's autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()

# Short tags for the placeholder's icon: plain letters render with any font, emoji may not.
MEDIA_TAGS = {"image": "IMG", "video": "VID", "audio": "AUD", "document": "DOC", "sticker": "STK"}
MEDIA_LABELS = {
    "image": "Photo",
    "video": "Video",
    "audio": "Audio",
    "document": "Document",
    "sticker": "Sticker",
}

# Outbound ticks, WhatsApp-style. `accepted` means Meta took the send (it gave a wamid) but has
# not reported it sent yet: one grey tick, lighter than `sent`.
STATUS_TICKS = {
    "queued": ("tick-clock", "◷", "Queued"),
    "sending": ("tick-clock", "◷", "Sending"),
    "accepted": ("tick-accepted", "✓", "Accepted by Meta"),
    "sent": ("tick-sent", "✓", "Sent"),
    "delivered": ("tick-delivered", "✓✓", "Delivered"),
    "read": ("tick-read", "✓✓", "Read"),
    "played": ("tick-read", "✓✓", "Played"),
    "failed": ("tick-failed", "!", "Failed"),
}


def _s(value: Any) -> str:
    """A string from Meta, or "" for anything that is not a string."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def is_https_url(value: str) -> bool:
    return value.lower().startswith("https://")


def osm_link(latitude: Any, longitude: Any) -> str:
    """An OpenStreetMap link built from the two numbers only; "" when they are not coordinates."""
    lat, lon = _number(latitude), _number(longitude)
    if lat is None or lon is None or not (-90 <= lat <= 90) or not (-180 <= lon <= 180):
        return ""
    return (
        f"https://www.openstreetmap.org/?mlat={lat:.7f}&mlon={lon:.7f}#map=16/{lat:.7f}/{lon:.7f}"
    )


def _errors(message: Any) -> list[dict[str, str]]:
    found = []
    content = _map(message.content)
    for raw in _list(content.get("_errors")):
        raw = _map(raw)
        data = raw.get("error_data")
        details = _s(_map(data).get("details")) if isinstance(data, Mapping) else _s(data)
        found.append(
            {
                "code": _s(raw.get("code")),
                "title": _s(raw.get("title")) or _s(raw.get("message")),
                "details": details,
            }
        )
    if not found and (message.error_code or message.error_title or message.error_details):
        found.append(
            {
                "code": "" if message.error_code is None else str(message.error_code),
                "title": message.error_title,
                "details": message.error_details,
            }
        )
    return found


def _contact_cards(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    cards = []
    for raw in _list(content.get("contacts")):
        card = _map(raw)
        name = _map(card.get("name"))
        full = _s(name.get("formatted_name")) or " ".join(
            p for p in (_s(name.get("first_name")), _s(name.get("last_name"))) if p
        )
        org = _map(card.get("org"))
        cards.append(
            {
                "name": full,
                "org": " · ".join(p for p in (_s(org.get("company")), _s(org.get("title"))) if p),
                "phones": [
                    {
                        "phone": _s(_map(p).get("phone")),
                        "wa_id": _s(_map(p).get("wa_id")),
                        "type": _s(_map(p).get("type")),
                    }
                    for p in _list(card.get("phones"))
                ],
                "emails": [
                    {"email": _s(_map(e).get("email")), "type": _s(_map(e).get("type"))}
                    for e in _list(card.get("emails"))
                ],
                "urls": [_s(_map(u).get("url")) for u in _list(card.get("urls"))],
                "addresses": [
                    ", ".join(
                        _s(_map(a).get(k))
                        for k in ("street", "city", "state", "zip", "country")
                        if _s(_map(a).get(k))
                    )
                    for a in _list(card.get("addresses"))
                ],
                "birthday": _s(card.get("birthday")),
            }
        )
    return cards


def _order(content: Mapping[str, Any]) -> dict[str, Any]:
    items = []
    currencies = set()
    total = Decimal(0)
    totals_known = True
    for raw in _list(content.get("product_items")):
        item = _map(raw)
        quantity = _decimal(item.get("quantity"))
        price = _decimal(item.get("item_price"))
        currency = _s(item.get("currency"))
        line_total = quantity * price if quantity is not None and price is not None else None
        if line_total is None:
            totals_known = False
        else:
            total += line_total
        currencies.add(currency)
        items.append(
            {
                "product": _s(item.get("product_retailer_id")),
                "quantity": quantity,
                "price": price,
                "currency": currency,
                "line_total": line_total,
            }
        )
    # A total only makes sense in one currency and when every line has numbers.
    known = bool(items) and totals_known and len(currencies) == 1
    return {
        "catalog_id": _s(content.get("catalog_id")),
        "note": _s(content.get("text")),
        "items": items,
        "total": total if known else None,
        "currency": next(iter(currencies)) if known else "",
    }


def _media(message: Any, content: Mapping[str, Any]) -> dict[str, Any]:
    voice = content.get("voice") is True
    label = MEDIA_LABELS.get(message.type, message.type)
    if message.type == "audio" and voice:
        label = "Voice note"
    if message.type == "sticker" and content.get("animated") is True:
        label = "Animated sticker"
    return {
        "label": label,
        "tag": MEDIA_TAGS.get(message.type, "FILE"),
        "mime_type": _s(content.get("mime_type")),
        "caption": _s(content.get("caption")),
        "filename": _s(content.get("filename")),
        "media_id": _s(content.get("id")),
        "link": _s(content.get("link")),  # outbound media sent by link
    }


def message_view(message: Any) -> dict[str, Any]:
    """The renderable parts of one message: ``kind`` picks the template block."""
    content = _map(message.content)
    kind = message.type
    view: dict[str, Any] = {"kind": kind, "errors": _errors(message)}
    if kind == "text":
        body = content.get("body")
        view["body"] = body.strip("\n") if isinstance(body, str) else message.text
    elif kind in MEDIA_LABELS:
        view["kind"] = "media"
        view["media"] = _media(message, content)
    elif kind == "location":
        url = _s(content.get("url"))
        view["location"] = {
            "name": _s(content.get("name")),
            "address": _s(content.get("address")),
            "latitude": _s(content.get("latitude")),
            "longitude": _s(content.get("longitude")),
            "osm_url": osm_link(content.get("latitude"), content.get("longitude")),
            "url": url,
            "url_is_https": is_https_url(url),
        }
    elif kind == "contacts":
        view["cards"] = _contact_cards(content)
    elif kind == "interactive":
        reply_type = _s(content.get("type"))
        reply = _map(content.get(reply_type)) if reply_type else {}
        view["interactive"] = {
            "reply_type": reply_type,
            "label": {
                "button_reply": "Tapped button",
                "list_reply": "Chose from list",
                "nfm_reply": "Submitted form",
            }.get(reply_type, "Interactive reply"),
            "title": _s(reply.get("title")),
            "id": _s(reply.get("id")),
            "description": _s(reply.get("description")),
            "name": _s(reply.get("name")),
            "body": _s(reply.get("body")),
            "response_json": _s(reply.get("response_json")),
        }
    elif kind == "button":
        view["button"] = {"text": _s(content.get("text")), "payload": _s(content.get("payload"))}
    elif kind == "reaction":
        emoji = _s(content.get("emoji"))
        view["reaction"] = {
            "emoji": emoji,
            "removed": not emoji,
            "target_wamid": _s(content.get("message_id")),
        }
    elif kind == "order":
        view["order"] = _order(content)
    elif kind == "system":
        view["system"] = {"body": _s(content.get("body")), "type": _s(content.get("type"))}
    elif kind == "unsupported":
        view["unsupported_type"] = _s(content.get("type"))
    elif kind == "template":
        language = content.get("language")
        view["template"] = {
            "name": _s(content.get("name")),
            "language": _s(_map(language).get("code"))
            if isinstance(language, Mapping)
            else _s(language),
        }
    else:
        view["kind"] = "other"
    product = _map(content.get("_referred_product"))
    if product:
        view["referred_product"] = {
            "catalog_id": _s(product.get("catalog_id")),
            "product": _s(product.get("product_retailer_id")),
        }
    referral = _map(message.referral)
    if referral:
        source_url = _s(referral.get("source_url"))
        view["referral"] = {
            "headline": _s(referral.get("headline")),
            "body": _s(referral.get("body")),
            "source_type": _s(referral.get("source_type")),
            "source_id": _s(referral.get("source_id")),
            "media_type": _s(referral.get("media_type")),
            "source_url": source_url,
        }
    return view


@register.simple_tag
def message_parts(message: Any) -> dict[str, Any]:
    return message_view(message)


@register.simple_tag
def status_tick(status: str) -> dict[str, str]:
    css, symbol, label = STATUS_TICKS.get(status, ("tick-clock", "◷", status))
    return {"css": css, "symbol": symbol, "label": label}


@register.filter
def snippet(message: Any, length: int = 80) -> str:
    """A short plain-text quote of a message (autoescaped by the template like any value)."""
    text = " ".join((message.text or "").split()) or f"{message.type} message"
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"
