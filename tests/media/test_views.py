"""Viewing media: a scoped view redirects members of the right tenant to a short-lived signed
link; the link works for them only, and the bytes come with safe headers. Both backends."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.media import services, signing
from apps.media.models import MediaObject
from apps.tenants.scoping import tenant_scope

from .conftest import HTML, JPEG, MP4, OGG, PDF, PNG, SVG


def store(world, data, name, *, kind=None, content_type="application/octet-stream"):
    """A stored media object with these bytes (outbound path for allowed types, inbound-like
    rows for active content, which uploads refuse)."""
    with tenant_scope(world.tenant):
        if kind is None:
            upload = SimpleUploadedFile(name, data, content_type=content_type)
            return services.store_outbound_upload(
                tenant=world.tenant, number=world.number, uploaded_file=upload, actor="test"
            )
        from apps.media import sniffing
        from apps.media.storage import safe_filename

        sniffed = sniffing.sniff(data)
        safe = safe_filename(name, sniffed.extension)
        key = services._save_bytes(world.tenant.pk, safe, data)
        return MediaObject.objects.create(
            tenant=world.tenant,
            number=world.number,
            direction="in",
            kind=kind,
            state="stored",
            storage_key=key,
            safe_name=safe,
            content_type=sniffed.mime_type,
            size=len(data),
        )


def fetch(client: Client, url: str, backend):
    """Follow a signed URL: S3 over real HTTP, the filesystem view through the test client."""
    if url.startswith("http"):
        return requests.get(url, timeout=10)
    return client.get(url)


def body_of(response) -> bytes:
    if isinstance(response, requests.Response):
        return response.content
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_member_is_redirected_to_a_signed_url_that_works(media_backend, acme, alice_client):
    media_object = store(acme, JPEG, "photo.jpg", content_type="image/jpeg")

    response = alice_client.get(f"/media/{media_object.pk}/")

    assert response.status_code == 302
    url = response["Location"]
    if media_backend.name == "s3":
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    else:
        assert url.startswith("/media/f/")
    served = fetch(alice_client, url, media_backend)
    assert served.status_code == 200
    assert body_of(served) == JPEG
    assert served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["Content-Disposition"].startswith("inline")


def test_another_tenants_member_gets_404_and_anonymous_gets_the_login_page(
    media_backend, acme, bob_client
):
    media_object = store(acme, JPEG, "photo.jpg", content_type="image/jpeg")

    assert bob_client.get(f"/media/{media_object.pk}/").status_code == 404
    assert bob_client.get("/media/00000000-0000-0000-0000-000000000000/").status_code == 404
    anonymous = Client().get(f"/media/{media_object.pk}/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("data", "name", "kind", "served_type", "disposition"),
    [
        (JPEG, "a.jpg", None, "image/jpeg", "inline"),
        (PNG, "a.png", None, "image/png", "inline"),
        (MP4, "a.mp4", None, "video/mp4", "inline"),
        (OGG, "a.ogg", None, "audio/ogg", "inline"),
        (PDF, "a.pdf", None, "application/pdf", "attachment"),
        (HTML, "a.html", "document", "application/octet-stream", "attachment"),
        (SVG, "a.svg", "document", "application/octet-stream", "attachment"),
    ],
)
def test_served_media_carries_the_stored_type_and_a_safe_disposition(
    media_backend, acme, alice_client, data, name, kind, served_type, disposition
):
    media_object = store(acme, data, name, kind=kind)

    url = alice_client.get(f"/media/{media_object.pk}/")["Location"]
    served = fetch(alice_client, url, media_backend)

    assert served.status_code == 200
    assert served.headers["Content-Type"] == served_type
    assert served.headers["Content-Disposition"].startswith(disposition)
    assert media_object.safe_name in served.headers["Content-Disposition"]
    if media_backend.name == "filesystem":
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        assert served.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
        assert served.headers["Cache-Control"] == "private, max-age=60"
        assert served.headers["Referrer-Policy"] == "no-referrer"


def test_download_asks_for_an_attachment_even_for_images(media_backend, acme, alice_client):
    media_object = store(acme, JPEG, "photo.jpg", content_type="image/jpeg")
    url = alice_client.get(f"/media/{media_object.pk}/?download=1")["Location"]
    served = fetch(alice_client, url, media_backend)
    assert served.headers["Content-Disposition"].startswith("attachment")


# --- S3: the bucket is private and only valid signatures open it ----------------------------


@pytest.mark.s3
def test_s3_refuses_unsigned_reads_listings_tampering_and_expired_links(
    s3_backend, acme, alice_client, settings
):
    media_object = store(acme, JPEG, "photo.jpg", content_type="image/jpeg")
    endpoint, bucket = s3_backend.s3.endpoint, s3_backend.s3.bucket
    object_url = f"{endpoint}/{bucket}/{media_object.storage_key}"

    assert requests.get(object_url, timeout=10).status_code == 403
    assert requests.get(f"{endpoint}/{bucket}", timeout=10).status_code == 403
    assert requests.get(f"{endpoint}/{bucket}?list-type=2", timeout=10).status_code == 403
    assert requests.get(f"{endpoint}/", timeout=10).status_code == 403

    url = alice_client.get(f"/media/{media_object.pk}/")["Location"]
    assert requests.get(url, timeout=10).status_code == 200
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert requests.get(url.replace(signature, flipped), timeout=10).status_code == 403
    other_key = url.replace(media_object.storage_key.split("/")[1], "A" * 32)
    assert requests.get(other_key, timeout=10).status_code == 403
    as_inline = url.replace("inline", "attachment")
    assert requests.get(as_inline, timeout=10).status_code == 403

    settings.KLAROS_MEDIA_URL_TTL = 1
    with tenant_scope(acme.tenant):
        short = services.signed_url(media_object, disposition="inline")
    time.sleep(2.1)
    assert requests.get(short, timeout=10).status_code == 403
    # D2: the media is still reachable through a fresh link.
    settings.KLAROS_MEDIA_URL_TTL = 300
    fresh = alice_client.get(f"/media/{media_object.pk}/")["Location"]
    assert requests.get(fresh, timeout=10).content == JPEG


# --- Filesystem: signed, expiring, member-bound links ----------------------------------------


def _token_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def test_filesystem_links_refuse_tampering_expiry_and_other_sessions(
    filesystem_backend, acme, bravo, carol, alice_client, bob_client, monkeypatch
):
    media_object = store(acme, JPEG, "photo.jpg", content_type="image/jpeg")
    url = alice_client.get(f"/media/{media_object.pk}/")["Location"]
    token = _token_of(url)
    assert alice_client.get(url).status_code == 200

    # Tampered token (any character) and forged payloads signed with the wrong key.
    assert alice_client.get(url.replace(token, token[:-2] + "xx")).status_code == 403
    claims = signing.read_view_token(token)
    forged = signing._dumps(
        {"m": claims.media_id, "t": claims.tenant_id, "k": claims.storage_key,
         "d": "inline", "e": claims.expires_at + 3600, "u": claims.user_id},
        "wrong-salt",
    )  # fmt: skip
    assert alice_client.get(f"/media/f/{forged}/").status_code == 403
    # The same link in another tenant's session, anonymous, or another member of the tenant.
    assert bob_client.get(url).status_code == 403
    assert Client().get(url).status_code == 403
    carol_client = Client()
    carol_client.force_login(carol)
    assert carol_client.get(url).status_code == 403
    # Expired: the clock moves past the TTL.
    real_time = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real_time() + 301)
    assert alice_client.get(url).status_code == 403
    monkeypatch.setattr(signing.time, "time", real_time)
    assert alice_client.get(url).status_code == 200


def test_a_filesystem_token_for_another_tenants_media_is_refused(
    filesystem_backend, acme, bravo, alice_client, bob_client
):
    theirs = store(bravo, JPEG, "bravo.jpg", content_type="image/jpeg")
    bob_url = bob_client.get(f"/media/{theirs.pk}/")["Location"]
    assert alice_client.get(bob_url).status_code == 403

    # Even a validly signed token naming Bravo's media but Alice as user and Acme as tenant.
    alice = acme.owner
    forged = signing._dumps(
        {"m": str(theirs.pk), "t": str(acme.tenant.pk), "k": theirs.storage_key, "d": "inline",
         "e": int(time.time()) + 60, "u": str(alice.pk)},
        signing.VIEW_SALT,
    )  # fmt: skip
    assert alice_client.get(f"/media/f/{forged}/").status_code == 403


def test_an_upload_named_with_traversal_is_stored_inside_the_media_root(
    filesystem_backend, acme, alice_client
):
    for name in ("../../etc/passwd.pdf", "%2e%2e%2fescape.pdf", "/tmp/abs.pdf", "nul\x00.pdf"):
        media_object = store(acme, PDF, name, content_type="application/pdf")
        path = (filesystem_backend.root / media_object.storage_key).resolve()
        assert path.is_relative_to(filesystem_backend.root.resolve())
        assert "/" not in media_object.safe_name and "\x00" not in media_object.safe_name
        url = alice_client.get(f"/media/{media_object.pk}/")["Location"]
        served = alice_client.get(url)
        assert b"".join(served.streaming_content) == PDF
    files = [p for p in filesystem_backend.root.rglob("*") if p.is_file()]
    assert len(files) == 4
