"""The one URL Meta posts to (DESIGN.md section 5).

GET answers the subscription handshake. POST verifies `X-Hub-Signature-256` over the exact raw
bytes against each configured app's secret (or one app's, on `/webhooks/whatsapp/<app_id>/`),
commits the body to the journal and only then answers 200. Nothing unverified is stored; a
database failure answers 503 so Meta retries.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from apps.tenants.crypto import DecryptionError, Secret
from apps.tenants.models import MetaApp
from apps.whatsapp.signature import verify_signature

from .journal import journal_webhook

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


def _plain(text: str, status: int) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@never_cache
def whatsapp_webhook(request: HttpRequest, app_id: str | None = None) -> HttpResponse:
    if request.method == "GET":
        return _handshake(request, app_id)
    if request.method == "POST":
        return _receive(request, app_id)
    response = _plain("method not allowed\n", 405)
    response["Allow"] = "GET, POST"
    return response


def _apps(app_id: str | None) -> list[MetaApp]:
    queryset = MetaApp.objects.all()
    if app_id is not None:
        queryset = queryset.filter(app_id=app_id)
    return list(queryset)


# Verifying a POST needs every configured app's secret; loading and decrypting them was a query
# per webhook. They are kept in this process for APP_SECRETS_TTL seconds. A body that no cached
# secret verifies reloads them once before the 401, so a newly connected app or a changed secret
# works at once; saving or deleting a Meta app in this process clears the cache. An app deleted
# by another process can verify bodies here for at most the TTL, and their journal insert then
# fails on the missing app (503, Meta retries).
APP_SECRETS_TTL = 10.0


@dataclass(frozen=True)
class _VerifyingApp:
    app: MetaApp
    secret: Secret | None  # None when it does not decrypt


_secrets_cache: dict[str | None, tuple[float, list[_VerifyingApp]]] = {}
_secrets_lock = threading.Lock()


def forget_app_secrets(**kwargs) -> None:
    with _secrets_lock:
        _secrets_cache.clear()


def _verifying_apps(app_id: str | None, *, fresh: bool) -> list[_VerifyingApp]:
    now = time.monotonic()
    if not fresh:
        cached = _secrets_cache.get(app_id)
        if cached is not None and cached[0] > now:
            return cached[1]
    loaded = []
    for app in _apps(app_id):
        try:
            secret = app.app_secret
        except DecryptionError:
            logger.error("app secret of Meta app %s does not decrypt", app.app_id)
            secret = None
        loaded.append(_VerifyingApp(app, secret or None))
    with _secrets_lock:
        _secrets_cache[app_id] = (now + APP_SECRETS_TTL, loaded)
    return loaded


def _verified_by(body: bytes, header: str | None, apps: list[_VerifyingApp]) -> MetaApp | None:
    for candidate in apps:
        if candidate.secret and verify_signature(body, header, candidate.secret.reveal()):
            return candidate.app
    return None


def _handshake(request: HttpRequest, app_id: str | None) -> HttpResponse:
    mode = request.GET.get("hub.mode", "")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    if mode != "subscribe" or not token:
        return _plain("forbidden\n", 403)
    matched = False
    for app in _apps(app_id):
        try:
            expected = app.verify_token.reveal()
        except DecryptionError:
            logger.error("verify token of Meta app %s does not decrypt", app.app_id)
            continue
        # Compare every app (no early exit) in constant time.
        matched |= bool(expected) and hmac.compare_digest(expected.encode(), token.encode())
    if not matched:
        return _plain("forbidden\n", 403)
    if not challenge.isdigit() or len(challenge) > 64:
        return _plain("hub.challenge must be digits\n", 400)
    return _plain(challenge, 200)


def _read_body(request: HttpRequest, limit: int) -> bytes | None:
    """Read at most `limit` bytes from the stream; None when the body is larger. Django's global
    DATA_UPLOAD_MAX_MEMORY_SIZE stays as it is for every other view."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    chunks, size = [], 0
    while True:
        chunk = request.read(READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _receive(request: HttpRequest, app_id: str | None) -> HttpResponse:
    body = _read_body(request, settings.KLAROS_WEBHOOK_MAX_BYTES)
    if body is None:
        logger.warning(
            "webhook rejected: body larger than %s bytes", settings.KLAROS_WEBHOOK_MAX_BYTES
        )
        return _plain("payload too large\n", 413)
    header = request.headers.get("X-Hub-Signature-256")
    try:
        apps = _verifying_apps(app_id, fresh=False)
        verified_by = _verified_by(body, header, apps)
        if verified_by is None:
            apps = _verifying_apps(app_id, fresh=True)
            verified_by = _verified_by(body, header, apps)
    except DatabaseError:
        logger.exception("webhook: database unavailable while loading Meta apps")
        return _plain("temporarily unavailable\n", 503)
    if not apps:
        # Fail closed: without an app secret nothing can be verified, so nothing is accepted.
        logger.error("webhook rejected: no Meta app is configured")
        return _plain("no Meta app configured\n", 503)
    if verified_by is None:
        logger.warning(
            "webhook rejected: invalid or missing signature (%s bytes, header %s)",
            len(body),
            "present" if header else "missing",
        )
        return _plain("invalid signature\n", 401)
    try:
        journal_webhook(verified_by, body)
    except DatabaseError:
        logger.exception("webhook: could not journal a verified body; Meta will retry")
        return _plain("temporarily unavailable\n", 503)
    return _plain("ok\n", 200)
