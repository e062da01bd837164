"""Outbound attachments are judged by their bytes: WhatsApp's types and limits, no active
content, no name or declared type that lies. Both backends."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.audit.models import AuditEvent
from apps.media import services
from apps.media.models import MediaObject
from apps.media.services import MediaRejected
from apps.tenants.scoping import tenant_scope

from .conftest import HTML, JPEG, JS, M4A, MP4, OGG, PDF, PNG, SVG, TEXT, WEBP, office_zip

KEY_SHAPE = re.compile(r"^[0-9a-f-]{36}/[A-Za-z0-9_-]{32}/[^/]+$")


def upload(world, data, name, content_type="application/octet-stream"):
    with tenant_scope(world.tenant):
        return services.store_outbound_upload(
            tenant=world.tenant,
            number=world.number,
            uploaded_file=SimpleUploadedFile(name, data, content_type=content_type),
            actor=world.owner,
        )


@pytest.mark.parametrize(
    ("data", "name", "content_type", "kind", "stored_type"),
    [
        (JPEG, "photo.jpg", "image/jpeg", "image", "image/jpeg"),
        (PNG, "shot.png", "image/png", "image", "image/png"),
        (WEBP, "sticker.webp", "image/webp", "sticker", "image/webp"),
        (MP4, "clip.mp4", "video/mp4", "video", "video/mp4"),
        (OGG, "voice.ogg", "audio/ogg", "audio", "audio/ogg"),
        (M4A, "song.m4a", "audio/x-m4a", "audio", "audio/mp4"),
        (PDF, "invoice.pdf", "application/pdf", "document", "application/pdf"),
        (TEXT, "notes.txt", "text/plain", "document", "text/plain"),
        (office_zip("word"), "letter.docx", "", "document", services.sniffing.DOCX),
    ],
)
def test_it_stores_allowed_uploads_privately_as_the_right_kind(
    media_backend, acme, data, name, content_type, kind, stored_type
):
    media_object = upload(acme, data, name, content_type)

    assert media_object.kind == kind
    assert media_object.content_type == stored_type
    assert media_object.direction == "out" and media_object.state == "stored"
    assert KEY_SHAPE.match(media_object.storage_key)
    assert media_object.sha256 == hashlib.sha256(data).hexdigest()
    assert media_backend.read(media_object.storage_key) == data
    with tenant_scope(acme.tenant):
        event = AuditEvent.objects.get(action="media.uploaded")
    assert event.object_id == str(media_object.pk)


@pytest.mark.parametrize(
    ("data", "name", "content_type", "message"),
    [
        (HTML, "photo.jpg", "image/jpeg", "web page"),
        (SVG, "logo.png", "image/png", "SVG"),
        (SVG, "logo.svg", "image/svg+xml", "SVG"),
        (JS, "readme.txt", "text/plain", "JavaScript"),
        (b"GIF89a" + b"\x00" * 40, "fun.gif", "image/gif", "cannot send"),
        (b"MZ\x90\x00" + b"\x00" * 60, "setup.exe", "application/octet-stream", "cannot send"),
        (PDF, "photo.jpg", "application/pdf", "claims to be a JPEG image"),
        (PNG, "photo.png", "image/jpeg", "claims to be a JPEG image"),
        (b"", "empty.pdf", "application/pdf", "empty"),
    ],
)
def test_it_refuses_active_unsupported_and_mismatched_files_with_a_clear_message(
    filesystem_backend, acme, data, name, content_type, message
):
    with pytest.raises(MediaRejected) as refused:
        upload(acme, data, name, content_type)

    assert message in refused.value.message
    with tenant_scope(acme.tenant):
        assert MediaObject.objects.count() == 0
    assert not filesystem_backend.root.exists() or not any(
        p.is_file() for p in filesystem_backend.root.rglob("*")
    )


@pytest.mark.parametrize(
    ("data", "name", "limit_text"),
    [
        (JPEG + b"\x00" * (5 * 1024 * 1024), "big.jpg", "5120 KB"),
        (WEBP + b"\x00" * (100 * 1024), "big.webp", "100 KB"),
        (MP4 + b"\x00" * (16 * 1024 * 1024), "big.mp4", "16384 KB"),
    ],
)
def test_it_refuses_files_above_whatsapps_limit_for_their_kind(
    filesystem_backend, acme, data, name, limit_text
):
    with pytest.raises(MediaRejected) as refused:
        upload(acme, data, name)
    assert limit_text in refused.value.message


def test_it_refuses_anything_above_100_mb_before_reading_it(filesystem_backend, acme):
    class Huge(SimpleUploadedFile):
        def chunks(self, chunk_size=None):
            raise AssertionError("read a file it should have refused by size")

    huge = Huge("huge.pdf", PDF, content_type="application/pdf")
    huge.size = 101 * 1024 * 1024
    with tenant_scope(acme.tenant), pytest.raises(MediaRejected, match="100 MB"):
        services.store_outbound_upload(
            tenant=acme.tenant, number=acme.number, uploaded_file=huge, actor=acme.owner
        )


def test_it_names_the_stored_file_by_its_sniffed_type(filesystem_backend, acme):
    media_object = upload(acme, PDF, "../../../etc/passwd", "application/octet-stream")
    assert media_object.safe_name == "passwd.pdf"
    assert media_object.original_filename == "passwd"  # Django's upload handling drops folders


def test_it_refuses_another_tenants_number(filesystem_backend, acme, bravo):
    with tenant_scope(acme.tenant), pytest.raises(ValueError):
        services.store_outbound_upload(
            tenant=acme.tenant,
            number=bravo.number,
            uploaded_file=SimpleUploadedFile("a.jpg", JPEG, content_type="image/jpeg"),
            actor=acme.owner,
        )
