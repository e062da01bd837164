"""Inbound media: fetched from Meta (the simulator over HTTP) with the number's token, checked
and stored privately, on both storage backends. Failures end visible, never silent."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.utils import timezone

from apps.media import services, tasks
from apps.media.models import MediaObject, MediaState
from apps.tenants.scoping import ScopeError, tenant_scope
from tests.clock import call_at_a_stopped_instant

from .conftest import HTML, JPEG, OGG, PDF, WEBP_ANIMATED, make_message, media_requests

KEY_SHAPE = re.compile(r"^(?P<tenant>[0-9a-f-]{36})/(?P<token>[A-Za-z0-9_-]{32})/(?P<name>[^/]+)$")


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def receive(world, sim, data, mime, *, kind="image", filename=None, sha256=None, put=True, capture):
    """Meta delivers a media message; ingest registers it (the download runs after commit)."""
    media_id = sim.put_media(world.number.phone_number_id, data, mime, filename) if put else "999"
    content = {"id": media_id, "mime_type": mime, "sha256": sha256 or b64_sha256(data)}
    if filename:
        content["filename"] = filename
    message = make_message(world, type=kind, content=content)
    with tenant_scope(world.tenant), capture(execute=True):
        media_object = services.register_inbound_media(
            number=world.number, message_id=message.pk, media=content, kind=kind
        )
    with tenant_scope(world.tenant):
        media_object.refresh_from_db()
    return media_object


@pytest.fixture
def deliver(acme, sim, django_capture_on_commit_callbacks):
    def _deliver(data, mime, **kwargs):
        return receive(acme, sim, data, mime, capture=django_capture_on_commit_callbacks, **kwargs)

    return _deliver


def test_it_stores_inbound_media_privately_with_key_sha_and_sniffed_type(
    media_backend, acme, deliver
):
    media_object = deliver(JPEG, "image/jpeg")

    assert media_object.state == MediaState.STORED, media_object.reason
    match = KEY_SHAPE.match(media_object.storage_key)
    assert match and match["tenant"] == str(acme.tenant.pk)
    assert match["name"] == media_object.safe_name == "image.jpg"
    assert media_object.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert media_object.content_type == "image/jpeg"
    assert media_object.size == len(JPEG)
    assert media_object.stored_at is not None
    assert media_backend.read(media_object.storage_key) == JPEG
    if media_backend.root is not None:
        assert (media_backend.root / media_object.storage_key).read_bytes() == JPEG


def test_it_keeps_a_documents_name_safe_and_stores_voice_notes(media_backend, deliver):
    document = deliver(PDF, "application/pdf", kind="document", filename="../../etc/passwd")
    voice = deliver(OGG, "audio/ogg; codecs=opus", kind="audio")

    assert document.state == voice.state == MediaState.STORED
    assert document.safe_name == "passwd.pdf"
    assert document.original_filename == "../../etc/passwd"
    assert document.storage_key.endswith("/passwd.pdf")
    assert voice.content_type == "audio/ogg"


def test_it_never_downloads_a_duplicate_webhook_twice(
    filesystem_backend, acme, sim, django_capture_on_commit_callbacks
):
    first = receive(acme, sim, JPEG, "image/jpeg", capture=django_capture_on_commit_callbacks)
    content = {"id": first.meta_media_id, "mime_type": "image/jpeg", "sha256": b64_sha256(JPEG)}
    with tenant_scope(acme.tenant), django_capture_on_commit_callbacks(execute=True) as queued:
        again = services.register_inbound_media(
            number=acme.number, message_id=first.message_id, media=content, kind="image"
        )
        with tenant_scope(acme.tenant):
            tasks.download_inbound_media(str(acme.tenant.pk), str(first.pk))  # a stray task too

    assert again.pk == first.pk
    assert queued == []
    calls = media_requests(sim, first.meta_media_id)
    assert [c["method"] for c in calls] == ["GET", "GET"]  # one lookup, one download
    with tenant_scope(acme.tenant):
        assert MediaObject.objects.count() == 1


def test_it_marks_a_checksum_mismatch_unavailable_and_stores_nothing(media_backend, deliver):
    media_object = deliver(JPEG, "image/jpeg", sha256=b64_sha256(b"something else"))

    assert media_object.state == MediaState.UNAVAILABLE
    assert "checksum" in media_object.reason
    assert media_object.storage_key == ""


def test_it_marks_an_unknown_or_expired_media_id_unavailable(filesystem_backend, deliver, sim):
    media_object = deliver(JPEG, "image/jpeg", put=False)

    assert media_object.state == MediaState.UNAVAILABLE
    assert "no longer has this file" in media_object.reason
    assert media_object.attempts == 1


def test_it_gives_up_on_media_older_than_metas_seven_days(
    filesystem_backend, acme, sim, django_capture_on_commit_callbacks
):
    media_id = sim.put_media(acme.number.phone_number_id, JPEG, "image/jpeg")
    with tenant_scope(acme.tenant):
        media_object = services.register_inbound_media(
            number=acme.number, message_id=None, media={"id": media_id, "mime_type": "image/jpeg"}
        )
        MediaObject.objects.filter(pk=media_object.pk).update(
            created_at=timezone.now() - timedelta(days=8)
        )
        media_object.refresh_from_db()
        services.download_inbound_media(media_object)

    assert media_object.state == MediaState.UNAVAILABLE
    assert "7 days" in media_object.reason
    assert media_requests(sim, media_id) == []


def test_it_refuses_an_image_above_whatsapps_5_mb_limit_without_downloading(
    filesystem_backend, deliver, sim
):
    big = JPEG + b"\x00" * (5 * 1024 * 1024)
    media_object = deliver(big, "image/jpeg")

    assert media_object.state == MediaState.UNAVAILABLE
    assert "larger than WhatsApp allows" in media_object.reason
    assert [c["path"] for c in media_requests(sim, media_object.meta_media_id)] == [
        f"/v25.0/{media_object.meta_media_id}"
    ]  # the lookup's file_size was enough


def test_it_refuses_an_image_whose_bytes_are_a_web_page(filesystem_backend, deliver):
    media_object = deliver(HTML, "image/jpeg")

    assert media_object.state == MediaState.UNAVAILABLE
    assert "web page" in media_object.reason


def test_it_keeps_an_html_document_but_only_as_active_content(filesystem_backend, deliver):
    media_object = deliver(HTML, "text/html", kind="document", filename="invoice.html")

    assert media_object.state == MediaState.STORED
    assert media_object.content_type == "text/html"
    assert media_object.is_active_content and not media_object.may_display_inline
    assert media_object.safe_name == "invoice.html"


def test_it_allows_animated_stickers_their_larger_limit(filesystem_backend, deliver):
    sticker = WEBP_ANIMATED + b"\x00" * (200 * 1024)
    media_object = deliver(sticker, "image/webp", kind="sticker")

    assert media_object.state == MediaState.STORED, media_object.reason
    assert media_object.animated


class FlakyGraph:
    """A loopback front for the simulator answering Meta's 503 (131016) to the first `failures`
    media lookups, then passing requests through. The simulator's fault injection covers sends
    and uploads but not `GET /{media_id}`, hence this small stand-in."""

    def __init__(self, sim, failures: int):
        self.failures = failures
        self.seen = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                front.seen += 1
                if front.seen <= front.failures:
                    body = json.dumps(
                        {"error": {"message": "Service unavailable", "code": 131016}}
                    ).encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                upstream = requests.get(
                    sim.url + self.path,
                    headers={"Authorization": self.headers["Authorization"]},
                    timeout=5,
                )
                # Download URLs in lookups point back through this front (same origin).
                content = upstream.content.replace(sim.url.encode(), front.origin.encode())
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", upstream.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def graph_url(self) -> str:
        return f"{self.origin}/v25.0"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _make_due(world, media_object):
    with tenant_scope(world.tenant):
        MediaObject.objects.filter(pk=media_object.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )


def test_it_retries_a_5xx_with_backoff_then_stores(
    media_backend, acme, sim, settings, django_capture_on_commit_callbacks, monkeypatch
):
    # Each backoff is measured from the instant its retry was scheduled (not from whenever the
    # test gets to look, which depends on the machine's speed): the services' clock is stopped
    # at a known instant while they schedule the retry.
    backoffs = []
    real_retry_later = services._retry_later

    def retry_later_at_a_known_instant(media_object, reason):
        result, instant = call_at_a_stopped_instant(
            monkeypatch, services, real_retry_later, media_object, reason
        )
        backoffs.append(media_object.next_attempt_at - instant)
        return result

    monkeypatch.setattr(services, "_retry_later", retry_later_at_a_known_instant)
    with FlakyGraph(sim, failures=2) as flaky:
        settings.WHATSAPP_GRAPH_URL = flaky.graph_url
        media_object = receive(
            acme, sim, JPEG, "image/jpeg", capture=django_capture_on_commit_callbacks
        )
        assert media_object.state == MediaState.PENDING
        assert media_object.attempts == 1
        assert media_object.reason.startswith("Retrying")
        [first_delay] = backoffs
        assert timedelta(seconds=30) <= first_delay <= timedelta(seconds=36)  # 30 s + 0-20 %
        assert media_object.next_attempt_at > timezone.now()

        assert tasks.sweep_media_downloads() == 0  # not due yet
        _make_due(acme, media_object)
        assert tasks.sweep_media_downloads() == 1
        with tenant_scope(acme.tenant):
            media_object.refresh_from_db()
        assert media_object.state == MediaState.PENDING and media_object.attempts == 2
        [_, second_delay] = backoffs
        assert timedelta(seconds=120) <= second_delay <= timedelta(seconds=144)  # 120 s + 0-20 %
        assert media_object.next_attempt_at > timezone.now()

        _make_due(acme, media_object)
        tasks.sweep_media_downloads()
        with tenant_scope(acme.tenant):
            media_object.refresh_from_db()
    assert media_object.state == MediaState.STORED
    assert media_object.attempts == 3
    assert media_backend.read(media_object.storage_key) == JPEG


def test_it_gives_up_after_six_attempts_with_the_last_reason(
    filesystem_backend, acme, sim, settings, django_capture_on_commit_callbacks
):
    with FlakyGraph(sim, failures=100) as flaky:
        settings.WHATSAPP_GRAPH_URL = flaky.graph_url
        media_object = receive(
            acme, sim, JPEG, "image/jpeg", capture=django_capture_on_commit_callbacks
        )
        for _ in range(services.MAX_DOWNLOAD_ATTEMPTS - 1):
            _make_due(acme, media_object)
            tasks.sweep_media_downloads()
        with tenant_scope(acme.tenant):
            media_object.refresh_from_db()
    assert media_object.state == MediaState.UNAVAILABLE
    assert media_object.attempts == services.MAX_DOWNLOAD_ATTEMPTS
    assert media_object.reason.startswith("Gave up after 6 attempts")
    assert "temporarily unavailable" in media_object.reason


def test_it_retries_when_meta_cannot_be_reached(
    filesystem_backend, acme, sim, settings, django_capture_on_commit_callbacks
):
    settings.WHATSAPP_GRAPH_URL = "http://127.0.0.1:9/v25.0"  # discard port: refused
    media_object = receive(
        acme, sim, JPEG, "image/jpeg", capture=django_capture_on_commit_callbacks
    )
    assert media_object.state == MediaState.PENDING
    assert "could not reach WhatsApp" in media_object.reason

    settings.WHATSAPP_GRAPH_URL = sim.graph_url()
    _make_due(acme, media_object)
    tasks.sweep_media_downloads()
    with tenant_scope(acme.tenant):
        media_object.refresh_from_db()
    assert media_object.state == MediaState.STORED


def test_the_sweep_picks_up_a_download_whose_worker_died(filesystem_backend, acme, sim):
    media_id = sim.put_media(acme.number.phone_number_id, JPEG, "image/jpeg")
    with tenant_scope(acme.tenant):
        media_object = services.register_inbound_media(  # its task was lost: never run
            number=acme.number, message_id=None, media={"id": media_id}, kind="image"
        )
        MediaObject.objects.filter(pk=media_object.pk).update(
            created_at=timezone.now() - timedelta(minutes=5)
        )
    assert tasks.sweep_media_downloads() == 1
    with tenant_scope(acme.tenant):
        media_object.refresh_from_db()
    assert media_object.state == MediaState.STORED


def test_a_task_naming_another_tenants_media_fails_with_a_scope_error(
    filesystem_backend, acme, bravo, deliver
):
    media_object = deliver(JPEG, "image/jpeg")
    with pytest.raises(ScopeError):
        tasks.download_inbound_media(str(bravo.tenant.pk), str(media_object.pk))


def test_media_without_an_id_is_unavailable_not_missing(acme):
    with tenant_scope(acme.tenant):
        media_object = services.register_inbound_media(
            number=acme.number, message_id=None, media={"mime_type": "image/jpeg"}
        )
    assert media_object.state == MediaState.UNAVAILABLE
    assert media_object.reason
