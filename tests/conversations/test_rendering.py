"""Every inbound message type renders, with Meta's content as Meta sends it (shapes from
shared/reference/whatsapp-cloud-api.md §5), and every string from Meta is escaped."""

from __future__ import annotations

import re

import pytest

from apps.conversations.inbox.templatetags.inbox_tags import osm_link

from .factories import make_conversation, make_message

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
XSS_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"

# (type, content as Meta sends it, extra Message fields, strings that must show)
CASES = [
    (
        "text",
        {"body": "Hi, is my order shipped?\nThanks!"},
        {},
        ["Hi, is my order shipped?<br>Thanks!"],
    ),
    (
        "image",
        {
            "caption": "Damaged box",
            "mime_type": "image/jpeg",
            "sha256": "SfIn=",
            "id": "1003383421387256",
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1",
        },
        {},
        ["Photo", "media pending", "image/jpeg", "Damaged box"],
    ),
    (
        "video",
        {"caption": "unboxing", "mime_type": "video/mp4", "sha256": "Jh+2=", "id": "765756756"},
        {},
        ["Video", "media pending", "video/mp4", "unboxing"],
    ),
    (
        "audio",
        {
            "mime_type": "audio/ogg; codecs=opus",
            "sha256": "m04p=",
            "id": "1234567890",
            "voice": True,
        },
        {},
        ["Voice note", "media pending", "audio/ogg; codecs=opus"],
    ),
    (
        "audio",
        {"mime_type": "audio/mpeg", "sha256": "m04p=", "id": "1234567891", "voice": False},
        {},
        [">Audio<", "audio/mpeg"],
    ),
    (
        "document",
        {
            "caption": "my receipt",
            "filename": "receipt.pdf",
            "mime_type": "application/pdf",
            "sha256": "V5OP=",
            "id": "622684793477189",
        },
        {},
        ["Document", "receipt.pdf", "application/pdf", "my receipt", "media pending"],
    ),
    (
        "sticker",
        {"mime_type": "image/webp", "sha256": "OmT4=", "id": "1234567892", "animated": False},
        {},
        ["Sticker", "image/webp", "media pending"],
    ),
    (
        "location",
        {
            "latitude": 37.4611978,
            "longitude": -122.2164385,
            "name": "Meta HQ",
            "address": "1 Hacker Way, Menlo Park, CA 94025",
            "url": "https://maps.google.com/?cid=2000000000000000000",
        },
        {},
        [
            "Meta HQ",
            "1 Hacker Way, Menlo Park, CA 94025",
            "37.4611978, -122.2164385",
            'href="https://www.openstreetmap.org/?mlat=37.4611978&amp;mlon=-122.2164385#map=16/'
            '37.4611978/-122.2164385" target="_blank" rel="noopener noreferrer"',
            "https://maps.google.com/?cid=2000000000000000000",
        ],
    ),
    (
        "contacts",
        {
            "contacts": [
                {
                    "name": {
                        "formatted_name": "Barbara J. Johnson",
                        "first_name": "Barbara",
                        "last_name": "Johnson",
                    },
                    "org": {"company": "Social Tsunami"},
                    "phones": [
                        {"phone": "+1 (415) 555-0829", "wa_id": "14155550829", "type": "MOBILE"}
                    ],
                    "emails": [{"email": "bj@example.com", "type": "WORK"}],
                }
            ]
        },
        {},
        [
            "Barbara J. Johnson",
            "Social Tsunami",
            "+1 (415) 555-0829",
            "bj@example.com",
            "on WhatsApp",
        ],
    ),
    (
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}},
        {"context_wamid": "wamid.OUTBOUND_WITH_BUTTONS"},
        ["Tapped button", "Cancel", "cancel-button", "Replying to an earlier message"],
    ),
    (
        "interactive",
        {
            "type": "list_reply",
            "list_reply": {
                "id": "priority_express",
                "title": "Priority Mail Express",
                "description": "Next Day to 2 Days",
            },
        },
        {},
        ["Chose from list", "Priority Mail Express", "priority_express", "Next Day to 2 Days"],
    ),
    (
        "interactive",
        {
            "type": "nfm_reply",
            "nfm_reply": {
                "name": "flow",
                "body": "Sent",
                "response_json": '{"flow_token":"AQAA","rating":"4"}',
            },
        },
        {},
        ["Submitted form", "&quot;rating&quot;:&quot;4&quot;"],
    ),
    (
        "button",
        {"payload": "unsubscribe_promo_42", "text": "Unsubscribe"},
        {"context_wamid": "wamid.OUTBOUND_TEMPLATE"},
        ["Tapped a template button", "Unsubscribe", "unsubscribe_promo_42"],
    ),
    (
        "reaction",
        {"message_id": "wamid.TARGET", "emoji": "\U0001f44d"},
        {},
        ["\U0001f44d", "reacted to", "“Your parcel left the warehouse”"],
    ),
    (
        "reaction",
        {"message_id": "wamid.TARGET"},
        {},
        ["Removed a reaction", "“Your parcel left the warehouse”"],
    ),
    (
        "reaction",
        {"message_id": "wamid.UNKNOWN", "emoji": ""},
        {},
        ["Removed a reaction", "an earlier message"],
    ),
    (
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
        {},
        [
            "194836987003835",
            "di9ozbzfi4",
            "nqryix03ez",
            "60 USD",
            "7.99 USD",
            "<strong>67.99 USD</strong>",
            "Love these!",
        ],
    ),
    (
        "system",
        {
            "body": "User Dana Levi changed from 15551234567 to 15557654321",
            "wa_id": "15557654321",
            "type": "user_changed_number",
        },
        {},
        ["User Dana Levi changed from 15551234567 to 15557654321"],
    ),
    (
        "unsupported",
        {"type": "poll_creation"},
        {
            "error_code": 131051,
            "error_title": "Message type unknown",
            "error_details": "Message type is currently not supported.",
        },
        [
            "Unsupported message",
            "poll_creation",
            "Message type unknown",
            "131051",
            "Message type is currently not supported.",
        ],
    ),
    ("edit", {"original_message_id": "wamid.X", "message": {"type": "text"}}, {}, ["Edit message"]),
]


@pytest.mark.parametrize(
    ("msg_type", "content", "extra", "expected"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_it_renders_every_inbound_type(acme, alice_client, msg_type, content, extra, expected):
    conversation = make_conversation(acme)
    make_message(
        conversation,
        direction="out",
        wamid="wamid.TARGET",
        content={"body": "Your parcel left the warehouse"},
    )
    message = make_message(conversation, type=msg_type, content=content, **extra)
    response = alice_client.get(f"/inbox/c/{conversation.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    start = html.index(f'id="m-{message.pk}"')
    item = html[start : html.index("</li>", start)]
    assert f'data-type="{msg_type}"' in item
    for text in expected:
        assert text in item, (text, item)


def test_it_never_links_to_a_url_from_meta(acme, alice_client):
    conversation = make_conversation(acme)
    make_message(
        conversation,
        type="location",
        content={"latitude": 1.5, "longitude": 2.5, "name": "Shop", "url": "javascript:alert(1)"},
    )
    make_message(
        conversation,
        type="text",
        content={"body": "from an ad"},
        referral={
            "source_url": "https://fb.me/3cr4Wqqkv",
            "source_type": "ad",
            "headline": "Chat with us",
            "body": "Summer succulents are here!",
            "source_id": "120226305854810726",
        },
    )
    html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert not [h for h in hrefs if "javascript" in h or "fb.me" in h or "maps.google" in h]
    assert "Not https:</span> javascript:alert(1)" in html
    assert "https://fb.me/3cr4Wqqkv" in html  # shown, as text
    assert (
        "Chat with us" in html
        and "Summer succulents are here!" in html
        and "Came from an ad" in html
    )


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (
            37.4611978,
            -122.2164385,
            "https://www.openstreetmap.org/?mlat=37.4611978&mlon=-122.2164385"
            "#map=16/37.4611978/-122.2164385",
        ),
        (
            "1.5",
            "2",
            "https://www.openstreetmap.org/?mlat=1.5000000&mlon=2.0000000"
            "#map=16/1.5000000/2.0000000",
        ),
        ('1.5"><script>', 2, ""),
        (91, 0, ""),
        (float("nan"), 0, ""),
        (True, 0, ""),
        (None, 0, ""),
    ],
)
def test_it_builds_the_map_link_from_numbers_only(lat, lon, expected):
    assert osm_link(lat, lon) == expected


def test_it_shows_forwarded_flags(acme, alice_client):
    conversation = make_conversation(acme)
    make_message(conversation, forwarded=True)
    make_message(conversation, frequently_forwarded=True)
    html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert "↪ Forwarded<" in html and "Forwarded many times" in html


def test_it_shows_a_referred_product_and_message_errors(acme, alice_client):
    conversation = make_conversation(acme)
    make_message(
        conversation,
        content={
            "body": "Is this in stock?",
            "_referred_product": {"catalog_id": "CAT1", "product_retailer_id": "SKU-9"},
        },
    )
    make_message(
        conversation,
        direction="out",
        status="failed",
        error_code=131047,
        error_title="Re-engagement message",
        error_details="More than 24 hours",
    )
    html = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert "Asking about product <code>SKU-9</code> in catalog <code>CAT1</code>" in html
    assert "Re-engagement message" in html and "131047" in html
    assert "More than 24 hours" in html


def test_it_survives_content_of_the_wrong_shape(acme, alice_client):
    conversation = make_conversation(acme)
    for msg_type, content in [
        ("text", {"body": 42}),
        ("location", {"latitude": "x"}),
        ("contacts", {"contacts": "nope"}),
        ("order", {"product_items": [{"quantity": "two"}, 5]}),
        ("interactive", {"type": ["x"]}),
        ("reaction", {}),
        ("image", {"caption": {"x": 1}}),
        ("whatever", []),
    ]:
        make_message(conversation, type=msg_type, content=content)
    assert alice_client.get(f"/inbox/c/{conversation.pk}/").status_code == 200


# ---- escaping: every string from Meta is untrusted ----------------------------------------


ESCAPE_CASES = [
    ("text", {"body": XSS}, {}),
    ("image", {"caption": XSS, "mime_type": "image/jpeg", "id": "1"}, {}),
    ("document", {"filename": XSS, "mime_type": XSS, "id": "2"}, {}),
    (
        "location",
        {
            "latitude": 1,
            "longitude": 2,
            "name": XSS,
            "address": XSS,
            "url": "https://x.test/" + XSS,
        },
        {},
    ),
    (
        "contacts",
        {
            "contacts": [
                {
                    "name": {"formatted_name": XSS},
                    "phones": [{"phone": XSS}],
                    "emails": [{"email": XSS}],
                    "org": {"company": XSS},
                }
            ]
        },
        {},
    ),
    (
        "interactive",
        {"type": "list_reply", "list_reply": {"id": XSS, "title": XSS, "description": XSS}},
        {},
    ),
    ("button", {"text": XSS, "payload": XSS + "!"}, {}),
    ("reaction", {"message_id": "wamid.T", "emoji": XSS}, {}),
    (
        "order",
        {
            "text": XSS,
            "product_items": [
                {"product_retailer_id": XSS, "quantity": 1, "item_price": 1, "currency": XSS}
            ],
        },
        {},
    ),
    ("system", {"body": XSS}, {}),
    ("unsupported", {"type": XSS}, {"error_title": XSS, "error_details": XSS}),
    (
        "text",
        {"body": "ad"},
        {
            "referral": {
                "headline": XSS,
                "body": XSS,
                "source_type": XSS,
                "source_url": "javascript:" + XSS,
            }
        },
    ),
    ("text", {"body": "quote"}, {"context_wamid": "wamid.QUOTED"}),
    ("<img src=x onerror=alert(1)>", {"x": 1}, {}),  # a type fits in 30 characters
]


@pytest.mark.parametrize(
    ("msg_type", "content", "extra"),
    ESCAPE_CASES,
    ids=[f"{c[0][:12]}-{i}" for i, c in enumerate(ESCAPE_CASES)],
)
def test_it_escapes_every_string_from_meta(acme, alice_client, msg_type, content, extra):
    conversation = make_conversation(acme, name=XSS, preview=XSS)
    make_message(conversation, wamid="wamid.QUOTED", content={"body": XSS})
    make_message(conversation, type=msg_type, content=content, text=XSS, **extra)
    for path in (
        f"/inbox/c/{conversation.pk}/",
        f"/inbox/c/{conversation.pk}/messages/",
        "/inbox/",
        "/inbox/list/",
        f"/inbox/contacts/{conversation.contact.pk}/",
    ):
        html = alice_client.get(path).content.decode()
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        assert "onerror=alert(1)>" not in html, path
    thread = alice_client.get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert XSS_ESCAPED in thread or "&lt;script&gt;" in thread


def test_it_escapes_the_profile_name_in_the_list_and_the_header(acme, alice_client):
    conversation = make_conversation(acme, name=XSS, preview=XSS)
    make_message(conversation)
    for path in ("/inbox/", f"/inbox/c/{conversation.pk}/"):
        html = alice_client.get(path).content.decode()
        assert XSS_ESCAPED in html
        assert "<script>alert" not in html
