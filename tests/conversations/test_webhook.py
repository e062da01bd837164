"""The webhook endpoint through HTTP: handshake, signatures over raw bytes, size cap, journal
commit before 200, fail-closed and 5xx on database trouble (DESIGN.md §5, test plan (b))."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest
from django.db import OperationalError, connection

from apps.conversations.inbound import journal
from apps.conversations.models import Message, WebhookEvent
from apps.tenants.scoping import unscoped
from apps.whatsapp.signature import sign_body

from .payload_builders import (
    WEBHOOK_URL,
    encode,
    entry,
    messages_change,
    notification,
    post_signed,
    status,
    text_body,
)

# --- GET: the subscription handshake ---------------------------------------------------------


def handshake(client, url=WEBHOOK_URL, **params):
    query = {f"hub.{key}": value for key, value in params.items()}
    return client.get(url, query)


def assert_plain(response):
    assert response["Content-Type"].startswith("text/plain")
    assert b"<" not in response.content


def test_it_echoes_the_challenge_as_plain_text_for_any_configured_apps_verify_token(
    client, acme, bravo
):
    for world in (acme, bravo):
        response = handshake(
            client,
            mode="subscribe",
            verify_token=world.credentials.verify_token,
            challenge="1158201444",
        )
        assert response.status_code == 200
        assert response.content == b"1158201444"
        assert_plain(response)


@pytest.mark.parametrize(
    ("mode", "token"),
    [
        ("subscribe", "wrong-token"),
        ("subscribe", ""),
        ("unsubscribe", "acme-verify-token"),
        ("", "acme-verify-token"),
        ("subscribe", "acme-verify-token "),
        ("subscribe", "acme-verify-toke"),
    ],
)
def test_it_refuses_the_handshake_without_subscribe_and_a_matching_token(client, acme, mode, token):
    response = handshake(client, mode=mode, verify_token=token, challenge="123")
    assert response.status_code == 403
    assert_plain(response)
    assert b"123" not in response.content


@pytest.mark.parametrize("challenge", [None, "", "<script>alert(1)</script>", "12a", "-1", "1 2"])
def test_it_answers_400_never_html_for_a_missing_or_non_numeric_challenge(client, acme, challenge):
    params = {"mode": "subscribe", "verify_token": acme.credentials.verify_token}
    if challenge is not None:
        params["challenge"] = challenge
    response = handshake(client, **params)
    assert response.status_code == 400
    assert_plain(response)
    assert b"script" not in response.content


def test_it_checks_only_the_named_app_on_the_per_app_url(client, acme, bravo):
    acme_url = f"/webhooks/whatsapp/{acme.app_id}/"
    ok = handshake(
        client,
        acme_url,
        mode="subscribe",
        verify_token=acme.credentials.verify_token,
        challenge="42",
    )
    other = handshake(
        client,
        acme_url,
        mode="subscribe",
        verify_token=bravo.credentials.verify_token,
        challenge="42",
    )
    unknown = handshake(
        client,
        "/webhooks/whatsapp/999999/",
        mode="subscribe",
        verify_token=acme.credentials.verify_token,
        challenge="42",
    )
    assert (ok.status_code, ok.content) == (200, b"42")
    assert other.status_code == 403
    assert unknown.status_code == 403


def test_it_answers_405_to_other_methods(client, acme):
    response = client.put(WEBHOOK_URL, data=b"{}", content_type="application/json")
    assert response.status_code == 405


# --- POST: signatures over the raw bytes ------------------------------------------------------


def journal_count() -> int:
    return WebhookEvent.objects.count()


def stored_messages() -> int:
    with unscoped("test: count every tenant's messages"):
        return Message.objects.count()


def _valid_body(acme) -> bytes:
    payload, _ = text_body(acme, "Caf\u00e9 <b>canary-body-text</b>")
    return encode(payload)


def _malformed_headers(body: bytes, secret: str) -> dict[str, str]:
    valid = sign_body(body, secret)
    digest = valid.removeprefix("sha256=")
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return {
        "empty digest": "sha256=",
        "bare algorithm": "sha256",
        "sha1 prefix with a valid sha1": f"sha1={sha1}",
        "uppercase hex": "sha256=" + digest.upper(),
        "non-hex": "sha256=" + "z" * 64,
        "prefix of the valid digest": "sha256=" + digest[:32],
        "valid digest minus one char": "sha256=" + digest[:-1],
        "valid digest plus one char": "sha256=" + digest + "0",
        "digest without prefix": digest,
        "uppercase prefix": "SHA256=" + digest,
        "whitespace around": f" {valid} ",
        "two signatures": f"{valid},{valid}",
        "valid signature of different bytes": sign_body(body + b" ", secret),
        "another app's valid secret": sign_body(body, "bravo-app-secret-canary"),
    }


@pytest.mark.parametrize(
    "form",
    list(_malformed_headers(b"x", "s")),
)
def test_it_rejects_every_malformed_signature_with_401_and_stores_nothing(client, acme, form):
    body = _valid_body(acme)
    header = _malformed_headers(body, acme.credentials.app_secret)[form]
    response = post_signed(client, body, acme.credentials.app_secret, signature=header)
    assert response.status_code == 401
    assert_plain(response)
    assert journal_count() == 0
    assert stored_messages() == 0


def test_it_rejects_a_missing_signature_header(client, acme):
    response = client.post(WEBHOOK_URL, data=_valid_body(acme), content_type="application/json")
    assert response.status_code == 401
    assert journal_count() == 0


def _reserialised(payload: dict) -> dict[str, tuple[bytes, bytes]]:
    """(signed bytes, posted bytes): the same JSON document, different bytes."""
    escaped = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()
    raw_utf8 = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    spaced = json.dumps(payload, ensure_ascii=True).encode()
    reordered = json.dumps(
        payload, ensure_ascii=True, separators=(",", ":"), sort_keys=True
    ).encode()
    assert len({escaped, raw_utf8, spaced, reordered}) == 4
    return {
        "signed \\u00e9, posted raw \u00e9": (escaped, raw_utf8),
        "signed raw \u00e9, posted \\u00e9": (raw_utf8, escaped),
        "whitespace added": (escaped, spaced),
        "whitespace removed": (spaced, escaped),
        "keys reordered": (escaped, reordered),
        "trailing newline": (escaped, escaped + b"\n"),
    }


@pytest.mark.parametrize("form", list(_reserialised({"k": 1, "a": "\u00e9"})))
def test_it_rejects_a_body_reserialised_after_signing(client, acme, form):
    payload, _ = text_body(acme, "Caf\u00e9 cr\u00e8me")
    signed, posted = _reserialised(payload)[form]
    assert json.loads(signed) == json.loads(posted)
    response = post_signed(
        client,
        posted,
        acme.credentials.app_secret,
        signature=sign_body(signed, acme.credentials.app_secret),
    )
    assert response.status_code == 401
    assert journal_count() == 0


@pytest.mark.django_db(transaction=True)
def test_it_commits_exactly_one_journal_row_before_answering_200(client, acme):
    body = _valid_body(acme)
    response = post_signed(client, body, acme.credentials.app_secret)
    assert response.status_code == 200
    assert response.content == b"ok\n"
    assert not connection.in_atomic_block  # no test transaction: the row below is committed
    event = WebhookEvent.objects.get()
    assert bytes(event.body) == body
    assert event.app.app_id == acme.app_id
    assert event.received_at is not None


def test_it_accepts_meta_escaped_non_ascii_and_raw_utf8_when_signed_as_sent(client, acme):
    payload, _ = text_body(acme, "Caf\u00e9 \U0001f600")
    for body in (encode(payload), json.dumps(payload, ensure_ascii=False).encode()):
        assert post_signed(client, body, acme.credentials.app_secret).status_code == 200
    assert journal_count() == 2


def test_it_verifies_against_each_configured_app(client, acme, bravo):
    for world in (acme, bravo):
        payload, _ = text_body(world)
        response = post_signed(client, encode(payload), world.credentials.app_secret)
        assert response.status_code == 200
    assert sorted(WebhookEvent.objects.values_list("app__app_id", flat=True)) == sorted(
        [acme.app_id, bravo.app_id]
    )


def test_it_checks_only_the_named_app_on_the_per_app_post_url(client, acme, bravo):
    body = _valid_body(acme)
    wrong = post_signed(
        client, body, acme.credentials.app_secret, url=f"/webhooks/whatsapp/{bravo.app_id}/"
    )
    right = post_signed(
        client, body, acme.credentials.app_secret, url=f"/webhooks/whatsapp/{acme.app_id}/"
    )
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert journal_count() == 1


# --- Size cap ---------------------------------------------------------------------------------


def _big_status_body(world, target_bytes: int) -> bytes:
    statuses, size = [], 0
    n = 0
    while size < target_bytes:
        item = status(f"wamid.BIG{n:09d}" + "x" * 120, "delivered")
        statuses.append(item)
        size += len(encode(item)) + 1
        n += 1
    return encode(notification(entry(messages_change(world, statuses=statuses))))


def test_it_answers_413_to_a_body_over_the_cap(client, acme, settings):
    settings.KLAROS_WEBHOOK_MAX_BYTES = 4096
    body = _big_status_body(acme, 8192)
    response = post_signed(client, body, acme.credentials.app_secret)
    assert response.status_code == 413
    assert_plain(response)
    assert journal_count() == 0


def test_it_answers_413_when_the_stream_is_longer_than_the_cap_whatever_the_header_says(
    client, acme, settings
):
    """A declared length under the cap does not let a longer stream through unread: the view
    reads at most cap + one chunk (the WSGI server stops at the declared length anyway)."""
    settings.KLAROS_WEBHOOK_MAX_BYTES = 4096
    body = _big_status_body(acme, 200_000)
    response = post_signed(client, body, acme.credentials.app_secret, CONTENT_LENGTH=str(len(body)))
    assert response.status_code == 413
    # Lying small Content-Length: only the declared bytes are read, they do not verify.
    lying = post_signed(client, body, acme.credentials.app_secret, CONTENT_LENGTH="100")
    assert lying.status_code in (401, 413)
    # Lying large Content-Length on a small body: refused before reading.
    small = _valid_body(acme)
    declared_big = post_signed(
        client, small, acme.credentials.app_secret, CONTENT_LENGTH=str(10 * 4096)
    )
    assert declared_big.status_code == 413
    assert journal_count() == 0


def test_it_accepts_a_3_mb_batch(client, acme):
    body = _big_status_body(acme, 3 * 1024 * 1024)
    assert len(body) >= 3 * 1024 * 1024
    response = post_signed(client, body, acme.credentials.app_secret)
    assert response.status_code == 200
    assert bytes(WebhookEvent.objects.get().body) == body


# --- Fail closed, fail loudly -----------------------------------------------------------------


def test_it_fails_closed_with_5xx_when_no_app_is_configured(client, db):
    payload, _ = text_body("100000000001")
    body = encode(payload)
    for secret in ("", "anything"):
        response = post_signed(client, body, secret)
        assert response.status_code >= 500
        assert response.status_code != 200
    response = client.post(WEBHOOK_URL, data=body, content_type="application/json")
    assert response.status_code >= 500
    assert journal_count() == 0


def _refuse_journal_inserts(execute, sql, params, many, context):
    if sql.startswith("INSERT") and WebhookEvent._meta.db_table in sql:
        raise OperationalError("could not connect to server")
    return execute(sql, params, many, context)


def test_it_answers_503_and_stores_nothing_when_the_journal_insert_fails(client, acme):
    with connection.execute_wrapper(_refuse_journal_inserts):
        response = post_signed(client, _valid_body(acme), acme.credentials.app_secret)
    assert response.status_code == 503
    assert journal_count() == 0


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_failing_insert_is_tried_once_more_then_answers_503(client, acme):
    post_signed(client, _valid_body(acme), acme.credentials.app_secret)  # connection in use
    if not connection.health_check_enabled:
        pytest.skip("no CONN_HEALTH_CHECKS on SQLite: a file connection is not lost while idle")
    tried = []

    def refuse(execute, sql, params, many, context):
        if sql.startswith("INSERT") and WebhookEvent._meta.db_table in sql:
            tried.append(sql)
        return _refuse_journal_inserts(execute, sql, params, many, context)

    connection.health_check_done = False  # as at the start of a new request
    with connection.execute_wrapper(refuse):
        response = post_signed(client, _valid_body(acme), acme.credentials.app_secret)
    assert response.status_code == 503
    assert len(tried) == 2
    assert journal_count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_healthy_persistent_connection_costs_one_round_trip_on_postgresql(client, acme):
    """The journal INSERT is the connection check (no `SELECT 1` first) and, on PostgreSQL,
    reads the drain flag too; elsewhere the flag is read after the commit."""
    from django.test.utils import CaptureQueriesContext

    from apps.conversations.models import JournalDrainFlag

    body = _valid_body(acme)
    post_signed(client, body, acme.credentials.app_secret)  # warm: connection and app secrets
    JournalDrainFlag.objects.update_or_create(pk=1, defaults={"scheduled": True})  # a drain runs
    connection.health_check_done = False  # as at the start of a new request
    with CaptureQueriesContext(connection) as queries:
        assert post_signed(client, body, acme.credentials.app_secret).status_code == 200
    statements = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":  # the flag is read by the INSERT itself
        assert len(statements) == 1, statements
        assert statements[0].startswith("INSERT") and "drainflag" in statements[0]
    else:
        assert len(statements) == 2, statements
        assert statements[0].startswith("INSERT")
        assert "drain" in statements[1] and statements[1].startswith("SELECT")
    assert journal_count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_connection_lost_while_idle_costs_no_webhook(client, acme):
    """A database restart kills the idle persistent connection. The next webhook reconnects
    and is journaled (Django's `SELECT 1` health check is not sent on this path)."""
    if connection.vendor != "postgresql":
        pytest.skip("terminating a server backend needs PostgreSQL")
    import psycopg

    body = _valid_body(acme)
    assert post_signed(client, body, acme.credentials.app_secret).status_code == 200
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    connection.health_check_done = False  # as at the start of a new request
    response = post_signed(client, body, acme.credentials.app_secret)
    assert response.status_code == 200
    assert connection.connection.info.backend_pid != pid
    assert journal_count() == 2


def test_it_keeps_the_committed_row_and_answers_200_when_scheduling_the_drain_fails(
    client, acme, monkeypatch
):
    """The row is committed before the drain is scheduled. If scheduling then fails, the row is
    durable: Meta gets its 200 (a 5xx would make it deliver the body again) and the periodic
    sweep schedules the drain that processes it."""
    from apps.conversations.inbound.journal import drain_journal, sweep_journal
    from apps.conversations.models import WebhookEvent, WebhookState

    def broken_request_drain():
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(journal, "request_drain", broken_request_drain)
    body = _valid_body(acme)
    response = post_signed(client, body, acme.credentials.app_secret)
    assert response.status_code == 200
    assert journal_count() == 1
    assert WebhookEvent.objects.get().state == WebhookState.PENDING
    monkeypatch.undo()
    assert sweep_journal() == 1  # the safety net finds the pending row and schedules a drain
    drain_journal()
    assert WebhookEvent.objects.get().state == WebhookState.PROCESSED


def test_it_answers_503_when_the_apps_cannot_be_loaded(client, acme, monkeypatch):
    from apps.conversations.inbound import webhook

    def broken_apps(app_id):
        raise OperationalError("database is locked")

    monkeypatch.setattr(webhook, "_apps", broken_apps)
    response = post_signed(client, _valid_body(acme), acme.credentials.app_secret)
    assert response.status_code == 503


def test_it_never_logs_the_body(client, acme, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    body = _valid_body(acme)
    post_signed(client, body, acme.credentials.app_secret, signature="sha256=" + "0" * 64)
    post_signed(client, body + b" ", acme.credentials.app_secret)  # valid, then journaled
    monkeypatch.setattr(
        WebhookEvent.objects,
        "create",
        lambda **kw: (_ for _ in ()).throw(OperationalError("db down")),
    )
    post_signed(client, body, acme.credentials.app_secret)
    assert "rejected" in caplog.text  # the 401 was logged...
    assert "canary-body-text" not in caplog.text  # ...without the body
    assert "Caf" not in caplog.text
    assert acme.credentials.app_secret not in caplog.text


def test_it_verifies_against_a_changed_app_secret_at_once_despite_the_secret_cache(client, acme):
    from apps.tenants.services import upsert_meta_app

    body = _valid_body(acme)
    assert post_signed(client, body, acme.credentials.app_secret).status_code == 200  # cached
    upsert_meta_app(
        acme.app_id,
        app_secret="rotated-app-secret",
        verify_token=acme.credentials.verify_token,
        actor="test",
    )
    assert post_signed(client, body, acme.credentials.app_secret).status_code == 401
    assert post_signed(client, body, "rotated-app-secret").status_code == 200
    assert journal_count() == 2


def test_it_accepts_a_newly_connected_app_without_waiting_for_the_cache(client, acme):
    from apps.tenants.services import NumberCredentials, connect_number, create_tenant

    assert post_signed(client, _valid_body(acme), acme.credentials.app_secret).status_code == 200
    # Connected by another process: no signal reaches this one, so only the reload on a miss
    # can find the new app.
    from django.db.models.signals import post_save

    from apps.conversations.inbound.webhook import forget_app_secrets
    from apps.tenants.models import MetaApp

    post_save.disconnect(forget_app_secrets, sender=MetaApp, dispatch_uid="klaros-app-secrets")
    try:
        other = create_tenant("other", "Other", actor="test")
        connect_number(
            other,
            phone_number_id="100000000009",
            waba_id="200000000009",
            display_phone_number="+1 555 0009",
            app_id="300000000009",
            credentials=NumberCredentials("EAA-other-token", "other-app-secret", "other-verify"),
            actor="test",
        )
    finally:
        post_save.connect(forget_app_secrets, sender=MetaApp, dispatch_uid="klaros-app-secrets")
    assert post_signed(client, _valid_body(acme), "other-app-secret").status_code == 200
