import base64
import hashlib
import json

import pytest
import requests

from apps.whatsapp.graph import GraphClient, media_sha256_matches
from apps.whatsapp.payloads import message_preview, parse_notification
from apps.whatsapp.signature import SIGNATURE_HEADER, dumps_like_meta, verify_signature
from apps.whatsapp.simulator import Fault, parse_number_spec
from apps.whatsapp.testing import (
    DEMO_NUMBER,
    OTHER_NUMBER,
    running_simulator,
    running_webhook_receiver,
    wait_until,
)

PNID = DEMO_NUMBER.phone_number_id
TEXT = {"to": "+15551234567", "type": "text", "text": {"body": "Hi"}}


def statuses_of(posts):
    out = []
    for post in posts:
        for _change, status in parse_notification(post.body).statuses():
            out.append(status)
    return out


def control(sim, method, route, body=None):
    response = requests.request(method, f"{sim.url}/_sim/{route}", json=body, timeout=10)
    return response.status_code, response.json()


# ------------------------------------------------------------------ status webhooks


def test_it_posts_signed_status_webhooks_after_a_send(client, hooks):
    result = client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "msg-7"})
    posts = hooks.wait_for(lambda p: len(p) >= 3)
    assert all(p.signature_valid and p.answered == 200 for p in posts)
    assert all(
        verify_signature(p.body, p.headers[SIGNATURE_HEADER], DEMO_NUMBER.app_secret) for p in posts
    )
    statuses = statuses_of(posts)
    assert [(s.wamid, s.status) for s in statuses] == [
        (result.wamid, "sent"),
        (result.wamid, "delivered"),
        (result.wamid, "read"),
    ]
    assert all(s.biz_opaque_callback_data == "msg-7" for s in statuses)
    assert all(s.recipient_id == "15551234567" for s in statuses)
    assert statuses[0].pricing == {
        "billable": False,
        "pricing_model": "PMP",
        "category": "service",
        "type": "free_customer_service",
    }
    # Pricing rides on "sent" and on one of delivered/read, never both.
    assert statuses[1].pricing is not None and statuses[2].pricing is None
    # Serialised like Meta: the exact bytes re-encode identically.
    assert posts[0].body == dumps_like_meta(json.loads(posts[0].body))


def test_it_prices_templates_by_category(client, sim, hooks):
    sim.set_templates(DEMO_NUMBER.waba_id, [{"name": "promo", "category": "MARKETING"}])
    template = {"name": "promo", "language": {"code": "en_US"}}
    client.send_message(PNID, {"to": "+15551234567", "type": "template", "template": template})
    sent = statuses_of(hooks.wait_for(lambda p: len(p) >= 3))[0]
    assert sent.pricing == {
        "billable": True,
        "pricing_model": "PMP",
        "category": "marketing",
        "type": "regular",
    }


def test_it_sends_only_sent_for_reactions(client, sim, hooks):
    client.send_message(
        PNID,
        {
            "to": "+15551234567",
            "type": "reaction",
            "reaction": {"message_id": "wamid.X", "emoji": "👍"},
        },
    )
    assert sim.wait_idle()
    assert [s.status for s in statuses_of(hooks.posts)] == ["sent"]


def test_it_signs_each_number_with_its_own_secret(sim, hooks):
    other = GraphClient(sim.graph_url(), OTHER_NUMBER.token)
    other.send_message(OTHER_NUMBER.phone_number_id, TEXT)
    posts = hooks.wait_for(lambda p: len(p) >= 3)
    assert all(verify_signature(p.body, p.signature, OTHER_NUMBER.app_secret) for p in posts)
    assert not any(verify_signature(p.body, p.signature, DEMO_NUMBER.app_secret) for p in posts)
    notification = parse_notification(posts[0].body)
    assert notification.entries[0].waba_id == OTHER_NUMBER.waba_id
    assert notification.entries[0].changes[0].phone_number_id == OTHER_NUMBER.phone_number_id


def test_it_sends_a_failed_status_for_an_async_fault(client, sim, hooks):
    sim.add_fault(Fault(PNID, code=131047, async_=True))
    result = client.send_message(PNID, TEXT)  # accepted now, fails later, like Meta
    posts = hooks.wait_for(lambda p: len(p) >= 1)
    assert sim.wait_idle()
    (failed,) = statuses_of(hooks.posts)
    assert (failed.wamid, failed.status) == (result.wamid, "failed")
    assert failed.errors[0].code == 131047
    assert failed.errors[0].title == "Re-engagement message"
    assert "contacts" not in json.loads(posts[0].body)["entry"][0]["changes"][0]["value"]


def test_it_can_batch_duplicate_and_reorder(sim, hooks):
    sim.configure(batch_rate=1.0, duplicate_rate=1.0, reorder_rate=0.0, status_delay=0.0)
    client = GraphClient(sim.graph_url(), DEMO_NUMBER.token)
    # Hold delivery while three sends queue up, so the batch sees them all.
    with sim.webhooks_held():
        wamids = [client.send_message(PNID, TEXT).wamid for _ in range(3)]
    assert sim.wait_idle()
    posts = hooks.posts
    assert all(p.signature_valid for p in posts)
    pairs = [(s.wamid, s.status) for s in statuses_of(posts)]
    assert {w for w, _s in pairs} == set(wamids)
    assert len(pairs) > 9  # duplicates
    assert any(len(statuses_of([p])) > 1 for p in posts)  # batched
    assert len({p.body for p in posts}) < len(posts)  # identical bytes re-sent


def test_it_can_reorder_statuses(sim, hooks):
    sim.configure(reorder_rate=1.0)
    client = GraphClient(sim.graph_url(), DEMO_NUMBER.token)
    with sim.webhooks_held():
        client.send_message(PNID, TEXT)
    assert sim.wait_idle()
    order = [s.status for s in statuses_of(hooks.posts)]
    assert sorted(order) == ["delivered", "read", "sent"]
    assert order != ["sent", "delivered", "read"]


def test_it_is_reproducible_with_a_seed(hooks):
    runs = []
    for _ in range(2):
        hooks.clear()
        with running_simulator(hooks.url, seed=42, chaos=True, status_delay=0.0) as sim:
            client = GraphClient(sim.graph_url(), DEMO_NUMBER.token)
            with sim.webhooks_held():
                for _ in range(5):
                    client.send_message(PNID, TEXT)
            assert sim.wait_idle()
            runs.append([len(statuses_of([p])) for p in hooks.posts])
    assert runs[0] == runs[1]


def test_it_retries_webhooks_that_are_not_answered_200():
    answers = iter([500, 503])
    with (
        running_webhook_receiver(status_for=lambda body: next(answers, 200)) as hooks,
        running_simulator(hooks.url, retry_delay=0.01, statuses=["sent"]) as sim,
    ):
        GraphClient(sim.graph_url(), DEMO_NUMBER.token).send_message(PNID, TEXT)
        posts = hooks.wait_for(lambda p: len(p) >= 3)
        assert [p.answered for p in posts] == [500, 503, 200]
        assert len({p.body for p in posts}) == 1
        assert sim.wait_idle()
        assert [w["status"] for w in sim.webhooks()] == [500, 503, 200]
        assert [w["attempt"] for w in sim.webhooks()] == [1, 2, 3]


def test_it_escapes_slashes_when_asked(sim, hooks):
    sim.configure(escape_slashes=True)
    result = sim.inbound({"phone_number_id": PNID, "type": "image"})
    assert "\\/" in result["body"]
    assert hooks.posts[0].signature_valid and result["status"] == 200


# ------------------------------------------------------------------ inbound messages


INBOUND_TYPES = [
    ("text", {"text": "Olá, é urgente 😮"}, "Olá, é urgente 😮"),
    ("image", {"caption": "Damaged box"}, "Photo: Damaged box"),
    ("video", {"caption": "unboxing"}, "Video: unboxing"),
    ("audio", {}, "Audio"),
    ("voice", {}, "Voice message"),
    ("document", {"filename": "receipt.pdf", "caption": "mine"}, "Document: receipt.pdf — mine"),
    ("sticker", {"animated": True}, "Sticker"),
    (
        "location",
        {},
        "Location: Meta HQ, 1 Hacker Way, Menlo Park, CA 94025 (37.4611978, -122.2164385)",
    ),
    ("contacts", {}, "Contact: Barbara J. Johnson"),
    ("interactive", {"reply_id": "yes", "title": "Yes"}, "Button: Yes [yes]"),
    (
        "interactive",
        {
            "reply_type": "list_reply",
            "reply_id": "express",
            "title": "Express",
            "description": "1 day",
        },
        "List choice: Express [express]",
    ),
    ("button", {"text": "Stop promotions", "payload": "STOP"}, "Button: Stop promotions [STOP]"),
    ("reaction", {"reply_to": "wamid.TARGET", "emoji": "❤️"}, "Reacted ❤️ to a message"),
    ("reaction", {"reply_to": "wamid.TARGET", "emoji": None}, "Removed a reaction"),
    ("order", {}, "Order: 2 items (3 units) — Love these!"),
    ("system", {"name": "Dana"}, "User Dana changed from 15551234567 to 15557654321"),
    (
        "unsupported",
        {},
        "Unsupported message (poll_creation): Message type is currently not supported.",
    ),
]


@pytest.mark.parametrize(("msg_type", "extra", "preview"), INBOUND_TYPES)
def test_it_delivers_every_inbound_type_through_the_control_api(
    sim, hooks, msg_type, extra, preview
):
    status, result = control(
        sim, "POST", "inbound", {"phone_number_id": PNID, "type": msg_type, **extra}
    )
    assert status == 200
    assert result["status"] == 200 and result["delivered"] is True
    (post,) = hooks.posts
    assert post.body == result["body"].encode()
    assert post.signature == result["signature"] and post.signature_valid
    notification = parse_notification(post.body)
    ((change, message),) = list(notification.messages())
    assert message.wamid == result["wamid"]
    assert message.type == ("audio" if msg_type == "voice" else msg_type)
    assert change.phone_number_id == PNID
    assert message_preview(message) == preview
    if msg_type == "system":
        assert change.contacts == ()
    else:
        assert change.contact_for(message).wa_id == "15551234567"


@pytest.mark.parametrize("msg_type", ["image", "video", "audio", "document", "sticker"])
def test_it_serves_inbound_media_with_a_matching_sha256(sim, client, msg_type):
    data = f"bytes of a {msg_type} \x00".encode()
    mime = {
        "image": "image/jpeg",
        "video": "video/mp4",
        "audio": "audio/ogg",
        "document": "application/pdf",
        "sticker": "image/webp",
    }[msg_type]
    result = sim.inbound(
        {
            "phone_number_id": PNID,
            "type": msg_type,
            "media": {"base64": base64.b64encode(data).decode(), "mime_type": mime},
        }
    )
    message = next(parse_notification(result["body"]).messages())[1]
    media = message.media
    assert media.mime_type == mime
    # Webhooks carry base64 SHA-256; the Graph lookup answers hex. Both describe the same bytes.
    assert media.sha256 == base64.b64encode(hashlib.sha256(data).digest()).decode()
    info = client.get_media(media.media_id)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    downloaded = client.download_media(info.url)
    assert downloaded == data
    assert media_sha256_matches(downloaded, media.sha256)
    assert client.download_media(media.url) == data  # the webhook's own url works too


def test_it_adds_context_referral_and_forward_flags(sim):
    result = sim.inbound(
        {
            "phone_number_id": PNID,
            "type": "text",
            "reply_to": "wamid.OUT1",
            "forwarded": True,
            "referral": True,
        }
    )
    message = next(parse_notification(result["body"]).messages())[1]
    assert message.quoted_wamid == "wamid.OUT1"
    assert message.context.quoted_from == DEMO_NUMBER.display_phone_number
    assert message.context.forwarded is True
    assert message.referral["source_type"] == "ad"


def test_it_sends_username_customers_without_a_phone(sim):
    result = sim.inbound(
        {"phone_number_id": PNID, "user_id": "US.1349", "hide_phone": True, "username": "@dana"}
    )
    change, message = next(parse_notification(result["body"]).messages())
    assert message.from_wa_id is None and message.user_id == "US.1349"
    assert change.contact_for(message).username == "@dana"


def test_it_can_build_without_delivering_or_with_a_forged_signature(sim, hooks):
    built = sim.inbound({"phone_number_id": PNID, "deliver": False})
    assert built["status"] is None and built["delivered"] is False
    assert verify_signature(built["body"].encode(), built["signature"], DEMO_NUMBER.app_secret)
    forged = sim.inbound({"phone_number_id": PNID, "signature": "sha256=" + "0" * 64})
    assert forged["status"] == 401  # the receiver refused it
    unsigned = sim.inbound({"phone_number_id": PNID, "sign": False})
    assert unsigned["status"] == 401
    assert SIGNATURE_HEADER not in hooks.posts[-1].headers
    assert sim.wait_idle()
    assert len(hooks.posts) == 2  # nothing retried


def test_it_delivers_user_preferences_and_template_updates(sim, hooks):
    status, _ = control(
        sim, "POST", "templates", {"waba_id": DEMO_NUMBER.waba_id, "templates": [{"name": "promo"}]}
    )
    assert status == 200
    status, result = control(
        sim,
        "POST",
        "user_preferences",
        {"phone_number_id": PNID, "wa_id": "15551234567", "value": "stop"},
    )
    assert status == 200 and result["status"] == 200
    status, result = control(
        sim,
        "POST",
        "template_status",
        {"waba_id": DEMO_NUMBER.waba_id, "name": "promo", "event": "PAUSED"},
    )
    assert status == 200 and result["status"] == 200
    prefs, template = (parse_notification(p.body) for p in hooks.posts)
    (pref,) = prefs.entries[0].changes[0].user_preferences
    assert (pref.wa_id, pref.value) == ("15551234567", "stop")
    update = template.entries[0].changes[0].template_status
    assert (update.name, update.event) == ("promo", "PAUSED")
    assert sim.templates(DEMO_NUMBER.waba_id)[0]["status"] == "PAUSED"


# ------------------------------------------------------------------ control API


def test_it_registers_numbers_through_the_control_api(sim, hooks):
    number = {
        "phone_number_id": "777",
        "waba_id": "888",
        "token": "tok-777",
        "app_secret": "secret-777",
        "display_phone_number": "15550007777",
    }
    status, body = control(sim, "POST", "numbers", number)
    assert status == 200 and "token" not in body and "app_secret" not in body
    status, listing = control(sim, "GET", "numbers")
    assert "777" in [n["phone_number_id"] for n in listing["data"]]
    result = GraphClient(sim.graph_url("v23.0"), "tok-777").send_message("777", TEXT)
    assert result.wamid
    posts = hooks.wait_for(lambda p: len(p) >= 3)
    assert all(verify_signature(p.body, p.signature, "secret-777") for p in posts)


def test_it_logs_and_clears_graph_requests(client, sim):
    client.send_message(PNID, TEXT)
    _status, body = control(sim, "GET", "requests")
    (entry,) = body["data"]
    assert entry["method"] == "POST" and entry["phone_number_id"] == PNID
    assert entry["status"] == 200 and entry["response"]["messages"][0]["id"].startswith("wamid.")
    assert DEMO_NUMBER.token not in json.dumps(entry)
    control(sim, "DELETE", "requests")
    assert control(sim, "GET", "requests")[1]["data"] == []


def test_it_injects_faults_through_the_control_api(client, sim):
    status, fault = control(
        sim, "POST", "faults", {"phone_number_id": PNID, "code": 130429, "count": 2}
    )
    assert status == 200 and fault["count"] == 2
    for _ in range(2):
        with pytest.raises(Exception) as excinfo:
            client.send_message(PNID, TEXT)
        assert excinfo.value.retryable
    assert client.send_message(PNID, TEXT).wamid
    assert control(sim, "GET", "faults")[1]["data"] == []
    status, body = control(sim, "POST", "faults", {"phone_number_id": PNID, "bogus": 1})
    assert status == 400 and "bogus" in body["error"]


def test_it_lists_webhooks_with_klaros_answers(sim, hooks):
    sim.inbound({"phone_number_id": PNID})
    _status, body = control(sim, "GET", "webhooks")
    (record,) = body["data"]
    assert record["status"] == 200 and record["kind"] == "inbound"
    assert record["json"]["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "text"


def test_it_answers_control_errors_clearly(sim):
    assert control(sim, "POST", "inbound", {"phone_number_id": "nope"})[0] == 400
    assert control(sim, "GET", "nothing-here")[0] == 404
    assert control(sim, "POST", "config", {"duplicate_rate": 2})[0] == 400
    status, config = control(sim, "POST", "config", {"chaos": True, "seed": 3})
    assert status == 200 and config["batch_rate"] > 0 and config["seed"] == 3


def test_it_answers_unknown_graph_paths_like_meta(sim):
    response = requests.get(
        f"{sim.graph_url()}/{PNID}/nonsense",
        headers={"Authorization": f"Bearer {DEMO_NUMBER.token}"},
        timeout=5,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100 and error["error_subcode"] == 33 and error["fbtrace_id"]


def test_it_does_the_subscription_handshake(sim, hooks):
    result = sim.verify_webhook("verify-me")
    assert result["verified"] is False and result["status"] == 404  # the receiver has no GET


def test_it_works_without_a_webhook_url():
    with running_simulator() as sim:
        GraphClient(sim.graph_url(), DEMO_NUMBER.token).send_message(PNID, TEXT)
        assert sim.wait_idle()
        records = sim.webhooks()
        assert len(records) == 3
        assert all(r["error"] == "no webhook_url configured" for r in records)


def test_it_parses_number_specs():
    number = parse_number_spec("600:100:tok:sec:15550001111")
    assert (number.phone_number_id, number.waba_id, number.token) == ("600", "100", "tok")
    assert (number.app_secret, number.display_phone_number) == ("sec", "15550001111")
    for bad in ("600:100:tok:sec", "600:100:tok:sec:1:extra", "600::tok:sec:1"):
        with pytest.raises(ValueError):
            parse_number_spec(bad)


def test_it_offers_a_management_command():
    from apps.whatsapp.management.commands.meta_simulator import Command

    parser = Command().create_parser("manage.py", "meta_simulator")
    options = parser.parse_args(
        [
            "--port",
            "0",
            "--webhook-url",
            "http://127.0.0.1:8000/webhooks/whatsapp/",
            "--number",
            "1:2:3:4:5",
            "--chaos",
        ]
    )
    assert options.port == 0 and options.chaos and options.number == ["1:2:3:4:5"]


def test_wait_until_raises_at_the_deadline():
    with pytest.raises(AssertionError):
        wait_until(lambda: False, timeout=0.05)
    assert wait_until(lambda: 5) == 5
