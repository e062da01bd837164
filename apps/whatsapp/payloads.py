"""Parse verified WhatsApp webhook bodies into typed, immutable objects.

One POST from Meta may carry several entries (WABAs), each with several changes, each with several
messages, statuses and errors. Everything here walks all of them; nothing reads only
``entry[0].changes[0]``. Every string is untrusted user or Meta content: render it escaped.

The parser knows Meta's JSON, not Klaros models. Unknown ``field`` values and unknown message
types are kept (``Change.value_raw``, ``InboundMessage.content``) rather than dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

__all__ = [
    "MEDIA_TYPES",
    "Change",
    "ContactProfile",
    "Entry",
    "ErrorInfo",
    "InboundMessage",
    "MediaRef",
    "MessageContext",
    "Notification",
    "PayloadError",
    "StatusUpdate",
    "TemplateCategoryUpdate",
    "TemplateStatusUpdate",
    "UserPreference",
    "message_preview",
    "parse_notification",
    "parse_template_category_update",
]

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
# Fields whose ``value`` looks like a ``messages`` value (metadata with the phone number id).
_NUMBER_FIELDS = frozenset({"messages", "user_preferences", "smb_message_echoes"})

Raw = Mapping[str, Any]
_T = TypeVar("_T")


class PayloadError(ValueError):
    """The body is not JSON, or not shaped like a WhatsApp Business Account notification."""


# --------------------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True)
class ErrorInfo:
    """An error object from ``value.errors[]``, ``messages[].errors[]`` or ``statuses[].errors[]``.

    Build logic on ``code`` (and ``details``); Meta says titles will be deprecated.
    """

    code: int | None
    title: str
    message: str
    details: str
    href: str
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class ContactProfile:
    """A ``contacts[]`` block: who the customer is. ``wa_id`` may be missing (usernames, 2026)."""

    wa_id: str | None
    user_id: str | None
    parent_user_id: str | None
    name: str | None
    username: str | None
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class MessageContext:
    """``messages[].context``: the quoted message, forward flags and product inquiries."""

    quoted_wamid: str | None
    quoted_from: str | None
    forwarded: bool
    frequently_forwarded: bool
    referred_product: Raw | None
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class MediaRef:
    """The media part of an image/video/audio/document/sticker message.

    ``sha256`` in webhooks is base64 (``GET /{media_id}`` answers hex); compare with
    :func:`apps.whatsapp.graph.media_sha256_matches`, which accepts both.
    """

    media_id: str
    mime_type: str
    sha256: str
    url: str | None
    caption: str | None
    filename: str | None
    voice: bool
    animated: bool


@dataclass(frozen=True)
class InboundMessage:
    """One ``value.messages[]`` item: something a customer sent to a business number."""

    wamid: str
    from_wa_id: str | None
    user_id: str | None
    parent_user_id: str | None
    timestamp: datetime
    type: str
    content: Raw
    """The object named after ``type`` (e.g. ``{"body": ...}`` for text), ``{}`` when absent."""
    context: MessageContext | None
    referral: Raw | None
    errors: tuple[ErrorInfo, ...]
    group_id: str | None
    raw: Raw = field(repr=False)

    @property
    def media(self) -> MediaRef | None:
        """The media reference for media types, else None."""
        if self.type not in MEDIA_TYPES or not self.content.get("id"):
            return None
        c = self.content
        return MediaRef(
            media_id=str(c["id"]),
            mime_type=str(c.get("mime_type") or ""),
            sha256=str(c.get("sha256") or ""),
            url=_opt_str(c.get("url")),
            caption=_opt_str(c.get("caption")),
            filename=_opt_str(c.get("filename")),
            voice=c.get("voice") is True,
            animated=c.get("animated") is True,
        )

    @property
    def is_reaction_removal(self) -> bool:
        """True for a reaction whose emoji is missing or empty: the customer removed it."""
        return self.type == "reaction" and not self.content.get("emoji")

    @property
    def quoted_wamid(self) -> str | None:
        """The wamid this message replies to, if any."""
        return self.context.quoted_wamid if self.context else None


@dataclass(frozen=True)
class StatusUpdate:
    """One ``value.statuses[]`` item: delivery news about a message the business sent."""

    wamid: str
    status: str
    timestamp: datetime
    recipient_id: str | None
    recipient_user_id: str | None
    recipient_parent_user_id: str | None
    recipient_type: str | None
    pricing: Raw | None
    conversation: Raw | None
    errors: tuple[ErrorInfo, ...]
    biz_opaque_callback_data: str | None
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class TemplateStatusUpdate:
    """The value of a ``message_template_status_update`` change.

    ``template_id`` is a string (Meta sends an integer here, strings everywhere else);
    ``language`` is normalised to the ``en_US`` form.
    """

    event: str
    template_id: str | None
    name: str
    language: str
    reason: str | None
    category: str | None
    rejection_info: Raw | None
    other_info: Raw | None
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class TemplateCategoryUpdate:
    """The value of a ``template_category_update`` change. Meta sends two kinds: a notice that
    an automated review *will* move the template (``correct_category``, with ``new_category``
    the category still in force and ``category_update_timestamp`` when it changes), and the
    completed change (``previous_category`` and ``new_category``). Older bodies carry only
    ``new_category``: a completed change."""

    template_id: str | None
    name: str
    language: str
    new_category: str
    previous_category: str | None
    correct_category: str | None
    takes_effect_at: datetime | None
    raw: Raw = field(repr=False)

    @property
    def completed(self) -> bool:
        return self.correct_category is None or self.previous_category is not None


@dataclass(frozen=True)
class UserPreference:
    """One ``user_preferences[]`` item: a customer tapped Stop/Resume on marketing messages."""

    wa_id: str | None
    user_id: str | None
    category: str
    value: str
    detail: str
    timestamp: datetime | None
    raw: Raw = field(repr=False)


@dataclass(frozen=True)
class Change:
    """One ``entry[].changes[]`` item.

    ``phone_number_id`` routes the change to a tenant; it is None for WABA-level fields
    (template updates, account updates), which route by the entry's WABA id instead.
    """

    field: str
    value_raw: Raw = field(repr=False)
    phone_number_id: str | None = None
    display_phone_number: str | None = None
    contacts: tuple[ContactProfile, ...] = ()
    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    errors: tuple[ErrorInfo, ...] = ()
    template_status: TemplateStatusUpdate | None = None
    user_preferences: tuple[UserPreference, ...] = ()

    def contact_for(self, message: InboundMessage) -> ContactProfile | None:
        """The ``contacts[]`` block describing the sender of ``message``, if Meta sent one."""
        for contact in self.contacts:
            if message.user_id and contact.user_id == message.user_id:
                return contact
            if message.from_wa_id and contact.wa_id == message.from_wa_id:
                return contact
        # A single contact alongside messages is the sender even when ids are spelled
        # differently (Brazil/Mexico number rewrites).
        return self.contacts[0] if len(self.contacts) == 1 else None


@dataclass(frozen=True)
class Entry:
    """One ``entry[]`` item; ``waba_id`` is the WhatsApp Business Account id."""

    waba_id: str
    time: datetime | None
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Notification:
    """A whole webhook POST body."""

    object: str
    entries: tuple[Entry, ...]

    def changes(self) -> Iterator[tuple[Entry, Change]]:
        """Every change of every entry."""
        for entry in self.entries:
            for change in entry.changes:
                yield entry, change

    def messages(self) -> Iterator[tuple[Change, InboundMessage]]:
        """Every inbound message in the notification, with the change it came in."""
        for _entry, change in self.changes():
            for message in change.messages:
                yield change, message

    def statuses(self) -> Iterator[tuple[Change, StatusUpdate]]:
        """Every status update in the notification, with the change it came in."""
        for _entry, change in self.changes():
            for status in change.statuses:
                yield change, status


# --------------------------------------------------------------------------------------------
# Parsing
#
# This runs for every webhook Meta posts, so valid bodies take the cheap road: the path named in
# an error message (``entry[0].changes[1].value.statuses[2].timestamp``) is only built once
# something is wrong. A parser raises _Invalid with the path relative to the object it was given;
# each list it sits in prefixes the item's place as the error passes through, and
# parse_notification turns the result into a PayloadError.


class _Invalid(Exception):
    """A shape problem at ``where``, a path relative to the object being parsed."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem


def parse_notification(body: bytes | str) -> Notification:
    """Parse an already-verified webhook body.

    Raises :class:`PayloadError` for invalid JSON or a body that is not a
    ``whatsapp_business_account`` notification; the message names the offending path.
    """
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"body is not valid JSON: {exc}") from exc
    try:
        root = _obj(data, "body")
        obj = root.get("object")
        if obj != "whatsapp_business_account":
            raise _Invalid("object", f"expected 'whatsapp_business_account', got {obj!r}")
        entries = _parse_items(root.get("entry"), "entry", _parse_entry, required=True)
    except _Invalid as exc:
        # Chained to what the problem was found from (an out-of-range timestamp), if anything.
        raise PayloadError(f"{exc.where}: {exc.problem}") from exc.__cause__
    return Notification(object=obj, entries=entries)


def _parse_entry(entry: Raw) -> Entry:
    changes = _list(entry.get("changes"), "changes")  # reported before a missing id
    time = entry.get("time")
    return Entry(
        waba_id=_req_str(entry, "id"),
        time=_timestamp(time, "time") if time is not None else None,
        changes=_parse_items(changes, "changes", _parse_change),
    )


def _parse_change(change: Raw) -> Change:
    field_name = _req_str(change, "field")
    value = _obj(change.get("value"), "value")
    if field_name == "message_template_status_update":
        return Change(
            field=field_name,
            value_raw=value,
            template_status=_parse_template_status(value),
        )
    if field_name not in _NUMBER_FIELDS:
        return Change(field=field_name, value_raw=value)

    metadata = _obj(value.get("metadata"), "value.metadata")
    return Change(
        field=field_name,
        value_raw=value,
        phone_number_id=_req_str(metadata, "phone_number_id", "value.metadata.phone_number_id"),
        display_phone_number=_opt_str(metadata.get("display_phone_number")),
        contacts=_parse_items(value.get("contacts"), "value.contacts", _parse_contact),
        messages=_parse_items(value.get("messages"), "value.messages", _parse_message),
        statuses=_parse_items(value.get("statuses"), "value.statuses", _parse_status),
        errors=_parse_items(value.get("errors"), "value.errors", _parse_error),
        user_preferences=_parse_items(
            value.get("user_preferences"), "value.user_preferences", _parse_user_preference
        ),
    )


def _parse_contact(contact: Raw) -> ContactProfile:
    profile = contact.get("profile")
    profile = profile if _is_obj(profile) else {}
    return ContactProfile(
        wa_id=_opt_str(contact.get("wa_id")),
        user_id=_opt_str(contact.get("user_id")),
        parent_user_id=_opt_str(contact.get("parent_user_id")),
        name=_opt_str(profile.get("name")),
        username=_opt_str(profile.get("username")),
        raw=contact,
    )


def _parse_message(msg: Raw) -> InboundMessage:
    msg_type = _req_str(msg, "type")
    content = msg.get(msg_type)
    if msg_type == "contacts":
        # The only type whose content is a list (of vCards); wrap it so content stays a mapping.
        content = {"contacts": [] if content is None else _list(content, "contacts")}
    elif content is None:
        content = {}
    else:
        content = _obj(content, msg_type)
    context = msg.get("context")
    referral = msg.get("referral")
    return InboundMessage(
        wamid=_req_str(msg, "id"),
        from_wa_id=_opt_str(msg.get("from")),
        user_id=_opt_str(msg.get("from_user_id")),
        parent_user_id=_opt_str(msg.get("from_parent_user_id")),
        timestamp=_timestamp(msg.get("timestamp"), "timestamp"),
        type=msg_type,
        content=content,
        context=_parse_context(_obj(context, "context")) if context is not None else None,
        referral=_obj(referral, "referral") if referral is not None else None,
        errors=_parse_items(msg.get("errors"), "errors", _parse_error),
        group_id=_opt_str(msg.get("group_id")),
        raw=msg,
    )


def _parse_context(ctx: Raw) -> MessageContext:
    product = ctx.get("referred_product")
    return MessageContext(
        quoted_wamid=_opt_str(ctx.get("id")),
        quoted_from=_opt_str(ctx.get("from")),
        forwarded=ctx.get("forwarded") is True,
        frequently_forwarded=ctx.get("frequently_forwarded") is True,
        referred_product=product if _is_obj(product) else None,
        raw=ctx,
    )


def _parse_status(st: Raw) -> StatusUpdate:
    pricing = st.get("pricing")
    conversation = st.get("conversation")
    return StatusUpdate(
        wamid=_req_str(st, "id"),
        status=_req_str(st, "status"),
        timestamp=_timestamp(st.get("timestamp"), "timestamp"),
        recipient_id=_opt_str(st.get("recipient_id")),
        recipient_user_id=_opt_str(st.get("recipient_user_id")),
        recipient_parent_user_id=_opt_str(st.get("recipient_parent_user_id")),
        recipient_type=_opt_str(st.get("recipient_type")),
        pricing=_obj(pricing, "pricing") if pricing is not None else None,
        conversation=_obj(conversation, "conversation") if conversation is not None else None,
        errors=_parse_items(st.get("errors"), "errors", _parse_error),
        biz_opaque_callback_data=_opt_str(st.get("biz_opaque_callback_data")),
        raw=st,
    )


def _parse_error(err: Raw) -> ErrorInfo:
    code = err.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise _Invalid("code", f"expected an integer, got {code!r}")
    error_data = err.get("error_data")
    # error_data is usually {"details": ...} but may be a bare string (template management).
    if _is_obj(error_data):
        details = _opt_str(error_data.get("details")) or ""
    else:
        details = _opt_str(error_data) or ""
    title = _opt_str(err.get("title")) or ""
    message = _opt_str(err.get("message")) or title
    return ErrorInfo(
        code=code,
        title=title or message,
        message=message,
        details=details,
        href=_opt_str(err.get("href")) or "",
        raw=err,
    )


def _parse_template_status(value: Raw) -> TemplateStatusUpdate:
    template_id = value.get("message_template_id")
    language = _opt_str(value.get("message_template_language")) or ""
    rejection = value.get("rejection_info")
    other = value.get("other_info")
    return TemplateStatusUpdate(
        event=_req_str(value, "event", "value.event"),
        template_id=str(template_id) if template_id is not None else None,
        name=_req_str(value, "message_template_name", "value.message_template_name"),
        language=language.replace("-", "_"),
        reason=_opt_str(value.get("reason")),
        category=_opt_str(value.get("message_template_category")),
        rejection_info=rejection if _is_obj(rejection) else None,
        other_info=other if _is_obj(other) else None,
        raw=value,
    )


def parse_template_category_update(value: Any) -> TemplateCategoryUpdate:
    """The value of one ``template_category_update`` change; raises PayloadError. Parsed by
    ingest when it handles the change, so a malformed one fails alone."""
    try:
        return _parse_template_category_update(value)
    except _Invalid as exc:
        raise PayloadError(f"{exc.where}: {exc.problem}") from exc.__cause__


def _parse_template_category_update(value: Any) -> TemplateCategoryUpdate:
    value = _obj(value, "value")
    template_id = value.get("message_template_id")
    language = _opt_str(value.get("message_template_language")) or ""
    when = value.get("category_update_timestamp")
    return TemplateCategoryUpdate(
        template_id=str(template_id) if template_id is not None else None,
        name=_req_str(value, "message_template_name", "value.message_template_name"),
        language=language.replace("-", "_"),
        new_category=_req_str(value, "new_category", "value.new_category").upper(),
        previous_category=(_opt_str(value.get("previous_category")) or "").upper() or None,
        correct_category=(_opt_str(value.get("correct_category")) or "").upper() or None,
        takes_effect_at=(
            _timestamp(when, "value.category_update_timestamp") if when is not None else None
        ),
        raw=value,
    )


def _parse_user_preference(pref: Raw) -> UserPreference:
    ts = pref.get("timestamp")
    return UserPreference(
        wa_id=_opt_str(pref.get("wa_id")),
        user_id=_opt_str(pref.get("user_id")),
        category=_opt_str(pref.get("category")) or "",
        value=_req_str(pref, "value"),
        detail=_opt_str(pref.get("detail")) or "",
        timestamp=_timestamp(ts, "timestamp") if ts is not None else None,
        raw=pref,
    )


# --------------------------------------------------------------------------------------------
# Shape helpers
#
# json.loads only makes dict, list, str, int, float, bool and None, so the checks below try the
# exact type first: ``type(v) is dict`` is much cheaper than ``isinstance(v, Mapping)``, which
# goes through ABCMeta.__instancecheck__. The general check still follows, so any Mapping passes.


def _is_obj(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _obj(value: Any, where: str) -> Raw:
    if _is_obj(value):
        return value
    raise _Invalid(where, f"expected an object, got {_kind(value)}")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(where, f"expected a list, got {_kind(value)}")
    return value


def _parse_items(
    items: Any, where: str, parse: Callable[[Raw], _T], *, required: bool = False
) -> tuple[_T, ...]:
    """``parse`` applied to every object in the list ``items`` (None counts as empty unless
    ``required``), as a tuple. An error inside an item gets the item's place prefixed."""
    if items is None and not required:
        return ()
    parsed = []
    for index, item in enumerate(_list(items, where)):
        if not _is_obj(item):
            raise _Invalid(f"{where}[{index}]", f"expected an object, got {_kind(item)}")
        try:
            parsed.append(parse(item))
        except _Invalid as exc:
            exc.where = f"{where}[{index}].{exc.where}"
            raise
    return tuple(parsed)


def _req_str(obj: Raw, key: str, where: str | None = None) -> str:
    """``obj[key]`` as a non-empty string (integers are spelled out); ``where`` names it in
    errors and defaults to ``key``."""
    value = obj.get(key)
    if type(value) is str and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise _Invalid(where or key, f"expected a non-empty string, got {_kind(value)}")
    return value


def _opt_str(value: Any) -> str | None:
    if type(value) is str:
        return value
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _timestamp(value: Any, where: str) -> datetime:
    # Meta sends unix seconds as strings in messages/statuses and as integers elsewhere.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        seconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise _Invalid(where, f"expected unix seconds, got {_kind(value)}")
    try:
        return datetime.fromtimestamp(seconds, UTC)  # tz=UTC, as a keyword, is twice as slow
    except (OverflowError, OSError, ValueError) as exc:
        raise _Invalid(where, f"timestamp out of range: {seconds}") from exc


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Display


def message_preview(msg: InboundMessage, *, limit: int = 200) -> str:
    """A one-line, plain-text summary of an inbound message for lists and notifications.

    Not HTML: the caller escapes it like any other untrusted string.
    """
    text = _preview(msg)
    text = " ".join(text.split())  # collapse newlines/tabs for one-line display
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _preview(msg: InboundMessage) -> str:
    c = msg.content
    t = msg.type
    if t == "text":
        return _s(c.get("body"))
    if t in ("image", "video", "sticker"):
        label = {"image": "Photo", "video": "Video", "sticker": "Sticker"}[t]
        caption = _s(c.get("caption"))
        return f"{label}: {caption}" if caption else label
    if t == "audio":
        return "Voice message" if c.get("voice") is True else "Audio"
    if t == "document":
        parts = [p for p in (_s(c.get("filename")), _s(c.get("caption"))) if p]
        return "Document: " + " — ".join(parts) if parts else "Document"
    if t == "location":
        place = ", ".join(p for p in (_s(c.get("name")), _s(c.get("address"))) if p)
        lat, lon = c.get("latitude"), c.get("longitude")
        coords = f"{lat}, {lon}" if lat is not None and lon is not None else ""
        if place and coords:
            return f"Location: {place} ({coords})"
        return f"Location: {place or coords}" if place or coords else "Location"
    if t == "contacts":
        names = []
        for card in c.get("contacts") or []:
            if isinstance(card, Mapping):
                name = card.get("name")
                if isinstance(name, Mapping):
                    full = _s(name.get("formatted_name")) or " ".join(
                        p for p in (_s(name.get("first_name")), _s(name.get("last_name"))) if p
                    )
                    names.append(full or "(no name)")
                else:
                    names.append("(no name)")
        label = "Contact" if len(names) == 1 else "Contacts"
        return f"{label}: {', '.join(names)}" if names else "Contacts"
    if t == "interactive":
        kind = _s(c.get("type"))
        reply = c.get(kind) if kind else None
        reply = reply if isinstance(reply, Mapping) else {}
        if kind == "nfm_reply":
            return f"Form reply: {_s(reply.get('body')) or _s(reply.get('name')) or 'submitted'}"
        title = _s(reply.get("title"))
        reply_id = _s(reply.get("id"))
        shown = title or reply_id or "(no title)"
        if reply_id and title and reply_id != title:
            shown = f"{title} [{reply_id}]"
        label = "List choice" if kind == "list_reply" else "Button"
        return f"{label}: {shown}"
    if t == "button":
        text, payload = _s(c.get("text")), _s(c.get("payload"))
        shown = text or payload
        if payload and text and payload != text:
            shown = f"{text} [{payload}]"
        return f"Button: {shown}" if shown else "Button"
    if t == "reaction":
        target = _s(c.get("message_id"))
        emoji = _s(c.get("emoji"))
        if not emoji:
            return "Removed a reaction"
        return f"Reacted {emoji}" + (" to a message" if target else "")
    if t == "order":
        items = [i for i in c.get("product_items") or [] if isinstance(i, Mapping)]
        units = 0
        for item in items:
            qty = item.get("quantity")
            units += qty if isinstance(qty, int) and not isinstance(qty, bool) else 1
        summary = f"Order: {len(items)} item{'s' if len(items) != 1 else ''}"
        if units != len(items):
            summary += f" ({units} units)"
        note = _s(c.get("text"))
        return f"{summary} — {note}" if note else summary
    if t == "system":
        return _s(c.get("body")) or "System message"
    if t == "unsupported":
        reason = msg.errors[0] if msg.errors else None
        what = _s(c.get("type"))
        head = f"Unsupported message ({what})" if what else "Unsupported message"
        if reason:
            return f"{head}: {reason.details or reason.title}"
        return head
    # Newer types (edit, revoke, request_welcome, ...) and messages whose content sits in
    # value.errors: say what arrived rather than showing nothing.
    if msg.errors:
        return f"{t.capitalize()} message: {msg.errors[0].details or msg.errors[0].title}"
    return f"{t.capitalize()} message"


def _s(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""
