"""The sniffer names files by their bytes: WhatsApp's types, and active content in disguise."""

from __future__ import annotations

import pytest

from apps.media import sniffing

from .conftest import (
    AAC,
    AMR,
    HTML,
    JPEG,
    JS,
    M4A,
    MP3_FRAME,
    MP3_ID3,
    MP4,
    OGG,
    PDF,
    PNG,
    SVG,
    TEXT,
    THREE_GP,
    WEBP,
    WEBP_ANIMATED,
    office_zip,
    ole,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (JPEG, "image/jpeg"),
        (PNG, "image/png"),
        (b"GIF89a" + b"\x00" * 20, "image/gif"),
        (WEBP, "image/webp"),
        (MP4, "video/mp4"),
        (THREE_GP, "video/3gpp"),
        (M4A, "audio/mp4"),
        (OGG, "audio/ogg"),
        (MP3_ID3, "audio/mpeg"),
        (MP3_FRAME, "audio/mpeg"),
        (AAC, "audio/aac"),
        (AMR, "audio/amr"),
        (PDF, "application/pdf"),
        (TEXT, "text/plain"),
        (office_zip("word"), sniffing.DOCX),
        (office_zip("xl"), sniffing.XLSX),
        (office_zip("ppt"), sniffing.PPTX),
        (ole("WordDocument"), "application/msword"),
        (ole("Workbook"), "application/vnd.ms-excel"),
        (ole("PowerPoint Document"), "application/vnd.ms-powerpoint"),
    ],
)
def test_it_recognises_whatsapp_types_by_their_bytes(data, expected):
    result = sniffing.sniff(data)
    assert result.mime_type == expected
    assert not result.active


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HTML, "text/html"),
        (b"  \n<html><p>hi</p></html>", "text/html"),
        (b"Dear customer,\n<script src=//evil.example/x.js></script>", "text/html"),
        (b"\xef\xbb\xbf<!doctype html><title>x</title>", "text/html"),
        ("<html>".encode("utf-16"), "text/html"),
        (SVG, "image/svg+xml"),
        (b"<svg onload=alert(1)>", "image/svg+xml"),
        (
            b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"/>',
            "application/xhtml+xml",
        ),
        (b'<?xml version="1.0"?><note>hi</note>', "application/xml"),
        (JS, "text/javascript"),
    ],
)
def test_it_flags_active_content_whatever_the_name(data, expected):
    result = sniffing.sniff(data)
    assert result.mime_type == expected
    assert result.active


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 50,
        b"\x7fELF\x02\x01",
        b"\x00\x01\x02binary",
        b"PK\x03\x04broken zip",
    ],
)
def test_it_calls_unknown_binary_octet_stream(data):
    assert sniffing.sniff(data).mime_type == "application/octet-stream"


def test_it_knows_a_plain_zip_is_not_an_office_document():
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert sniffing.sniff(buffer.getvalue()).mime_type == "application/zip"


def test_it_detects_animated_webp():
    assert sniffing.sniff(WEBP_ANIMATED).animated
    assert not sniffing.sniff(WEBP).animated


def test_it_keeps_plain_text_that_only_mentions_code_as_text():
    text = b"Hi! Can you call me back? The function of the device is unclear.\n"
    assert sniffing.sniff(text).mime_type == "text/plain"


def test_it_tolerates_a_multibyte_character_cut_by_the_window():
    data = "é".encode() * (40 * 1024)  # 80 KB: the 64 KB window splits a character
    assert sniffing.sniff(data).mime_type == "text/plain"
