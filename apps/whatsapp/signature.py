"""Webhook signatures (``X-Hub-Signature-256``) and Meta-style JSON serialisation.

Meta signs every webhook POST with HMAC-SHA256 over the raw body bytes, keyed by the app secret,
and sends ``sha256=<64 lowercase hex>``. The MAC only holds for the exact bytes received: Meta
escapes non-ASCII as ``\\uXXXX`` (emoji as surrogate pairs), so a body that was parsed and
re-serialised no longer verifies. Always verify ``request.body`` before parsing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

SIGNATURE_HEADER = "X-Hub-Signature-256"
# The same header as Django exposes it in ``request.META``.
SIGNATURE_META_KEY = "HTTP_X_HUB_SIGNATURE_256"

_PREFIX = "sha256="
# Strict on purpose: Meta always sends lowercase hex. Accepting variants (uppercase, whitespace,
# ``sha1=``) only widens what a forger may try; nothing legitimate needs it.
_HEADER_RE = re.compile(r"sha256=[0-9a-f]{64}")


def sign_body(body: bytes, app_secret: str) -> str:
    """Return the ``X-Hub-Signature-256`` value Meta would send for ``body``.

    The key is the app secret encoded as UTF-8; the message is ``body`` exactly as given.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("sign_body() needs the raw body as bytes")
    digest = hmac.new(app_secret.encode("utf-8"), bytes(body), hashlib.sha256).hexdigest()
    return _PREFIX + digest


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """Check a webhook signature header against the raw body, in constant time.

    Returns False for a missing or malformed header (anything but ``sha256=`` followed by
    exactly 64 lowercase hex digits), for an empty app secret, and for a digest that does not
    match HMAC-SHA256(app_secret, body).
    """
    if not app_secret or not isinstance(header, str) or not _HEADER_RE.fullmatch(header):
        return False
    expected = sign_body(body, app_secret)
    return hmac.compare_digest(expected.encode("ascii"), header.encode("ascii"))


def dumps_like_meta(obj: Any, *, escape_slashes: bool = False) -> bytes:
    """Serialise ``obj`` to JSON bytes the way Meta's webhook bodies look.

    Compact separators, non-ASCII escaped as lowercase ``\\uXXXX`` (characters outside the BMP as
    UTF-16 surrogate pairs, e.g. ``\\ud83d\\ude2e``), key order kept as given.

    ``escape_slashes`` writes ``/`` as ``\\/``. The reference marks Meta escaping slashes as
    unconfirmed for WhatsApp, so it is off by default; the simulator can turn it on to prove the
    receiver hashes raw bytes rather than a re-serialisation.
    """
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if escape_slashes:
        # Safe on the serialised text: "/" can only appear inside strings, and "\/" is a valid
        # JSON escape that decodes back to "/".
        text = text.replace("/", "\\/")
    return text.encode("ascii")
