import base64
import hashlib
import pickle

import pytest
import requests

from apps.whatsapp.graph import (
    DEFAULT_GRAPH_URL,
    GraphClient,
    GraphError,
    GraphTransportError,
    MediaTooLargeError,
    check_base_url,
    media_sha256_matches,
)
from apps.whatsapp.simulator import Fault
from apps.whatsapp.testing import DEMO_NUMBER, OTHER_NUMBER

PNID = DEMO_NUMBER.phone_number_id
TEXT = {"to": "+15551234567", "type": "text", "text": {"body": "Hello é 😮"}}


def test_it_pins_a_current_graph_version():
    assert DEFAULT_GRAPH_URL == "https://graph.facebook.com/v25.0"


@pytest.mark.parametrize(
    "url",
    [
        "http://graph.facebook.com/v25.0",
        "http://10.0.0.5:8765/v25.0",
        "http://example.com/v25.0",
        "http://127.0.0.1.example.com/v25.0",
        "ftp://127.0.0.1/v25.0",
        "graph.facebook.com/v25.0",
        "https://user:pw@graph.facebook.com/v25.0",
        "https://graph.facebook.com/v25.0?access_token=x",
    ],
)
def test_it_refuses_unsafe_base_urls(url):
    with pytest.raises(ValueError):
        GraphClient(url, "token")


@pytest.mark.parametrize(
    "url",
    [
        "https://graph.facebook.com/v25.0/",
        "http://127.0.0.1:8765/v25.0",
        "http://127.8.9.10/v25.0",
        "http://localhost:8765/v23.0",
        "http://[::1]:8765/v25.0",
    ],
)
def test_it_accepts_https_and_loopback_http(url):
    assert check_base_url(url) == url.rstrip("/")


def test_it_never_shows_the_token(sim):
    client = GraphClient(sim.graph_url(), "secret-token-value")
    assert "secret-token-value" not in repr(client)
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    assert "secret-token-value" not in str(excinfo.value)
    assert "secret-token-value" not in repr(excinfo.value.raw)


def test_it_sends_a_message(client, sim):
    result = client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "m-1"})
    assert result.wamid.startswith("wamid.")
    assert result.wa_id == "15551234567"
    assert result.input == "+15551234567"
    (request,) = sim.requests()
    assert request["method"] == "POST"
    assert request["path"] == f"/v25.0/{PNID}/messages"
    assert request["json"]["messaging_product"] == "whatsapp"
    assert request["json"]["text"]["body"] == "Hello é 😮"
    assert request["auth"] == "ok"


def test_it_marks_a_message_read(client, sim):
    client.mark_read(PNID, "wamid.INBOUND", typing_indicator=True)
    body = sim.requests()[-1]["json"]
    assert body == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.INBOUND",
        "typing_indicator": {"type": "text"},
    }


def test_it_raises_190_for_a_wrong_or_missing_token(sim):
    with pytest.raises(GraphError) as excinfo:
        GraphClient(sim.graph_url(), "wrong").send_message(PNID, TEXT)
    error = excinfo.value
    assert (error.http_status, error.code, error.error_type) == (401, 190, "OAuthException")
    assert error.permanent and not error.retryable and error.token_invalid
    assert "token" in error.human_explanation
    assert error.fbtrace_id
    missing = requests.post(f"{sim.graph_url()}/{PNID}/messages", json=TEXT, timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == 190


def test_it_refuses_another_numbers_token(sim):
    other = GraphClient(sim.graph_url(), OTHER_NUMBER.token)
    with pytest.raises(GraphError) as excinfo:
        other.send_message(PNID, TEXT)
    assert excinfo.value.code == 190


@pytest.mark.parametrize(
    ("code", "http_status", "retryable"),
    [
        (131047, 400, False),
        (131026, 400, False),
        (131050, 400, False),
        (130429, 400, True),
        (131056, 400, True),
        (131000, 500, True),
        (132001, 404, False),
        (190, 401, False),
    ],
)
def test_it_classifies_injected_errors(client, sim, code, http_status, retryable):
    sim.add_fault(Fault(PNID, code=code))
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    error = excinfo.value
    assert (error.code, error.http_status) == (code, http_status)
    assert error.retryable is retryable
    assert error.permanent is (not retryable)
    assert error.message.startswith(f"(#{code}) ") or code == 190
    assert error.human_explanation and "Meta rejected the request" not in error.human_explanation
    # The fault was for one send only.
    assert client.send_message(PNID, TEXT).wamid


def test_it_reads_error_details_and_subcode(client, sim):
    sim.add_fault(Fault(PNID, code=131047, details="24 hours passed"))
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    assert excinfo.value.details == "24 hours passed"
    assert excinfo.value.title == "Re-engagement message"
    with pytest.raises(GraphError) as excinfo:
        client.get_media("404404")
    assert (excinfo.value.code, excinfo.value.subcode) == (100, 33)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_it_treats_5xx_as_retryable(client, sim, status):
    sim.add_fault(Fault(PNID, http_status=status))
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    assert excinfo.value.http_status == status
    assert excinfo.value.retryable


def test_it_survives_a_non_json_error_page(client, sim):
    sim.add_fault(Fault(PNID, http_status=502, non_json=True))
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    assert excinfo.value.code is None and excinfo.value.retryable
    assert "Bad Gateway" in excinfo.value.details


def test_it_reports_a_dropped_connection_as_unknown_outcome(client, sim):
    sim.add_fault(Fault(PNID, drop_connection=True))
    with pytest.raises(GraphTransportError) as excinfo:
        client.send_message(PNID, TEXT)
    assert excinfo.value.retryable and excinfo.value.outcome_unknown
    # Meta processed it: the message exists and will get statuses.
    assert len(sim.sent_messages()) == 1


def test_it_times_out_on_a_slow_answer(sim):
    sim.add_fault(Fault(PNID, delay=1.0))
    client = GraphClient(sim.graph_url(), DEMO_NUMBER.token, timeout=(2, 0.2))
    with pytest.raises(GraphTransportError) as excinfo:
        client.send_message(PNID, TEXT)
    assert excinfo.value.outcome_unknown


def test_it_reports_a_refused_connection_as_not_sent():
    client = GraphClient("http://127.0.0.1:9/v25.0", "t", timeout=(1, 1))
    with pytest.raises(GraphTransportError) as excinfo:
        client.send_message(PNID, TEXT)
    assert not excinfo.value.outcome_unknown


def test_it_uploads_looks_up_downloads_and_deletes_media(client, sim):
    data = b"%PDF-1.4 invoice \x00\xff"
    media_id = client.upload_media(PNID, data, "application/pdf", "invoice.pdf")
    upload = sim.requests()[-1]
    assert upload["form"]["messaging_product"] == "whatsapp"
    assert upload["form"]["type"] == "application/pdf"
    assert upload["form"]["file"] == {
        "filename": "invoice.pdf",
        "content_type": "application/pdf",
        "size": len(data),
    }
    info = client.get_media(media_id, phone_number_id=PNID)
    assert info.media_id == media_id
    assert info.mime_type == "application/pdf"
    assert info.file_size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    downloaded = client.download_media(info.url)
    assert downloaded == data
    assert media_sha256_matches(downloaded, info.sha256)
    client.delete_media(media_id)
    with pytest.raises(GraphError):
        client.get_media(media_id)


def test_it_needs_the_token_to_download(client, sim):
    media_id = client.upload_media(PNID, b"x" * 10, "image/png", "a.png")
    url = client.get_media(media_id).url
    assert requests.get(url, timeout=5).status_code == 401
    with pytest.raises(GraphError):
        GraphClient(sim.graph_url(), OTHER_NUMBER.token).download_media(url)


def test_it_caps_downloads(client):
    media_id = client.upload_media(PNID, b"y" * 5000, "image/png", "big.png")
    url = client.get_media(media_id).url
    with pytest.raises(MediaTooLargeError):
        client.download_media(url, max_bytes=4096)


def test_it_refuses_to_send_the_token_to_foreign_hosts(client):
    with pytest.raises(ValueError):
        client.download_media("https://evil.example.com/steal")
    with pytest.raises(ValueError):
        client.download_media("http://lookaside.fbsbx.com/x")


def test_it_rejects_unsupported_uploads(client):
    with pytest.raises(GraphError) as excinfo:
        client.upload_media(PNID, b"<svg/>", "image/svg+xml", "x.svg")
    assert excinfo.value.code == 131053 and excinfo.value.permanent


def test_it_follows_template_paging(client, sim):
    sim.set_templates(
        DEMO_NUMBER.waba_id,
        [{"name": f"tpl_{i}", "status": "APPROVED" if i % 2 else "PAUSED"} for i in range(7)],
    )
    templates = client.list_message_templates(DEMO_NUMBER.waba_id, limit=3)
    assert [t["name"] for t in templates] == [f"tpl_{i}" for i in range(7)]
    assert {t["status"] for t in templates} == {"APPROVED", "PAUSED"}
    pages = [r for r in sim.requests() if r["path"].endswith("/message_templates")]
    assert len(pages) == 3
    assert pages[1]["query"]["after"]


def test_it_refuses_templates_of_another_waba(sim):
    other = GraphClient(sim.graph_url(), OTHER_NUMBER.token)
    with pytest.raises(GraphError) as excinfo:
        other.list_message_templates(DEMO_NUMBER.waba_id)
    assert excinfo.value.code == 190


def test_it_sends_an_approved_template_only(client, sim):
    sim.set_templates(
        DEMO_NUMBER.waba_id,
        [
            {
                "name": "order_update",
                "category": "UTILITY",
                "components": [{"type": "BODY", "text": "Hi {{1}}, total {{2}}"}],
            },
            {"name": "paused_one", "status": "PAUSED"},
        ],
    )
    template = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Dana"}] * 2},
        ],
    }
    result = client.send_message(PNID, {"to": "+1555", "type": "template", "template": template})
    assert result.message_status == "accepted"
    with pytest.raises(GraphError) as excinfo:
        bad = {**template, "components": [{"type": "body", "parameters": []}]}
        client.send_message(PNID, {"to": "+1555", "type": "template", "template": bad})
    assert excinfo.value.code == 132000
    with pytest.raises(GraphError) as excinfo:
        missing = {**template, "name": "nope"}
        client.send_message(PNID, {"to": "+1555", "type": "template", "template": missing})
    assert excinfo.value.code == 132001
    with pytest.raises(GraphError) as excinfo:
        paused = {"name": "paused_one", "language": {"code": "en_US"}}
        client.send_message(PNID, {"to": "+1555", "type": "template", "template": paused})
    assert excinfo.value.code == 132015


def test_it_validates_send_payloads(client):
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, {"type": "text", "text": {"body": "x"}})
    assert excinfo.value.code == 131008
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, {"to": "+1", "type": "text"})
    assert excinfo.value.code == 131008


def test_it_matches_hex_and_base64_sha256():
    data = b"media"
    digest = hashlib.sha256(data).digest()
    assert media_sha256_matches(data, digest.hex())
    assert media_sha256_matches(data, base64.b64encode(digest).decode())
    assert not media_sha256_matches(b"other", digest.hex())
    assert not media_sha256_matches(data, "")
    assert not media_sha256_matches(data, "not-a-digest")


def test_it_explains_codes_without_an_answer_from_meta():
    error = GraphError(400, 132999, title="x")
    assert error.permanent and "template" in error.human_explanation
    assert GraphError(503, None).retryable
    assert GraphError(429, None).retryable
    assert GraphError(400, 99999).permanent


def test_its_errors_survive_pickling_for_the_task_queue():
    error = GraphError(400, 131047, 2494010, "Re-engagement message", "(#131047) x", "d", "trace")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.http_status, copy.code, copy.subcode, copy.details) == (400, 131047, 2494010, "d")
    assert copy.permanent and str(copy) == str(error)
    transport = pickle.loads(  # noqa: S301 - our own bytes
        pickle.dumps(GraphTransportError("boom", outcome_unknown=True))
    )
    assert transport.outcome_unknown and str(transport) == "boom"
