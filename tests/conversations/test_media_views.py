"""The attach view (htmx and plain posts) and how the thread renders media: images inline and
only through the scoped `/media/<id>/` view, players for audio and video, documents as
downloads with name and size, pending and unavailable states with their reason, everything
escaped."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.loader import render_to_string
from django.test import Client
from django.utils import timezone

from apps.conversations.inbox.templatetags.inbox_tags import message_view
from apps.conversations.models import Message
from apps.media.models import MediaObject
from apps.tenants.scoping import tenant_scope, unscoped

from .media_fixtures import (  # noqa: F401 (fixtures)
    HTML,
    JPEG,
    PDF,
    media_root_fixture,
    stored_files,
)
from .sim_fixtures import (  # noqa: F401 (fixtures)
    fast_password_hashing_fixture,
    make_conversation,
    outbound_messages,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing", "media_root")

HTMX = {"HX-Request": "true"}
REFUSED_HTML = (
    '"photo.jpg" is really a web page (HTML). Web pages, SVG images and scripts cannot be sent.'
)


def alice(acme) -> Client:
    client = Client()
    client.force_login(acme.owner)
    return client


def attach_url(conversation) -> str:
    return f"/inbox/c/{conversation.pk}/attach/"


def post_file(client, conversation, name, data, content_type, caption="", htmx=True):
    return client.post(
        attach_url(conversation),
        {"file": SimpleUploadedFile(name, data, content_type=content_type), "caption": caption},
        headers=HTMX if htmx else {},
    )


# --- Attach view ----------------------------------------------------------------------------


def test_an_htmx_attach_queues_the_file_and_asks_the_thread_to_refresh(acme, media_root):
    conversation = make_conversation(acme)
    response = post_file(alice(acme), conversation, "photo.jpg", JPEG, "image/jpeg", "Hi")
    assert response.status_code == 200
    assert response["HX-Trigger"] == "klaros:thread-changed"
    html = response.content.decode()
    assert 'id="attach-form"' in html and "File queued for sending." in html
    [message] = outbound_messages(acme)
    assert (message.type, message.content["caption"]) == ("image", "Hi")


def test_html_named_photo_jpg_comes_back_as_a_readable_error_and_nothing_is_queued(
    acme, media_root
):
    conversation = make_conversation(acme)
    response = post_file(alice(acme), conversation, "photo.jpg", HTML, "image/jpeg", "<b>x</b>")
    assert response.status_code == 200
    assert "HX-Trigger" not in response
    html = response.content.decode()
    assert 'role="alert"' in html
    assert "&quot;photo.jpg&quot; is really a web page (HTML)." in html
    assert 'value="&lt;b&gt;x&lt;/b&gt;"' in html  # the caption is kept, escaped
    assert outbound_messages(acme) == []
    assert stored_files(media_root) == []


def test_a_plain_post_redirects_to_the_conversation_with_the_reason(acme, media_root):
    conversation = make_conversation(acme)
    client = alice(acme)
    response = post_file(client, conversation, "photo.jpg", HTML, "image/jpeg", htmx=False)
    assert response.status_code == 302
    assert response["Location"] == f"/inbox/c/{conversation.pk}/"
    flashed = [str(m) for m in response.wsgi_request._messages]
    assert flashed == [REFUSED_HTML]


def test_a_closed_window_is_refused_by_the_gate_before_anything_is_stored(acme, media_root):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=30))
    response = post_file(alice(acme), conversation, "photo.jpg", JPEG, "image/jpeg")
    assert "send an approved template instead" in response.content.decode()
    assert stored_files(media_root) == [] and outbound_messages(acme) == []


def test_a_post_without_a_file_asks_for_one(acme):
    conversation = make_conversation(acme)
    response = alice(acme).post(attach_url(conversation), {"caption": "x"}, headers=HTMX)
    assert "Choose a file to attach." in response.content.decode()


def test_the_attach_view_needs_a_member_and_a_post(acme):
    conversation = make_conversation(acme)
    anonymous = Client().post(attach_url(conversation), {})
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert alice(acme).get(attach_url(conversation)).status_code == 405


def test_an_unknown_conversation_is_404(acme):
    response = alice(acme).post("/inbox/c/00000000-0000-0000-0000-000000000000/attach/", {})
    assert response.status_code == 404


# --- Rendering ------------------------------------------------------------------------------


def inbound(world, conversation, type_: str, content: dict | None = None) -> Message:
    with tenant_scope(world.tenant):
        return Message.objects.create(
            tenant=world.tenant,
            conversation=conversation,
            direction="in",
            wamid=f"wamid.V{Message.objects.count():05d}{type_}",
            type=type_,
            content=content or {},
            text=type_,
            status="received",
            sent_at=timezone.now(),
        )


def media(world, message, **fields) -> MediaObject:
    defaults = {
        "number": world.number,
        "message": message,
        "direction": "in",
        "kind": message.type,
        "state": "stored",
    }
    defaults.update(fields)
    with tenant_scope(world.tenant):
        return MediaObject.objects.create(tenant=world.tenant, **defaults)


def render(world, message) -> str:
    with tenant_scope(world.tenant):
        message = Message.objects.prefetch_related("media_objects").get(pk=message.pk)
        return render_to_string(
            "conversations/_media.html", {"m": message, "v": message_view(message)}
        )


def test_a_stored_image_is_shown_inline_through_the_scoped_view_only(acme):
    conversation = make_conversation(acme)
    message = inbound(acme, conversation, "image", {"caption": "Broken <b>box</b>"})
    image = media(
        acme,
        message,
        content_type="image/jpeg",
        size=2048,
        safe_name="photo.jpg",
        storage_key=f"{acme.tenant.pk}/SECRETTOKEN123/photo.jpg",
    )
    html = render(acme, message)
    assert re.findall(r'<img [^>]*src="([^"]+)"', html) == [f"/media/{image.pk}/"]
    assert f'href="/media/{image.pk}/?download=1"' in html
    assert "SECRETTOKEN123" not in html and str(acme.tenant.pk) not in html
    assert "Broken &lt;b&gt;box&lt;/b&gt;" in html and "<b>box</b>" not in html


def test_audio_and_video_get_players_and_documents_a_download_with_name_and_size(acme):
    conversation = make_conversation(acme)
    audio_message = inbound(acme, conversation, "audio", {"voice": True})
    audio = media(acme, audio_message, content_type="audio/ogg", size=5000, safe_name="voice.ogg")
    video_message = inbound(acme, conversation, "video")
    video = media(acme, video_message, content_type="video/mp4", size=9000, safe_name="clip.mp4")
    doc_message = inbound(acme, conversation, "document", {"filename": "<script>x</script>.pdf"})
    doc = media(
        acme,
        doc_message,
        content_type="application/pdf",
        size=1536,
        safe_name="<script>x<_script>.pdf",
        original_filename="<script>x</script>.pdf",
    )

    audio_html = render(acme, audio_message)
    assert f'<audio class="media-audio" controls preload="metadata" src="/media/{audio.pk}/"' in (
        audio_html
    )
    video_html = render(acme, video_message)
    assert f'<video class="media-video" controls preload="metadata" src="/media/{video.pk}/"' in (
        video_html
    )
    doc_html = render(acme, doc_message)
    assert "<img" not in doc_html and "<audio" not in doc_html
    assert f'href="/media/{doc.pk}/?download=1"' in doc_html
    assert "&lt;script&gt;x&lt;_script&gt;.pdf" in doc_html
    assert "<script>" not in doc_html
    assert "1.5\xa0KB" in doc_html


def test_a_document_that_is_really_an_image_still_downloads(acme):
    conversation = make_conversation(acme)
    message = inbound(acme, conversation, "document")
    media(acme, message, content_type="image/png", size=10, safe_name="scan.png")
    html = render(acme, message)
    assert "<img" not in html and "?download=1" in html


def test_active_content_is_never_inline(acme):
    conversation = make_conversation(acme)
    message = inbound(acme, conversation, "document")
    media(acme, message, content_type="text/html", size=10, safe_name="page.html")
    html = render(acme, message)
    assert "<img" not in html and "<iframe" not in html and "?download=1" in html


def test_pending_and_unavailable_media_say_so_with_the_reason_escaped(acme):
    conversation = make_conversation(acme)
    pending_message = inbound(acme, conversation, "image")
    media(acme, pending_message, state="pending")
    gone_message = inbound(acme, conversation, "video")
    media(
        acme,
        gone_message,
        state="unavailable",
        reason="Meta no longer has this file <expired> (media ids last 7 days).",
    )
    none_message = inbound(
        acme, conversation, "sticker", {"id": "998877", "mime_type": "image/webp"}
    )
    no_file_message = inbound(acme, conversation, "document")

    pending_html = render(acme, pending_message)
    assert "media pending" in pending_html and "/media/" not in pending_html
    gone_html = render(acme, gone_message)
    assert (
        "Media unavailable: Meta no longer has this file &lt;expired&gt; (media ids last 7 days)."
        in gone_html
    )
    assert "/media/" not in gone_html
    assert "media pending" in render(acme, none_message)  # registered later: never a gap
    # Meta sent no media id at all: nothing will ever be downloaded, and the thread says so.
    assert "Media unavailable: WhatsApp delivered this message without its file." in render(
        acme, no_file_message
    )


def test_the_tag_uses_the_prefetch_instead_of_a_query_per_message(acme, django_assert_num_queries):
    conversation = make_conversation(acme)
    messages = []
    for _ in range(5):
        message = inbound(acme, conversation, "image")
        media(acme, message, content_type="image/png", size=10, safe_name="a.png")
        messages.append(message)
    with tenant_scope(acme.tenant):
        loaded = list(
            Message.objects.filter(pk__in=[m.pk for m in messages]).prefetch_related(
                "media_objects"
            )
        )
        with django_assert_num_queries(0):
            for message in loaded:
                render_to_string(
                    "conversations/_media.html", {"m": message, "v": message_view(message)}
                )


def test_a_member_of_another_tenant_cannot_open_the_media_url(acme, bravo):
    conversation = make_conversation(acme)
    message = inbound(acme, conversation, "image")
    image = media(acme, message, content_type="image/png", size=10, safe_name="a.png")
    bob = Client()
    bob.force_login(bravo.owner)
    assert bob.get(f"/media/{image.pk}/").status_code == 404
    with unscoped("test witness"):
        assert MediaObject.objects.filter(pk=image.pk).exists()


# --- The thread page ------------------------------------------------------------------------


def test_the_thread_page_shows_media_and_the_attach_form_while_the_window_is_open(acme):
    conversation = make_conversation(acme)
    message = inbound(acme, conversation, "image")
    image = media(
        acme,
        message,
        content_type="image/png",
        size=10,
        safe_name="a.png",
        storage_key=f"{acme.tenant.pk}/KEYTOKEN/a.png",
    )
    html = alice(acme).get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert f'<img class="media-image" src="/media/{image.pk}/"' in html
    assert "KEYTOKEN" not in html
    assert 'id="attach-form"' in html and 'enctype="multipart/form-data"' in html
    assert f'hx-post="/inbox/c/{conversation.pk}/attach/"' in html


def test_no_attach_form_once_the_window_has_closed(acme):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=30))
    html = alice(acme).get(f"/inbox/c/{conversation.pk}/").content.decode()
    assert 'id="attach-form"' not in html


def test_the_thread_and_its_poll_load_media_with_a_fixed_number_of_queries(acme):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    conversation = make_conversation(acme)
    client = alice(acme)

    def add_media_messages(count: int) -> None:
        for _ in range(count):
            message = inbound(acme, conversation, "image")
            media(acme, message, content_type="image/png", size=10, safe_name="a.png")

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    add_media_messages(2)
    with tenant_scope(acme.tenant):
        first = Message.objects.order_by("sent_at", "id").first()
    page_url = f"/inbox/c/{conversation.pk}/"
    poll_url = f"/inbox/c/{conversation.pk}/messages/?after={first.pk}&since={first.pk}"
    few_page, few_poll = count(page_url), count(poll_url)
    add_media_messages(6)
    assert count(page_url) == few_page
    assert count(poll_url) == few_poll
