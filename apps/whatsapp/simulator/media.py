"""Media storage: the objects uploaded with ``POST /{phone_number_id}/media`` or sent by a
simulated customer, the types and sizes Meta accepts, and the signed, expiring download links
(like Meta's ``lookaside`` URLs) that the Graph endpoints hand out and check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from .state import SimulatorState, random_digits

# Where media is downloaded from (under the simulator's root, like Meta's own host).
DOWNLOAD_PATH = "/whatsapp_business/attachments/"

# Reference §9.5: accepted upload types and their size limits.
MEDIA_LIMITS: dict[str, int] = {
    **dict.fromkeys(
        ["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"], 16 * 1024 * 1024
    ),
    **dict.fromkeys(
        [
            "text/plain",
            "application/pdf",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.ms-excel",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.ms-powerpoint",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ],
        100 * 1024 * 1024,
    ),
    **dict.fromkeys(["image/jpeg", "image/png"], 5 * 1024 * 1024),
    "image/webp": 500 * 1024,
    **dict.fromkeys(["video/mp4", "video/3gpp"], 16 * 1024 * 1024),
}


@dataclass
class StoredMedia:
    """One media object: uploaded by Klaros or sent by a customer."""

    media_id: str
    data: bytes
    mime_type: str
    filename: str | None
    phone_number_id: str
    created: float
    deleted: bool = False

    @property
    def sha256_hex(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(hashlib.sha256(self.data).digest()).decode("ascii")


class MediaStore(SimulatorState):
    """Stores media per number and signs its download links."""

    _media: dict[str, StoredMedia]
    _url_key: bytes

    def put_media(
        self,
        phone_number_id: str,
        data: bytes,
        mime_type: str,
        filename: str | None = None,
    ) -> str:
        """Store media owned by a number (as if a customer sent it); returns the media id."""
        media = StoredMedia(
            random_digits(16), data, mime_type, filename, phone_number_id, time.time()
        )
        with self._lock:
            self._media[media.media_id] = media
        return media.media_id

    def media_download_url(self, media_id: str) -> str:
        """A fresh, signed, expiring download URL like Meta's ``lookaside`` links."""
        expires = int(time.time() + self._config.media_url_ttl)
        query = urlencode(
            {"mid": media_id, "ext": expires, "hash": self._url_hash(media_id, expires)}
        )
        return f"{self.url}{DOWNLOAD_PATH}?{query}"

    def _url_hash(self, media_id: str, expires: int) -> str:
        mac = hmac.new(self._url_key, f"{media_id}:{expires}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]
