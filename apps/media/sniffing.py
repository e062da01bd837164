"""What a file really is, from its bytes: the types WhatsApp carries, and active content.

Names and claimed MIME types are chosen by whoever sends the file, so nothing here looks at them.
The sniffer recognises exactly the formats WhatsApp accepts (reference §9.5) plus the formats an
attacker would smuggle in under an innocent name: HTML, SVG, XML and JavaScript ("active"
content a browser would execute from our origin). Anything else is `application/octet-stream`.

No dependency: libmagic is not on every host, and these signatures are few and stable.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

__all__ = ["ACTIVE_TYPES", "EXTENSIONS", "SniffResult", "sniff"]

OCTET_STREAM = "application/octet-stream"

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

# Types a browser may execute or render as a document with script: never inline, never uploaded.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/xml",
        "text/javascript",
    }
)

# The extension a stored file gets for its sniffed type (so the name never lies about the bytes).
EXTENSIONS: dict[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/aac": ".aac",
    "audio/mp4": ".m4a",
    "audio/amr": ".amr",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt",
    DOCX: ".docx",
    XLSX: ".xlsx",
    PPTX: ".pptx",
    "application/zip": ".zip",
    "text/html": ".html",
    "application/xhtml+xml": ".xhtml",
    "image/svg+xml": ".svg",
    "application/xml": ".xml",
    "text/javascript": ".js",
    OCTET_STREAM: ".bin",
}


@dataclass(frozen=True)
class SniffResult:
    """The sniffed MIME type; `active` when a browser could run script from it."""

    mime_type: str
    animated: bool = False  # animated WebP (stickers have a larger limit)

    @property
    def active(self) -> bool:
        return self.mime_type in ACTIVE_TYPES

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.mime_type, ".bin")


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_STREAMS = (
    ("WordDocument", "application/msword"),
    ("PowerPoint Document", "application/vnd.ms-powerpoint"),
    ("Workbook", "application/vnd.ms-excel"),
    ("Book", "application/vnd.ms-excel"),
)
# Markup that makes a text file a document a browser would run (checked case-insensitively in
# the first few KB, anywhere: browsers sniff HTML well past leading text).
_HTML_MARKERS = re.compile(
    rb"<\s*(?:!doctype\s+html|html|head|body|script|iframe|frame|frameset|object|embed|"
    rb"meta|link|style|img|a\s|svg|form|input|base|math|template)[\s>/]",
    re.I,
)
_SVG_MARKER = re.compile(rb"<\s*svg[\s>/]", re.I)
_SVG_START = re.compile(rb"<\s*(?:svg[\s>/]|!doctype\s+svg)", re.I)
_XML_DECL = re.compile(rb"^<\?xml[\s?]", re.I)
_JS_MARKERS = (
    re.compile(rb"\bfunction\s*\w*\s*\("),
    re.compile(rb"=>\s*[{(]"),
    re.compile(rb"\b(?:var|let|const)\s+[A-Za-z_$][\w$]*\s*="),
    re.compile(rb"\b(?:document|window|globalThis|navigator)\s*\.\s*[A-Za-z_]"),
    re.compile(rb"\b(?:eval|alert|fetch|require|setTimeout|atob)\s*\("),
    re.compile(rb"^\s*(?:import|export)\s+[\w{*]", re.M),
    re.compile(rb"\.(?:innerHTML|cookie|location)\b"),
)
_TEXT_HEAD = 64 * 1024


def sniff(data: bytes) -> SniffResult:
    """Identify `data` by its leading bytes (and, for containers, a look inside)."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return SniffResult("image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return SniffResult("image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return SniffResult("image/gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return SniffResult("image/webp", animated=_webp_animated(data))
    if head[4:8] == b"ftyp":
        return SniffResult(_iso_media_type(head[8:12]))
    if head.startswith(b"OggS"):
        return SniffResult("audio/ogg")
    if head.startswith(b"#!AMR\n"):
        return SniffResult("audio/amr")
    if head.startswith(b"%PDF-"):
        return SniffResult("application/pdf")
    if head.startswith(b"PK\x03\x04"):
        return SniffResult(_office_zip_type(data))
    if head.startswith(_OLE_MAGIC):
        return SniffResult(_ole_type(data))
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 text BOM, not an audio frame
        return SniffResult(_text_type(data))
    if head.startswith(b"ID3"):
        return SniffResult("audio/mpeg")
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS sync word, layer bits 00
            return SniffResult("audio/aac")
        if head[1] & 0xE0 == 0xE0 and (head[1] >> 1) & 0x03:  # MPEG audio frame sync
            return SniffResult("audio/mpeg")
    return SniffResult(_text_type(data))


def _webp_animated(data: bytes) -> bool:
    # Extended format: a VP8X chunk right after the header whose flags carry the animation bit.
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


def _iso_media_type(brand: bytes) -> str:
    if brand.startswith((b"3gp", b"3g2")):
        return "video/3gpp"
    if brand in (b"M4A ", b"M4B ", b"M4P "):
        return "audio/mp4"
    return "video/mp4"


def _office_zip_type(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return OCTET_STREAM
    if "[Content_Types].xml" in names:
        if any(n.startswith("word/") for n in names):
            return DOCX
        if any(n.startswith("xl/") for n in names):
            return XLSX
        if any(n.startswith("ppt/") for n in names):
            return PPTX
    return "application/zip"


def _ole_type(data: bytes) -> str:
    # Stream names live in the compound file's directory as UTF-16LE; finding them beats parsing
    # the FAT chain and is just as reliable for telling Word, Excel and PowerPoint apart.
    for name, mime in _OLE_STREAMS:
        if name.encode("utf-16-le") in data:
            return mime
    return OCTET_STREAM


def _text_type(data: bytes) -> str:
    head = data[:_TEXT_HEAD]
    text = _decode_text(head)
    if text is None:
        return OCTET_STREAM
    probe = text.lstrip(b" \t\r\n\f")
    if _XML_DECL.match(probe) or probe.startswith(b"<!--"):
        if _SVG_MARKER.search(probe[:8192]):
            return "image/svg+xml"
        if re.search(rb"<\s*html[\s>/]", probe[:8192], re.I):
            return "application/xhtml+xml"
        return "application/xml"
    if _SVG_START.match(probe):
        return "image/svg+xml"
    if _HTML_MARKERS.search(probe[:8192]):
        return "text/html"
    if sum(1 for marker in _JS_MARKERS if marker.search(probe)) >= 2:
        return "text/javascript"
    return "text/plain"


def _decode_text(head: bytes) -> bytes | None:
    """UTF-8 (or UTF-16 with a BOM) text without binary control characters, normalised to
    UTF-8 bytes for the markup checks; None when it is not text."""
    if not head:
        return None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            decoded = head[: len(head) - len(head) % 2].decode("utf-16")
        except UnicodeDecodeError:
            return None
    else:
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut by the 64 KB window is still text.
            if exc.start < len(body) - 3:
                return None
            decoded = body[: exc.start].decode("utf-8")
    if any(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in decoded):
        return None
    return decoded.encode("utf-8")
