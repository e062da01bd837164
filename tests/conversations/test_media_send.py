"""Outbound attachments (issue 5, item 4): the gate first, the bytes checked, stored privately,
queued like a reply, and handed to Meta by the dispatcher by upload (`/media`, then send by id)
or by a one-use signed link, against the simulator over HTTP."""

from __future__ import annotations

import ast
import inspect
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from apps.conversations.models import Conversation, Message
from apps.conversations.outbound import dispatcher
from apps.conversations.outbound import media as media_send
from apps.conversations.outbound.gate import SendRefused
from apps.conversations.outbound.media import attach_media_or_settle, queue_media_reply
from apps.conversations.outbound.outbox import SendError
from apps.media.models import MediaObject
from apps.media.services import MediaRejected
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.graph import GraphClient
from apps.whatsapp.simulator import Fault

from .media_fixtures import (  # noqa: F401 (fixtures)
    HTML,
    JPEG,
    OGG,
    PDF,
    media_root_fixture,
    png,
    stored_files,
)
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    outbound_messages,
    reload,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

REFUSED_HTML = (
    '"photo.jpg" is really a web page (HTML). Web pages, SVG images and scripts cannot be sent.'
)


def upload(name: str, data: bytes, content_type: str = "application/octet-stream"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def media_rows(world) -> list[MediaObject]:
    with tenant_scope(world.tenant):
        return list(MediaObject.objects.order_by("created_at"))


def media_uploads(sim, world) -> list[dict]:
    return [
        r
        for r in sim.requests(world.number.phone_number_id)
        if r["method"] == "POST" and r["path"].endswith("/media")
    ]


def queue(world, conversation, file, caption: str = "") -> Message:
    with tenant_scope(world.tenant):
        return queue_media_reply(conversation, file, caption=caption, actor=world.owner)


# --- Queueing -------------------------------------------------------------------------------


def test_a_gate_refusal_stores_nothing_and_calls_no_graph(sim, acme, media_root):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=25))
    with pytest.raises(SendRefused) as refused:
        queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"))
    assert "24-hour window closed" in refused.value.message
    assert media_rows(acme) == []
    assert stored_files(media_root) == []
    assert outbound_messages(acme) == []
    assert [e.data["path"] for e in audit_events(acme, "send.refused")] == ["agent_media"]
    dispatcher.dispatch_outbox(time_budget=1)
    assert sim.requests() == []


def test_html_named_photo_jpg_is_refused_with_a_clear_message_and_nothing_is_queued(
    sim, acme, media_root
):
    conversation = make_conversation(acme)
    with pytest.raises(MediaRejected) as rejected:
        queue(acme, conversation, upload("photo.jpg", HTML, "image/jpeg"))
    assert rejected.value.message == REFUSED_HTML
    assert media_rows(acme) == []
    assert stored_files(media_root) == []
    assert outbound_messages(acme) == []


def test_a_jpeg_is_queued_as_an_image_with_its_caption(sim, acme, media_root):
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"), "  Your parcel ")
    [media] = media_rows(acme)
    assert (message.type, message.status, message.send_path) == ("image", "queued", "agent_media")
    assert message.content == {"_media_object_id": str(media.pk), "caption": "Your parcel"}
    assert message.text == "Photo: Your parcel"
    assert (media.kind, media.state, media.message_id) == ("image", "stored", message.pk)
    assert (media.content_type, media.size, media.safe_name) == (
        "image/jpeg",
        len(JPEG),
        "photo.jpg",
    )
    assert [p.read_bytes() for p in stored_files(media_root)] == [JPEG]
    with tenant_scope(acme.tenant):
        assert Conversation.objects.get(pk=conversation.pk).last_message_preview == (
            "Photo: Your parcel"
        )
    assert sim.requests() == []  # queued, never sent from the request


@pytest.mark.parametrize("name", ["../../Invoice 42.pdf", "..%2F..%2FInvoice 42.pdf"])
def test_a_pdf_is_queued_as_a_document_with_its_safe_filename(sim, acme, media_root, name):
    conversation = make_conversation(acme)
    file = upload("x.pdf", PDF, "application/pdf")
    file._name = name  # as a client could send it (Django's own basename() step bypassed)
    message = queue(acme, conversation, file)
    [media] = media_rows(acme)
    assert message.type == "document"
    assert message.content == {"_media_object_id": str(media.pk), "filename": "Invoice 42.pdf"}
    assert message.text == "Document: Invoice 42.pdf"
    assert ".." not in media.storage_key and media.storage_key.endswith("/Invoice 42.pdf")
    [stored] = stored_files(media_root)
    assert stored.resolve().is_relative_to(media_root.resolve())


def test_a_caption_on_audio_is_refused_and_the_stored_file_is_erased(
    sim, acme, media_root, django_capture_on_commit_callbacks
):
    conversation = make_conversation(acme)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(SendError, match="does not show captions on audio"),
    ):
        queue(acme, conversation, upload("note.ogg", OGG, "audio/ogg"), "hello")
    assert media_rows(acme) == []
    assert stored_files(media_root) == []
    assert outbound_messages(acme) == []


def test_a_too_long_caption_is_refused_before_anything_is_stored(sim, acme, media_root):
    conversation = make_conversation(acme)
    with pytest.raises(SendError, match="1024 characters"):
        queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"), "x" * 1025)
    assert media_rows(acme) == [] and stored_files(media_root) == []


def test_the_gate_runs_before_the_file_is_stored_or_queued_in_the_source():
    tree = ast.parse(inspect.getsource(media_send.queue_media_reply))
    lines = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            lines.setdefault(node.func.id, node.lineno)
    assert lines["send_gate"] < lines["store_outbound_upload"] < lines["add_to_outbox_after_gate"]


# --- Dispatch -------------------------------------------------------------------------------


def test_upload_mode_uploads_to_the_simulators_media_endpoint_then_sends_by_id(
    sim, acme, media_root, settings
):
    settings.KLAROS_MEDIA_SEND_MODE = "upload"
    conversation = make_conversation(acme)
    image = png()
    message = queue(acme, conversation, upload("shelf.png", image, "image/png"), "On the shelf")

    assert dispatcher.dispatch_outbox(time_budget=5) == 1

    [uploaded] = media_uploads(sim, acme)
    assert uploaded["form"]["type"] == "image/png"
    assert uploaded["form"]["file"]["filename"] == "shelf.png"
    [send] = graph_sends(sim, acme)
    meta_id = send["json"]["image"]["id"]
    assert send["json"]["image"] == {"id": meta_id, "caption": "On the shelf"}
    assert "_media_object_id" not in str(send["json"])
    # What Meta holds under that id is exactly the agent's file.
    with GraphClient(settings.WHATSAPP_GRAPH_URL, acme.credentials.access_token) as client:
        info = client.get_media(meta_id, phone_number_id=acme.number.phone_number_id)
        assert client.download_media(info.url) == image
    sent = reload(message)
    assert (sent.status, sent.attempts) == ("accepted", 1) and sent.wamid
    [media] = media_rows(acme)
    assert media.meta_media_id == meta_id


def test_link_mode_sends_a_one_use_link_that_meta_can_fetch_once(sim, acme, media_root, settings):
    settings.KLAROS_MEDIA_SEND_MODE = "link"
    settings.KLAROS_PUBLIC_URL = "https://klaros.example"
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("invoice.pdf", PDF, "application/pdf"), "Invoice")

    assert dispatcher.dispatch_outbox(time_budget=5) == 1

    assert media_uploads(sim, acme) == []
    [send] = graph_sends(sim, acme)
    document = send["json"]["document"]
    assert set(document) == {"link", "caption", "filename"}
    assert (document["caption"], document["filename"]) == ("Invoice", "invoice.pdf")
    link = document["link"]
    assert link.startswith("https://klaros.example/media/meta/")
    # The simulator does not fetch links; Meta's fetch is played by a session-less client.
    meta = Client()
    path = link.removeprefix("https://klaros.example")
    first = meta.get(path)
    assert first.status_code == 200
    assert b"".join(first.streaming_content) == PDF
    assert first["Content-Disposition"].startswith("attachment")
    assert meta.get(path).status_code == 403  # spent
    assert reload(message).status == "accepted"


def test_a_retryable_upload_error_queues_a_retry_and_a_permanent_one_fails_clearly(
    sim, acme, media_root, settings
):
    settings.KLAROS_MEDIA_SEND_MODE = "upload"
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"))
    sim.add_fault(
        Fault(phone_number_id=acme.number.phone_number_id, scope="media", http_status=503)
    )

    dispatcher.dispatch_outbox(time_budget=0.5)

    retry = reload(message)
    assert (retry.status, retry.attempts) == ("queued", 1)
    assert retry.next_attempt_at is not None
    assert retry.error_title.startswith("Retrying: uploading the attachment")
    assert graph_sends(sim, acme) == []

    sim.add_fault(Fault(phone_number_id=acme.number.phone_number_id, scope="media", code=131053))
    with unscoped("test: make the retry due"):
        Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    dispatcher.dispatch_outbox(time_budget=0.5)

    failed = reload(message)
    assert failed.status == "failed"
    assert failed.error_code == 131053
    assert failed.error_title.startswith("WhatsApp refused the attachment")
    assert graph_sends(sim, acme) == []


def test_an_attachment_erased_before_dispatch_fails_the_message_with_a_reason(
    sim, acme, media_root
):
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"))
    with tenant_scope(acme.tenant):
        MediaObject.objects.all().delete()
    dispatcher.dispatch_outbox(time_budget=1)
    failed = reload(message)
    assert failed.status == "failed"
    assert failed.error_title == "The attachment could not be sent"
    assert failed.error_details == "The attachment was deleted before it could be sent."
    assert sim.requests() == []


def test_the_gate_is_rechecked_before_anything_is_uploaded(sim, acme, media_root):
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"))
    with tenant_scope(acme.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(
            last_inbound_at=timezone.now() - timedelta(hours=25)
        )
    dispatcher.dispatch_outbox(time_budget=1)
    assert reload(message).status == "failed"
    assert sim.requests() == []  # no upload, no send


def test_attach_media_or_settle_leaves_text_payloads_alone_and_fills_media(
    sim, acme, media_root, settings
):
    settings.KLAROS_MEDIA_SEND_MODE = "link"
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"), "Hi")
    payload = dispatcher.build_payload(message)
    assert payload["image"] == {"caption": "Hi"}  # private keys dropped, no reference yet
    with tenant_scope(acme.tenant):
        assert attach_media_or_settle(message, payload) is True
    assert set(payload["image"]) == {"caption", "link"}


# --- The view -------------------------------------------------------------------------------


def test_attaching_to_another_tenants_conversation_is_404_and_stores_nothing(
    sim, acme, bravo, media_root
):
    conversation = make_conversation(acme)
    bob = Client()
    bob.force_login(bravo.owner)
    response = bob.post(
        f"/inbox/c/{conversation.pk}/attach/",
        {"file": upload("photo.jpg", JPEG, "image/jpeg"), "caption": "hi"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 404
    with unscoped("test witness"):
        assert MediaObject.objects.count() == 0
        assert Message.objects.filter(direction="out").count() == 0
    assert stored_files(media_root) == []


def test_a_rejected_token_during_the_upload_marks_the_number_broken_and_fails_the_message(
    sim, acme, media_root, settings
):
    settings.KLAROS_MEDIA_SEND_MODE = "upload"
    conversation = make_conversation(acme)
    message = queue(acme, conversation, upload("photo.jpg", JPEG, "image/jpeg"))
    sim.add_fault(Fault(phone_number_id=acme.number.phone_number_id, scope="media", code=190))
    dispatcher.dispatch_outbox(time_budget=1)
    failed = reload(message)
    assert (failed.status, failed.error_code) == ("failed", 190)
    acme.number.refresh_from_db()
    assert acme.number.credential_status == "broken"
    assert graph_sends(sim, acme) == []
