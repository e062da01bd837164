"""The "send by link" mode: Meta fetches an absolute, signed link once, without a session."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.media import services, signing
from apps.tenants.scoping import tenant_scope

from .conftest import JPEG


@pytest.fixture
def photo(acme):
    with tenant_scope(acme.tenant):
        return services.store_outbound_upload(
            tenant=acme.tenant,
            number=acme.number,
            uploaded_file=SimpleUploadedFile("photo.jpg", JPEG, content_type="image/jpeg"),
            actor=acme.owner,
        )


def _path(url: str, settings) -> str:
    assert url.startswith(settings.KLAROS_PUBLIC_URL + "/media/meta/")
    return url[len(settings.KLAROS_PUBLIC_URL) :]


def test_meta_can_fetch_the_link_exactly_once(media_backend, photo, acme, settings):
    settings.KLAROS_PUBLIC_URL = "https://klaros.example"
    with tenant_scope(acme.tenant):
        url = services.public_fetch_url_for_meta(photo)
    meta = Client()  # no session

    assert meta.head(_path(url, settings)).status_code == 200  # HEAD does not spend it
    first = meta.get(_path(url, settings))
    assert first.status_code == 200
    assert b"".join(first.streaming_content) == JPEG
    assert first["Content-Type"] == "image/jpeg"
    assert first["X-Content-Type-Options"] == "nosniff"
    assert meta.get(_path(url, settings)).status_code == 403


def test_a_new_link_supersedes_the_old_and_tampering_or_expiry_is_refused(
    filesystem_backend, photo, acme, settings, monkeypatch
):
    with tenant_scope(acme.tenant):
        old = services.public_fetch_url_for_meta(photo)
        new = services.public_fetch_url_for_meta(photo)
    meta = Client()
    assert meta.get(_path(old, settings)).status_code == 403

    token = _path(new, settings).rstrip("/").rsplit("/", 1)[1]
    assert meta.get(f"/media/meta/{token[:-2]}zz/").status_code == 403
    # A viewer token is no Meta token (different salt), and the other way round.
    assert meta.get(f"/media/f/{token}/").status_code == 403
    real_time = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real_time() + 301)
    assert meta.get(_path(new, settings)).status_code == 403
    monkeypatch.setattr(signing.time, "time", real_time)
    assert meta.get(_path(new, settings)).status_code == 200
