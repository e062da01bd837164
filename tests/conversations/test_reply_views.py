"""Replying from the conversation page: the reply box inside the 24-hour window, refusals in
plain words outside it, quoting, the window line, and live ticks through the poll. A reply is
queued in the request and never sent there (Graph points at a closed port to prove it)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.conversations.models import Conversation, Message
from apps.conversations.outbound import outbox
from apps.tenants.scoping import tenant_scope

from .factories import make_message
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    make_conversation,
    outbound_messages,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

BLACK_HOLE = "http://127.0.0.1:9/v25.0"
HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _graph_is_a_black_hole(settings):
    # Any Graph call made while answering would fail loudly (connection refused).
    settings.WHATSAPP_GRAPH_URL = BLACK_HOLE


def reply_url(conversation) -> str:
    return f"/inbox/c/{conversation.pk}/reply/"


def page_url(conversation) -> str:
    return f"/inbox/c/{conversation.pk}/"


def test_it_queues_exactly_one_reply_inside_the_window_with_its_audit_event(
    acme, alice_client, django_capture_on_commit_callbacks
):
    conversation = make_conversation(acme)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alice_client.post(reply_url(conversation), {"body": "  Your parcel left  "})
    assert response.status_code == 302
    assert response["Location"] == page_url(conversation)
    [message] = outbound_messages(acme)
    assert (message.text, message.status, message.wamid) == ("Your parcel left", "queued", None)
    assert message.sent_by == acme.owner and message.send_path == "agent_reply"
    [audit] = audit_events(acme, "send.queued")
    assert audit.object_id == str(message.pk)
    # Only the dispatcher is woken, after commit; the request itself called nothing.
    assert callbacks == [outbox.DISPATCH.enqueue]


def test_it_answers_htmx_with_a_fresh_composer_and_asks_the_page_to_poll(acme, alice_client):
    conversation = make_conversation(acme)
    response = alice_client.post(reply_url(conversation), {"body": "Hello"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Trigger"] == "klaros:thread-changed"
    assert 'id="composer"' in html and 'id="reply-body"' in html
    assert ">Hello</textarea>" not in html
    assert len(outbound_messages(acme)) == 1


def test_it_quotes_a_message_of_the_conversation(acme, alice_client):
    conversation = make_conversation(acme)
    quoted = make_message(conversation, wamid="wamid.QUOTED")
    alice_client.post(reply_url(conversation), {"body": "Yes", "quote": str(quoted.pk)})
    [message] = outbound_messages(acme)
    assert message.context_wamid == "wamid.QUOTED"
    assert message.content["_context_wamid"] == "wamid.QUOTED"


def test_it_does_not_quote_a_message_of_another_conversation(acme, bravo, alice_client):
    conversation = make_conversation(acme)
    other = make_message(make_conversation(acme), wamid="wamid.ELSEWHERE")
    foreign = make_message(make_conversation(bravo), wamid="wamid.BRAVO")
    for message in (other, foreign):
        response = alice_client.post(
            reply_url(conversation), {"body": "Yes", "quote": str(message.pk)}
        )
        assert response.status_code == 404
    assert outbound_messages(acme) == []


def test_it_refuses_a_reply_outside_the_window_in_plain_words_and_queues_nothing(
    acme, alice_client
):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=27))
    response = alice_client.post(reply_url(conversation), {"body": "Hi"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert re.search(
        r"The 24-hour window closed 3\xa0hours(, \d+\xa0minutes?)? ago; send an "
        r"approved template instead\.",
        html,
    )
    assert 'role="alert"' in html
    assert outbound_messages(acme) == []
    [refusal] = audit_events(acme, "send.refused")
    assert refusal.data["reason"] == "window_closed"


def test_a_plain_post_outside_the_window_redirects_with_the_refusal_as_a_message(
    acme, alice_client
):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=30))
    response = alice_client.post(reply_url(conversation), {"body": "Hi"}, follow=True)
    html = response.content.decode()
    assert response.redirect_chain == [(page_url(conversation), 302)]
    assert "24-hour window closed" in html and "send an approved template instead" in html
    assert outbound_messages(acme) == []


def test_it_refuses_a_reply_to_a_contact_who_opted_out(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi")
    with tenant_scope(acme.tenant):
        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.KEYWORD,
            actor="test",
        )
    response = alice_client.post(reply_url(conversation), {"body": "Hi"}, headers=HTMX)
    assert "Dana Levi opted out of all messages" in response.content.decode()
    assert outbound_messages(acme) == []


def test_it_refuses_an_empty_reply_and_keeps_the_quote(acme, alice_client):
    conversation = make_conversation(acme)
    quoted = make_message(conversation, wamid="wamid.Q", content={"body": "Where is it?"})
    response = alice_client.post(
        reply_url(conversation), {"body": "   ", "quote": str(quoted.pk)}, headers=HTMX
    )
    html = response.content.decode()
    assert "Write a message first." in html
    assert f'value="{quoted.pk}"' in html and "Where is it?" in html
    assert outbound_messages(acme) == []


def test_it_shows_the_reply_box_and_the_window_countdown_inside_the_window(acme, alice_client):
    conversation = make_conversation(
        acme, last_inbound_at=timezone.now() - timedelta(hours=20, minutes=47, seconds=30)
    )
    html = alice_client.get(page_url(conversation)).content.decode()
    assert "Window open: closes in 3 h 12 min" in html
    assert 'id="reply-form"' in html and 'id="template-form"' not in html
    assert f'hx-post="/inbox/c/{conversation.pk}/reply/"' in html


def test_it_replaces_the_reply_box_once_the_window_closed(acme, alice_client):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=26))
    html = alice_client.get(page_url(conversation)).content.decode()
    assert "Window closed 2\xa0hours ago" in html
    assert 'id="reply-form"' not in html and 'id="reply-body"' not in html
    assert "send an approved template instead" in html
    assert 'class="composer composer-template"' in html


def test_it_shows_only_the_refusal_to_a_contact_who_opted_out(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi")
    with tenant_scope(acme.tenant):
        record_consent(
            conversation.contact,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.AGENT,
            actor=acme.owner,
        )
    html = alice_client.get(page_url(conversation)).content.decode()
    assert 'id="reply-form"' not in html and 'id="template-form"' not in html
    assert "Dana Levi opted out of all messages" in html


def test_it_escapes_the_reply_text_in_the_thread(acme, alice_client):
    conversation = make_conversation(acme)
    alice_client.post(reply_url(conversation), {"body": "<script>alert(1)</script>"})
    html = alice_client.get(page_url(conversation)).content.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- The poll: ticks, the window line, the composer -------------------------------------------


def poll(conversation, last, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/inbox/c/{conversation.pk}/messages/?after={last.pk}&since={last.pk}&{query}"


def set_status(message, **fields) -> None:
    with tenant_scope(message.tenant_id):
        Message.objects.filter(pk=message.pk).update(**fields)


def test_the_poll_replaces_messages_whose_status_changed(acme, alice_client):
    conversation = make_conversation(acme)
    sent = make_message(conversation, direction="out", status="sent", wamid="wamid.O1")
    failed = make_message(conversation, direction="out", status="sending", wamid=None)
    same = make_message(conversation, direction="out", status="delivered", wamid="wamid.O3")
    last = make_message(conversation)
    ticks = f"{sent.pk}:sent,{failed.pk}:sending,{same.pk}:delivered"
    assert alice_client.get(poll(conversation, last, ticks=ticks)).status_code == 204

    set_status(sent, status="read")
    set_status(
        failed,
        status="failed",
        error_code=131026,
        error_title="Message undeliverable",
        error_details="The customer's phone number is not on WhatsApp.",
    )
    response = alice_client.get(poll(conversation, last, ticks=ticks))
    html = response.content.decode()
    assert response.status_code == 200
    replaced = re.findall(r'<li id="m-([0-9a-f-]+)"[^>]*hx-swap-oob="true"', html)
    assert sorted(replaced) == sorted([str(sent.pk), str(failed.pk)])
    assert 'class="tick tick-read" title="Read"' in html
    assert 'class="tick tick-failed" title="Failed"' in html
    assert "131026" in html and "Message undeliverable" in html
    assert "not on WhatsApp" in html


def test_the_poll_ignores_ticks_of_another_tenants_messages(acme, bravo, alice_client):
    conversation = make_conversation(acme)
    last = make_message(conversation)
    foreign = make_message(make_conversation(bravo), direction="out", status="read")
    response = alice_client.get(poll(conversation, last, ticks=f"{foreign.pk}:queued"))
    assert response.status_code == 204


def test_the_poll_refreshes_the_window_line_and_swaps_the_composer_when_it_closes(
    acme, alice_client
):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=2))
    last = make_message(conversation)
    html = alice_client.get(page_url(conversation)).content.decode()
    key = re.search(r'data-window-key="([^"]+)"', html).group(1)
    assert key.startswith("reply|Window open: closes in 21 h")
    assert alice_client.get(poll(conversation, last, mode="reply", window=key)).status_code == 204

    stale = alice_client.get(poll(conversation, last, mode="reply", window="reply|old text"))
    assert 'id="window-status"' in stale.content.decode()
    assert 'id="composer"' not in stale.content.decode()

    with tenant_scope(acme.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(
            last_inbound_at=timezone.now() - timedelta(hours=25)
        )
    closed = alice_client.get(poll(conversation, last, mode="reply", window=key)).content.decode()
    assert re.search(
        r'<section id="composer" class="composer composer-template"[^>]*'
        r'hx-swap-oob="true"',
        closed,
    )
    assert "send an approved template instead" in closed


def test_it_gives_404_to_another_tenant_and_queues_nothing(acme, bob_client):
    conversation = make_conversation(acme)
    for headers in ({}, HTMX):
        response = bob_client.post(reply_url(conversation), {"body": "Hi"}, headers=headers)
        assert response.status_code == 404
    assert outbound_messages(acme) == []
    with tenant_scope(acme.tenant):
        assert not AuditEvent.objects.filter(action__startswith="send.").exists()


def test_it_needs_a_post_and_a_login(acme, alice_client, client):
    conversation = make_conversation(acme)
    assert alice_client.get(reply_url(conversation)).status_code == 405
    response = client.post(reply_url(conversation), {"body": "Hi"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert outbound_messages(acme) == []
