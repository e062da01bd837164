"""Signed, expiring tokens for the filesystem backend's media links.

Two kinds, with different salts so one can never stand in for the other:

* viewer tokens (`/media/f/<token>/`): bind the media id, tenant id, storage key, disposition,
  expiry and the member they were minted for. The serving view also requires the session of that
  member, acting in that tenant: a copied link is useless in anyone else's browser.
* Meta fetch tokens (`/media/meta/<token>/`): bind media id, tenant id, storage key, expiry and
  a nonce stored on the row; no session (Meta has none), so they are one-use instead.

Tokens are signed with SECRET_KEY (django.core.signing, HMAC-SHA256), not encrypted: the payload
names nothing the link does not already grant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.core import signing

VIEW_SALT = "klaros.media.view"
META_FETCH_SALT = "klaros.media.meta-fetch"
DISPOSITIONS = ("inline", "attachment")


class InvalidMediaToken(Exception):
    """The token is malformed, tampered with or expired."""


@dataclass(frozen=True)
class MediaToken:
    media_id: str
    tenant_id: str
    storage_key: str
    disposition: str
    expires_at: int
    user_id: str = ""
    nonce: str = ""


def _dumps(payload: dict[str, Any], salt: str) -> str:
    return signing.dumps(payload, salt=salt, compress=False)


def _loads(token: str, salt: str, *, now: float | None = None) -> MediaToken:
    try:
        data = signing.loads(token, salt=salt)
    except signing.BadSignature as exc:
        raise InvalidMediaToken("bad signature") from exc
    if not isinstance(data, dict):
        raise InvalidMediaToken("bad payload")
    try:
        parsed = MediaToken(
            media_id=str(data["m"]),
            tenant_id=str(data["t"]),
            storage_key=str(data["k"]),
            disposition=str(data.get("d", "attachment")),
            expires_at=int(data["e"]),
            user_id=str(data.get("u", "")),
            nonce=str(data.get("n", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidMediaToken("bad payload") from exc
    if parsed.disposition not in DISPOSITIONS:
        raise InvalidMediaToken("bad disposition")
    if (time.time() if now is None else now) >= parsed.expires_at:
        raise InvalidMediaToken("expired")
    return parsed


def make_view_token(media: Any, *, disposition: str, user_id: Any, ttl: int) -> str:
    """A token for one member to fetch one media object for `ttl` seconds."""
    if disposition not in DISPOSITIONS:
        raise ValueError(f"disposition must be one of {DISPOSITIONS}")
    payload = {
        "m": str(media.pk),
        "t": str(media.tenant_id),
        "k": media.storage_key,
        "d": disposition,
        "e": int(time.time()) + int(ttl),
        "u": str(user_id),
    }
    return _dumps(payload, VIEW_SALT)


def read_view_token(token: str, *, now: float | None = None) -> MediaToken:
    return _loads(token, VIEW_SALT, now=now)


def make_meta_fetch_token(media: Any, *, nonce: str, ttl: int) -> str:
    """A token Meta can use once, without a session, within `ttl` seconds."""
    payload = {
        "m": str(media.pk),
        "t": str(media.tenant_id),
        "k": media.storage_key,
        "d": "attachment",
        "e": int(time.time()) + int(ttl),
        "n": nonce,
    }
    return _dumps(payload, META_FETCH_SALT)


def read_meta_fetch_token(token: str, *, now: float | None = None) -> MediaToken:
    return _loads(token, META_FETCH_SALT, now=now)
