import json
from datetime import UTC, datetime

import pytest

from apps.whatsapp.payloads import (
    PayloadError,
    message_preview,
    parse_notification,
)
from apps.whatsapp.signature import dumps_like_meta

META = {"display_phone_number": "15550001111", "phone_number_id": "600700800900100"}
META_2 = {"display_phone_number": "15550002222", "phone_number_id": "600700800900200"}
DANA = {"profile": {"name": "Dana Levi"}, "wa_id": "15551234567"}
MEDIA_SHA = "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI="


def msg(n, type_, content, **extra):
    base = {"from": "15551234567", "id": f"wamid.A{n}", "timestamp": str(1767225600 + n)}
    base.update(extra)
    base["type"] = type_
    if content is not None:
        base[type_] = content
    return base


MESSAGES = [
    msg(1, "text", {"body": "Hi, is my order shipped?"}),
    msg(
        2,
        "image",
        {
            "caption": "Damaged box",
            "mime_type": "image/jpeg",
            "sha256": MEDIA_SHA,
            "id": "1003383421387256",
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1003383421387256",
        },
    ),
    msg(
        3,
        "video",
        {"caption": "unboxing", "mime_type": "video/mp4", "sha256": "Jh+2", "id": "7657"},
    ),
    msg(
        4,
        "audio",
        {"mime_type": "audio/ogg; codecs=opus", "sha256": "m04p", "id": "12", "voice": True},
    ),
    msg(
        5,
        "document",
        {
            "caption": "my receipt",
            "filename": "receipt.pdf",
            "mime_type": "application/pdf",
            "sha256": "V5OP",
            "id": "622684793477189",
        },
    ),
    msg(6, "sticker", {"mime_type": "image/webp", "sha256": "OmT4", "id": "99", "animated": False}),
    msg(
        7,
        "location",
        {
            "latitude": 37.4611978,
            "longitude": -122.2164385,
            "name": "Meta HQ",
            "address": "1 Hacker Way, Menlo Park, CA 94025",
        },
    ),
    msg(
        8,
        "contacts",
        [
            {
                "name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
                "phones": [{"phone": "+1 (415) 555-0829", "wa_id": "14155550829"}],
            },
            {"name": {"first_name": "Kim", "last_name": "Lee"}},
        ],
    ),
    msg(
        9,
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}},
        context={"from": "15550001111", "id": "wamid.OUTBOUND_WITH_BUTTONS"},
    ),
    msg(
        10,
        "interactive",
        {
            "type": "list_reply",
            "list_reply": {
                "id": "priority_express",
                "title": "Priority Mail Express",
                "description": "Next Day to 2 Days",
            },
        },
        context={"from": "15550001111", "id": "wamid.OUTBOUND_LIST"},
    ),
    msg(
        11,
        "button",
        {"payload": "unsubscribe_promo_42", "text": "Unsubscribe"},
        context={"from": "15550001111", "id": "wamid.OUTBOUND_TEMPLATE"},
    ),
    msg(12, "reaction", {"message_id": "wamid.TARGET", "emoji": "\U0001f44d"}),
    msg(13, "reaction", {"message_id": "wamid.TARGET"}),
    msg(
        14,
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
    msg(
        15,
        "unsupported",
        {"type": "poll_creation"},
        errors=[
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
    ),
    msg(
        16,
        "text",
        {"body": "Can I get more info about this?"},
        referral={"source_url": "https://fb.me/3cr4Wqqkv", "source_type": "ad", "ctwa_clid": "Aff"},
    ),
    msg(17, "text", {"body": "look at this"}, context={"forwarded": True}),
    msg(18, "text", {"body": "chain letter"}, context={"frequently_forwarded": True}),
    msg(
        19,
        "interactive",
        {
            "type": "nfm_reply",
            "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"flow_token":"x"}'},
        },
    ),
]

SYSTEM = msg(
    20,
    "system",
    {
        "body": "User Dana Levi changed from 15551234567 to 15557654321",
        "wa_id": "15557654321",
        "type": "user_changed_number",
    },
)
# 2026: a username user whose phone number Meta does not share.
BSUID_MSG = {
    "from_user_id": "US.13491208655302741918",
    "id": "wamid.B1",
    "timestamp": "1767225700",
    "type": "text",
    "text": {"body": "hello from a username \U0001f62e"},
}

STATUSES = [
    {
        "id": "wamid.OUT1",
        "status": "sent",
        "timestamp": "1767225700",
        "recipient_id": "15551234567",
        "biz_opaque_callback_data": "msg-42",
        "pricing": {
            "billable": False,
            "pricing_model": "PMP",
            "type": "free_customer_service",
            "category": "service",
        },
        "conversation": {"id": "8f84", "origin": {"type": "service"}},
    },
    {
        "id": "wamid.OUT1",
        "status": "delivered",
        "timestamp": "1767225701",
        "recipient_id": "15551234567",
    },
    {
        "id": "wamid.OUT1",
        "status": "read",
        "timestamp": "1767225702",
        "recipient_id": "15551234567",
    },
    {
        "id": "wamid.OUT2",
        "status": "failed",
        "timestamp": "1767225705",
        "recipient_id": "15551234567",
        "errors": [
            {
                "code": 131049,
                "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                "message": "This message was not delivered to maintain healthy ecosystem "
                "engagement.",
                "error_data": {"details": "In order to maintain a healthy ecosystem engagement."},
                "href": "/documentation/business-messaging/whatsapp/support/error-codes",
            }
        ],
    },
    {
        "id": "wamid.OUT3",
        "status": "played",
        "timestamp": "1767225706",
        "recipient_user_id": "US.13491208655302741918",
    },
]


def value(meta, **keys):
    return {"messaging_product": "whatsapp", "metadata": meta, **keys}


BATCH = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "100200300400500",
            "changes": [
                {"field": "messages", "value": value(META, contacts=[DANA], messages=MESSAGES)},
                {"field": "messages", "value": value(META, messages=[SYSTEM])},
                {
                    "value": value(
                        META,
                        contacts=[{"profile": {"name": "Dana Levi"}, "wa_id": "15551234567"}],
                        statuses=STATUSES[:3],
                    ),
                    "field": "messages",
                },
            ],
        },
        {
            "id": "100200300400600",
            "changes": [
                {"field": "messages", "value": value(META_2, statuses=STATUSES[3:])},
                {
                    "field": "messages",
                    "value": value(
                        META_2,
                        contacts=[
                            {
                                "profile": {"name": "Pablo", "username": "@pablo"},
                                "user_id": "US.13491208655302741918",
                            }
                        ],
                        messages=[BSUID_MSG],
                    ),
                },
                {
                    "field": "messages",
                    "value": value(
                        META_2,
                        errors=[
                            {
                                "code": 130429,
                                "title": "Rate limit hit",
                                "message": "Rate limit hit",
                                "error_data": {"details": "Too many messages"},
                            }
                        ],
                    ),
                },
            ],
        },
        {
            "id": "100200300400500",
            "time": 1767226000,
            "changes": [
                {
                    "field": "message_template_status_update",
                    "value": {
                        "event": "REJECTED",
                        "message_template_id": 1689556908129835,
                        "message_template_name": "abandoned_cart",
                        "message_template_language": "en-US",
                        "reason": "INVALID_FORMAT",
                        "message_template_category": "MARKETING",
                        "rejection_info": {"reason": "Adjacent parameters.", "recommendation": "x"},
                    },
                },
                {
                    "field": "user_preferences",
                    "value": value(
                        META,
                        contacts=[DANA],
                        user_preferences=[
                            {
                                "wa_id": "15551234567",
                                "detail": "User requested to stop marketing messages",
                                "category": "marketing_messages",
                                "value": "stop",
                                "timestamp": 1767226300,
                            }
                        ],
                    ),
                },
                {
                    "field": "phone_number_quality_update",
                    "value": {"display_phone_number": "15550001111", "event": "THROUGHPUT_UPGRADE"},
                },
            ],
        },
    ],
}


@pytest.fixture(scope="module")
def notification():
    return parse_notification(dumps_like_meta(BATCH))


def test_it_walks_every_entry_and_change(notification):
    assert [e.waba_id for e in notification.entries] == [
        "100200300400500",
        "100200300400600",
        "100200300400500",
    ]
    assert [len(e.changes) for e in notification.entries] == [3, 3, 3]
    assert notification.entries[2].time == datetime(2026, 1, 1, 0, 6, 40, tzinfo=UTC)
    assert notification.entries[0].time is None


def test_it_yields_every_message_and_status(notification):
    wamids = [m.wamid for _c, m in notification.messages()]
    assert wamids == [m["id"] for m in MESSAGES] + ["wamid.A20", "wamid.B1"]
    statuses = [(s.wamid, s.status) for _c, s in notification.statuses()]
    assert statuses == [(s["id"], s["status"]) for s in STATUSES]


def test_it_routes_by_phone_number_id(notification):
    routed = {(c.phone_number_id, m.wamid) for c, m in notification.messages()}
    assert ("600700800900200", "wamid.B1") in routed
    assert ("600700800900100", "wamid.A1") in routed
    first = notification.entries[0].changes[0]
    assert first.display_phone_number == "15550001111"


def test_it_parses_common_message_fields(notification):
    change = notification.entries[0].changes[0]
    text = change.messages[0]
    assert text.from_wa_id == "15551234567"
    assert text.timestamp == datetime.fromtimestamp(1767225601, tz=UTC)
    assert text.timestamp.tzinfo is not None
    assert text.type == "text"
    assert text.content == {"body": "Hi, is my order shipped?"}
    assert text.context is None and text.referral is None and text.errors == ()
    contact = change.contact_for(text)
    assert contact is not None and contact.name == "Dana Levi" and contact.wa_id == "15551234567"


def test_it_parses_media_references(notification):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    image = by_id["wamid.A2"].media
    assert image is not None
    assert (image.media_id, image.mime_type, image.sha256) == (
        "1003383421387256",
        "image/jpeg",
        MEDIA_SHA,
    )
    assert image.caption == "Damaged box" and image.url.startswith("https://lookaside")
    assert by_id["wamid.A4"].media.voice is True
    assert by_id["wamid.A5"].media.filename == "receipt.pdf"
    assert by_id["wamid.A6"].media.animated is False
    assert by_id["wamid.A3"].media.url is None
    assert by_id["wamid.A1"].media is None


def test_it_parses_context_referral_and_forwarding(notification):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    assert by_id["wamid.A9"].quoted_wamid == "wamid.OUTBOUND_WITH_BUTTONS"
    assert by_id["wamid.A9"].context.quoted_from == "15550001111"
    assert by_id["wamid.A16"].referral["ctwa_clid"] == "Aff"
    assert by_id["wamid.A17"].context.forwarded is True
    assert by_id["wamid.A17"].context.frequently_forwarded is False
    assert by_id["wamid.A18"].context.frequently_forwarded is True


def test_it_keeps_reactions_and_their_removal(notification):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    assert by_id["wamid.A12"].content == {"message_id": "wamid.TARGET", "emoji": "\U0001f44d"}
    assert not by_id["wamid.A12"].is_reaction_removal
    assert by_id["wamid.A13"].is_reaction_removal


def test_it_parses_unsupported_errors_and_system_messages(notification):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    error = by_id["wamid.A15"].errors[0]
    assert (error.code, error.title) == (131051, "Message type unknown")
    assert error.details == "Message type is currently not supported."
    system_change = notification.entries[0].changes[1]
    assert system_change.contacts == ()
    assert system_change.messages[0].content["wa_id"] == "15557654321"


def test_it_wraps_shared_contacts_in_a_mapping(notification):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    cards = by_id["wamid.A8"].content["contacts"]
    assert [c["name"].get("formatted_name") for c in cards] == ["Barbara J. Johnson", None]


def test_it_parses_business_scoped_user_ids(notification):
    change = notification.entries[1].changes[1]
    message = change.messages[0]
    assert message.from_wa_id is None
    assert message.user_id == "US.13491208655302741918"
    contact = change.contact_for(message)
    assert contact.user_id == message.user_id and contact.wa_id is None
    assert contact.username == "@pablo"
    assert message.content["body"] == "hello from a username \U0001f62e"


def test_it_parses_statuses_with_pricing_and_errors(notification):
    statuses = [s for _c, s in notification.statuses()]
    sent, delivered, _read, failed, played = statuses
    assert sent.pricing == STATUSES[0]["pricing"]
    assert sent.conversation["id"] == "8f84"
    assert sent.biz_opaque_callback_data == "msg-42"
    assert sent.recipient_id == "15551234567"
    assert delivered.pricing is None and delivered.errors == ()
    assert failed.errors[0].code == 131049
    assert failed.errors[0].href.startswith("/documentation")
    assert played.recipient_id is None
    assert played.recipient_user_id == "US.13491208655302741918"
    assert notification.entries[0].changes[2].contacts[0].wa_id == "15551234567"


def test_it_parses_value_level_errors(notification):
    change = notification.entries[1].changes[2]
    assert change.messages == () and change.statuses == ()
    assert change.errors[0].code == 130429
    assert change.errors[0].details == "Too many messages"


def test_it_parses_template_status_updates(notification):
    change = notification.entries[2].changes[0]
    update = change.template_status
    assert change.phone_number_id is None
    assert update.event == "REJECTED"
    assert update.template_id == "1689556908129835"
    assert update.language == "en_US"
    assert update.reason == "INVALID_FORMAT"
    assert update.category == "MARKETING"
    assert update.rejection_info["reason"] == "Adjacent parameters."


def test_it_parses_user_preferences(notification):
    change = notification.entries[2].changes[1]
    assert change.phone_number_id == "600700800900100"
    (pref,) = change.user_preferences
    assert (pref.wa_id, pref.value, pref.category) == ("15551234567", "stop", "marketing_messages")
    assert pref.timestamp == datetime.fromtimestamp(1767226300, tz=UTC)


def test_it_keeps_unknown_fields_raw(notification):
    change = notification.entries[2].changes[2]
    assert change.field == "phone_number_quality_update"
    assert change.value_raw["event"] == "THROUGHPUT_UPGRADE"
    assert change.messages == () and change.template_status is None


@pytest.mark.parametrize(
    ("wamid", "expected"),
    [
        ("wamid.A1", "Hi, is my order shipped?"),
        ("wamid.A2", "Photo: Damaged box"),
        ("wamid.A3", "Video: unboxing"),
        ("wamid.A4", "Voice message"),
        ("wamid.A5", "Document: receipt.pdf — my receipt"),
        ("wamid.A6", "Sticker"),
        (
            "wamid.A7",
            "Location: Meta HQ, 1 Hacker Way, Menlo Park, CA 94025 (37.4611978, -122.2164385)",
        ),
        ("wamid.A8", "Contacts: Barbara J. Johnson, Kim Lee"),
        ("wamid.A9", "Button: Cancel [cancel-button]"),
        ("wamid.A10", "List choice: Priority Mail Express [priority_express]"),
        ("wamid.A11", "Button: Unsubscribe [unsubscribe_promo_42]"),
        ("wamid.A12", "Reacted \U0001f44d to a message"),
        ("wamid.A13", "Removed a reaction"),
        ("wamid.A14", "Order: 2 items (3 units) — Love these!"),
        (
            "wamid.A15",
            "Unsupported message (poll_creation): Message type is currently not supported.",
        ),
        ("wamid.A19", "Form reply: Sent"),
        ("wamid.A20", "User Dana Levi changed from 15551234567 to 15557654321"),
    ],
)
def test_it_previews_every_message_type(notification, wamid, expected):
    by_id = {m.wamid: m for _c, m in notification.messages()}
    assert message_preview(by_id[wamid]) == expected


def test_it_previews_unknown_types_and_truncates():
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": value(
                            META,
                            messages=[
                                msg(1, "revoke", {"original_message_id": "wamid.X"}),
                                msg(2, "text", {"body": "line one\n<b>two</b> " + "x" * 300}),
                            ],
                        ),
                    }
                ],
            }
        ],
    }
    revoke, long_text = parse_notification(json.dumps(body)).entries[0].changes[0].messages
    assert message_preview(revoke) == "Revoke message"
    preview = message_preview(long_text, limit=40)
    assert len(preview) == 40 and preview.endswith("…")
    assert preview.startswith("line one <b>two</b>")  # plain text, escaping is the caller's job


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "body: expected an object"),
        (b'{"object":"page","entry":[]}', "object: expected 'whatsapp_business_account'"),
        (b'{"object":"whatsapp_business_account"}', "entry: expected a list"),
        (b'{"object":"whatsapp_business_account","entry":[{"id":"1"}]}', "entry[0].changes"),
        (
            b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
            b'"value":{"messages":[]}}]}]}',
            "entry[0].changes[0].value.metadata",
        ),
        (
            b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
            b'"value":{"metadata":{"phone_number_id":"6"},"messages":[{"id":"w","type":"text",'
            b'"timestamp":"yesterday"}]}}]}]}',
            "messages[0].timestamp",
        ),
        (
            b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
            b'"value":{"metadata":{"phone_number_id":"6"},"statuses":[{"id":"w","timestamp":"1"}]}}]}]}',
            "statuses[0].status",
        ),
        (
            b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
            b'"value":{"metadata":{"phone_number_id":"6"},"messages":"nope"}}]}]}',
            "value.messages: expected a list",
        ),
        (
            b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
            b'"value":{"metadata":{"phone_number_id":"6"},"errors":[{"code":"x"}]}}]}]}',
            "errors[0].code",
        ),
    ],
)
def test_it_rejects_bad_bodies_with_a_path(body, fragment):
    with pytest.raises(PayloadError) as excinfo:
        parse_notification(body)
    assert fragment in str(excinfo.value)


def test_it_chains_an_out_of_range_timestamp_to_its_cause():
    entry = {"id": "1", "time": 10**20, "changes": []}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [entry]})
    with pytest.raises(PayloadError, match=r"^entry\[0\]\.time: timestamp out of range") as info:
        parse_notification(body)
    assert isinstance(info.value.__cause__, OverflowError | OSError | ValueError)


def test_it_accepts_an_empty_batch():
    assert parse_notification(b'{"object":"whatsapp_business_account","entry":[]}').entries == ()


def test_its_objects_are_frozen(notification):
    _change, message = next(notification.messages())
    with pytest.raises(AttributeError):
        message.wamid = "other"


def test_it_tells_a_completed_category_change_from_the_notice_of_one():
    from apps.whatsapp.payloads import PayloadError, parse_template_category_update

    done = parse_template_category_update(
        {
            "message_template_id": 12345678,
            "message_template_name": "my_message_template",
            "message_template_language": "pt-BR",
            "previous_category": "utility",
            "new_category": "marketing",
        }
    )
    assert (done.completed, done.new_category, done.previous_category) == (
        True,
        "MARKETING",
        "UTILITY",
    )
    assert (done.template_id, done.language) == ("12345678", "pt_BR")
    notice = parse_template_category_update(
        {
            "message_template_name": "t",
            "correct_category": "MARKETING",
            "new_category": "UTILITY",
            "category_update_timestamp": 1767312000,
        }
    )
    assert not notice.completed and notice.takes_effect_at.year == 2026
    legacy = parse_template_category_update({"message_template_name": "t", "new_category": "X"})
    assert legacy.completed
    with pytest.raises(PayloadError, match="new_category"):
        parse_template_category_update({"message_template_name": "t"})
    with pytest.raises(PayloadError):
        parse_template_category_update([])
