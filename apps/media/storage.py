"""Private storage of media bytes: keys, safe names and the configured backend.

Keys are `<tenant id>/<random token>/<safe name>`: the token (192 random bits) makes keys
unguessable and unique, the tenant prefix keeps each tenant's objects apart in the bucket, and
the safe name is for humans only (it never decides where a file lands).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import unicodedata
import uuid
from urllib.parse import unquote

from django.core.files.storage import Storage, storages

__all__ = [
    "MAX_SAFE_NAME",
    "clean_original_filename",
    "delete_stored_bytes",
    "is_s3_storage",
    "media_storage",
    "new_storage_key",
    "safe_filename",
]

logger = logging.getLogger("klaros.media")

MAX_SAFE_NAME = 100
TOKEN_BYTES = 24  # 192 bits; the security plan asks for at least 128
_UNSAFE_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f-\x9f;,%]')
_DOTS_AND_SPACES = re.compile(r"^[.\s]+|[.\s]+$")
_RUNS = re.compile(r"[\s_]{2,}")


def media_storage() -> Storage:
    """The private storage backend (`STORAGES["media"]`)."""
    return storages["media"]


def is_s3_storage(storage: Storage) -> bool:
    """True for django-storages' S3 backend (presigned URLs), False for the filesystem."""
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages not installed: filesystem only
        return False
    return isinstance(storage, S3Storage)


def new_storage_key(tenant_id: uuid.UUID | str, safe_name: str) -> str:
    """A fresh key `<tenant>/<token>/<name>`; `safe_name` must come from `safe_filename`."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return f"{uuid.UUID(str(tenant_id))}/{token}/{safe_name}"


def clean_original_filename(name: str | None) -> str:
    """The uploader's name with control characters removed (PostgreSQL refuses NUL in text),
    kept for display only."""
    text = unicodedata.normalize("NFC", str(name or ""))
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")[:255]


def safe_filename(name: str | None, extension: str, *, fallback: str = "file") -> str:
    """A download name that cannot escape a folder or confuse a browser.

    Percent-escapes are decoded first (so `%2e%2e%2f` is seen as `../`), only the last path
    component survives, control characters and reserved punctuation go, Unicode is NFC, and the
    extension is replaced by `extension` (the sniffed type's), so the name never claims a type the
    bytes are not. At most MAX_SAFE_NAME characters.
    """
    text = unicodedata.normalize("NFC", str(name or ""))
    for _ in range(3):  # double-encoded names decode to the same thing
        decoded = unquote(text)
        if decoded == text:
            break
        text = unicodedata.normalize("NFC", decoded)
    text = text.replace("\\", "/").split("/")[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = _UNSAFE_CHARS.sub("_", text)
    stem, _ext = os.path.splitext(_DOTS_AND_SPACES.sub("", text))
    stem = _DOTS_AND_SPACES.sub("", _RUNS.sub("_", stem.replace("..", "_")))
    if not stem:
        stem = fallback
    extension = extension if extension.startswith(".") else f".{extension}"
    stem = stem[: MAX_SAFE_NAME - len(extension)].rstrip(". ") or fallback
    return f"{stem}{extension}"


def delete_stored_bytes(storage_key: str) -> None:
    """Remove stored bytes (and, on the filesystem, the now-empty token folder). Never raises:
    the row is already gone, so an orphaned object is logged for the operator instead."""
    if not storage_key:
        return
    storage = media_storage()
    try:
        storage.delete(storage_key)
    except Exception:
        logger.exception("could not delete stored media %s", storage_key)
        return
    if not is_s3_storage(storage):
        with contextlib.suppress(OSError, NotImplementedError):  # not empty, gone, or no path
            os.rmdir(os.path.dirname(storage.path(storage_key)))
