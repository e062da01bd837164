"""Storage keys are random and tenant-prefixed; download names cannot escape or lie."""

from __future__ import annotations

import uuid

import pytest

from apps.media.storage import MAX_SAFE_NAME, new_storage_key, safe_filename


def test_it_makes_keys_of_tenant_random_token_and_name():
    tenant = uuid.uuid4()
    key = new_storage_key(tenant, "photo.jpg")
    prefix, token, name = key.split("/")
    assert prefix == str(tenant)
    assert name == "photo.jpg"
    assert len(token) >= 22  # token_urlsafe: 4 chars per 3 bytes; 22 chars >= 128 bits


def test_it_never_repeats_a_key_or_token_across_1000_uploads_and_two_tenants():
    tenants = [uuid.uuid4(), uuid.uuid4()]
    keys = [new_storage_key(tenants[i % 2], "a.jpg") for i in range(1000)]
    tokens = [k.split("/")[1] for k in keys]
    assert len(set(keys)) == 1000
    assert len(set(tokens)) == 1000
    # 24 random bytes each: 192 bits, and no shared prefix that would hint at a sequence.
    assert all(len(t) == 32 for t in tokens)
    assert len({t[:4] for t in tokens}) > 900


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd.pdf"),
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "passwd.pdf"),
        ("%252e%252e%252fsecret.pdf", "secret.pdf"),
        ("/etc/shadow", "shadow.pdf"),
        ("C:\\Windows\\system32\\evil.exe", "evil.pdf"),
        ("invoice\x00.html", "invoice.pdf"),
        ("re\u0301sume\u0301.pdf", "r\u00e9sum\u00e9.pdf"),  # NFC
        ("..", "file.pdf"),
        ("", "file.pdf"),
        ("   .hidden", "hidden.pdf"),
        ('bad<>:"|?*name.pdf', "bad_name.pdf"),
        ("line\nbreak\r.pdf", "linebreak.pdf"),
        ("report.final.PDF", "report.final.pdf"),
    ],
)
def test_it_sanitises_download_names(name, expected):
    assert safe_filename(name, ".pdf") == expected


def test_it_caps_names_at_100_characters_and_keeps_the_extension():
    name = safe_filename("x" * 500 + ".jpg", ".jpg")
    assert len(name) <= MAX_SAFE_NAME
    assert name.endswith(".jpg")


def test_it_replaces_a_lying_extension_with_the_sniffed_one():
    assert safe_filename("photo.jpg", ".html") == "photo.html"
    assert safe_filename("payload.html", ".jpg") == "payload.jpg"
