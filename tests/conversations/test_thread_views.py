"""The conversation page: order, data-* attributes, unread reset, the polled fragment of newer
messages, quotes, and tenant isolation of every conversation, message and contact URL."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from django.test import Client

from apps.conversations.models import Conversation
from apps.tenants.scoping import tenant_scope
from tests.conftest import logged_in_client

from .factories import BASE_TIME, make_conversation, make_message


def url(conversation) -> str:
    return f"/inbox/c/{conversation.pk}/"


def poll(conversation, after=None) -> str:
    base = f"/inbox/c/{conversation.pk}/messages/"
    return f"{base}?after={after.pk}" if after else base


def shown_ids(html: str) -> list[str]:
    return re.findall(r'data-message-id="([0-9a-f-]+)"', html)


def unread(conversation) -> int:
    with tenant_scope(conversation.tenant_id):
        return Conversation.objects.get(pk=conversation.pk).unread_count


def test_it_shows_the_header_and_messages_in_sent_order(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi", wa_id="15551234567")
    late = make_message(conversation, sent_at=BASE_TIME + timedelta(minutes=2))
    early = make_message(conversation, sent_at=BASE_TIME)
    tie_1 = make_message(conversation, sent_at=BASE_TIME + timedelta(minutes=1))
    tie_2 = make_message(conversation, sent_at=BASE_TIME + timedelta(minutes=1))
    ties = sorted([tie_1, tie_2], key=lambda m: m.pk)
    response = alice_client.get(url(conversation))
    html = response.content.decode()
    assert response.status_code == 200
    assert shown_ids(html) == [str(m.pk) for m in [early, *ties, late]]
    assert "<h1>Dana Levi</h1>" in html and "+15551234567" in html
    assert acme.number.display_phone_number in html and ">Open<" in html


def test_it_carries_the_data_attributes_on_every_message(acme, alice_client):
    conversation = make_conversation(acme)
    inbound = make_message(conversation, wamid="wamid.IN1")
    queued = make_message(conversation, direction="out", wamid=None, status="queued")
    read = make_message(conversation, direction="out", wamid="wamid.OUT1", status="read")
    html = alice_client.get(url(conversation)).content.decode()
    items = {
        m: re.search(rf'<li id="m-{m.pk}"[^>]*>', html).group(0) for m in (inbound, queued, read)
    }
    assert f'data-message-id="{inbound.pk}"' in items[inbound]
    assert 'data-wamid="wamid.IN1"' in items[inbound]
    assert 'data-direction="in"' in items[inbound] and 'data-status="received"' in items[inbound]
    # No wamid until Meta has given one.
    assert "data-wamid" not in items[queued]
    assert 'data-direction="out"' in items[queued] and 'data-status="queued"' in items[queued]
    assert 'data-wamid="wamid.OUT1"' in items[read] and 'data-status="read"' in items[read]


def test_it_shows_ticks_for_outbound_statuses(acme, alice_client):
    conversation = make_conversation(acme)
    for status in ("queued", "sent", "delivered", "read", "failed"):
        make_message(conversation, direction="out", status=status, wamid=None)
    html = alice_client.get(url(conversation)).content.decode()
    for css, label in [
        ("tick-clock", "Queued"),
        ("tick-sent", "Sent"),
        ("tick-delivered", "Delivered"),
        ("tick-read", "Read"),
        ("tick-failed", "Failed"),
    ]:
        assert f'class="tick {css}" title="{label}"' in html


def test_it_resets_the_unread_count_when_opened(acme, alice_client):
    conversation = make_conversation(acme, unread_count=4)
    make_message(conversation)
    assert alice_client.get(url(conversation)).status_code == 200
    assert unread(conversation) == 0
    assert "badge" not in alice_client.get("/inbox/").content.decode()


def test_it_polls_every_3_seconds_for_messages_after_the_last_one(acme, alice_client):
    conversation = make_conversation(acme)
    make_message(conversation)
    last = make_message(conversation)
    html = alice_client.get(url(conversation)).content.decode()
    assert (
        f'hx-get="/inbox/c/{conversation.pk}/messages/?after={last.pk}&amp;since={last.pk}" '
        'hx-trigger="every 3s" hx-target="#thread-messages" hx-swap="beforeend"'
    ) in html


def test_the_poll_fragment_returns_only_newer_messages_and_moves_the_poller(acme, alice_client):
    conversation = make_conversation(acme)
    first = make_message(conversation, sent_at=BASE_TIME)
    shown = make_message(conversation, sent_at=BASE_TIME + timedelta(seconds=5))
    assert alice_client.get(poll(conversation, shown)).status_code == 204  # nothing new

    same_second = make_message(conversation, sent_at=shown.sent_at)
    newer = make_message(conversation, sent_at=BASE_TIME + timedelta(seconds=9))
    response = alice_client.get(poll(conversation, shown), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert shown_ids(html) == [str(same_second.pk), str(newer.pk)]
    assert str(first.pk) not in html and f'data-message-id="{shown.pk}"' not in html
    next_poll = (
        f'hx-get="/inbox/c/{conversation.pk}/messages/?after={newer.pk}&amp;since={newer.pk}"'
    )
    assert next_poll in html and 'hx-swap-oob="true"' in html
    assert alice_client.get(poll(conversation, newer)).status_code == 204


def test_a_late_message_with_an_older_timestamp_is_appended_once(acme, alice_client):
    # Meta retries webhooks for days and its timestamp is the customer's clock: a message
    # stored now can sort before the last one on screen. It must still appear, exactly once.
    conversation = make_conversation(acme)
    make_message(conversation, sent_at=BASE_TIME + timedelta(minutes=5))
    page = alice_client.get(url(conversation)).content.decode()
    poll_url = re.search(r'id="thread-poller"[^>]*hx-get="([^"]+)"', page).group(1)
    late = make_message(conversation, sent_at=BASE_TIME, content={"body": "sent while offline"})
    html = alice_client.get(poll_url.replace("&amp;", "&")).content.decode()
    assert shown_ids(html) == [str(late.pk)]
    again = re.search(r'id="thread-poller"[^>]*hx-get="([^"]+)"', html).group(1)
    assert alice_client.get(again.replace("&amp;", "&")).status_code == 204
    # On reload it sits in its place.
    assert shown_ids(alice_client.get(url(conversation)).content.decode())[0] == str(late.pk)


def test_the_poll_fragment_marks_what_arrived_as_read(acme, alice_client):
    conversation = make_conversation(acme)
    shown = make_message(conversation)
    with tenant_scope(acme.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(unread_count=1)
    make_message(conversation)
    alice_client.get(poll(conversation, shown))
    assert unread(conversation) == 0


def test_an_empty_conversation_polls_for_its_first_message(acme, alice_client):
    conversation = make_conversation(acme, last_message_at=None)
    html = alice_client.get(url(conversation)).content.decode()
    assert "No messages yet." in html
    assert f'hx-get="/inbox/c/{conversation.pk}/messages/"' in html
    assert alice_client.get(poll(conversation)).status_code == 204
    message = make_message(conversation)
    assert shown_ids(alice_client.get(poll(conversation)).content.decode()) == [str(message.pk)]


def test_it_quotes_the_replied_to_message_or_says_it_is_earlier(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi")
    ours = make_message(
        conversation,
        direction="out",
        wamid="wamid.OUTBOUND_123",
        content={"body": "Your order ships tomorrow"},
    )
    reply = make_message(
        conversation, context_wamid="wamid.OUTBOUND_123", content={"body": "Great, thanks"}
    )
    orphan = make_message(
        conversation, context_wamid="wamid.NOT_IN_DB", content={"body": "About that"}
    )
    html = alice_client.get(url(conversation)).content.decode()
    item = html[html.index(f'id="m-{reply.pk}"') : html.index(f'id="m-{orphan.pk}"')]
    assert f'href="#m-{ours.pk}"' in item and "Your order ships tomorrow" in item
    assert ">You<" in item
    assert "Replying to an earlier message" in html[html.index(f'id="m-{orphan.pk}"') :]


def test_it_never_quotes_a_message_of_another_conversation(acme, alice_client):
    other = make_conversation(acme, name="Someone Else")
    make_message(other, wamid="wamid.ELSEWHERE", content={"body": "private-elsewhere-canary"})
    conversation = make_conversation(acme)
    make_message(conversation, context_wamid="wamid.ELSEWHERE")
    html = alice_client.get(url(conversation)).content.decode()
    assert "private-elsewhere-canary" not in html
    assert "Replying to an earlier message" in html


def test_it_pages_back_to_earlier_messages(acme, alice_client, monkeypatch):
    monkeypatch.setattr("apps.conversations.inbox.thread.THREAD_PAGE_SIZE", 3)
    conversation = make_conversation(acme)
    messages = [make_message(conversation) for _ in range(5)]
    html = alice_client.get(url(conversation)).content.decode()
    assert shown_ids(html) == [str(m.pk) for m in messages[2:]]
    earlier = re.search(r'href="(\?before=[0-9a-f-]+)"', html).group(1)
    older = alice_client.get(url(conversation) + earlier).content.decode()
    assert shown_ids(older) == [str(m.pk) for m in messages[:2]]
    assert "Jump to the latest messages" in older and "hx-trigger" not in older


def test_it_redirects_a_message_link_to_its_place_in_the_thread(acme, alice_client):
    conversation = make_conversation(acme)
    message = make_message(conversation)
    response = alice_client.get(f"/inbox/m/{message.pk}/")
    assert response.status_code == 302
    assert response["Location"] == f"/inbox/c/{conversation.pk}/#m-{message.pk}"


def test_it_shows_the_contact_page(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi", wa_id="15551234567")
    html = alice_client.get(f"/inbox/contacts/{conversation.contact.pk}/").content.decode()
    assert "Dana Levi" in html and f"/inbox/c/{conversation.pk}/" in html


def test_anonymous_visitors_are_sent_to_login(acme):
    conversation = make_conversation(acme)
    message = make_message(conversation)
    for path in (
        url(conversation),
        poll(conversation),
        f"/inbox/m/{message.pk}/",
        f"/inbox/contacts/{conversation.contact.pk}/",
    ):
        response = Client().get(path)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_another_tenants_member_gets_the_same_404_as_for_a_missing_object(acme, bravo, bob_client):
    conversation = make_conversation(
        acme, name="Canary-Acme-Name", wa_id="15559990001", unread_count=2
    )
    message = make_message(
        conversation, wamid="wamid.ACME_CANARY", content={"body": "acme-secret-canary-text"}
    )
    missing = uuid.uuid4()
    paths = [
        url(conversation),
        poll(conversation),
        poll(conversation, message),
        f"{poll(conversation, message)}&since={message.pk}",
        f"/inbox/c/{conversation.pk}/?before={message.pk}",
        f"/inbox/m/{message.pk}/",
        f"/inbox/contacts/{conversation.contact.pk}/",
    ]
    missing_body = bob_client.get(f"/inbox/c/{missing}/").content
    for path in paths:
        response = bob_client.get(path)
        body = response.content.decode()
        assert response.status_code == 404, path
        assert response.content == missing_body or "Canary" not in body
        for canary in (
            "Canary-Acme-Name",
            "15559990001",
            "acme-secret-canary-text",
            "wamid.ACME_CANARY",
        ):
            assert canary not in body
    # Looking did not mark anything read either.
    assert unread(conversation) == 2


def test_a_member_cannot_splice_another_tenants_message_into_their_own_poll(
    acme, bravo, bob_client
):
    acme_conversation = make_conversation(acme)
    acme_message = make_message(acme_conversation)
    bravo_conversation = make_conversation(bravo)
    make_message(bravo_conversation)
    assert bob_client.get(poll(bravo_conversation, acme_message)).status_code == 404


def test_a_member_of_both_tenants_sees_each_only_in_its_own_workspace(acme, bravo, carol):
    acme_conversation = make_conversation(acme, name="Acme Person")
    bravo_conversation = make_conversation(bravo, name="Bravo Person")
    client = logged_in_client(carol)  # current tenant: the first by name, Acme
    assert client.get(url(acme_conversation)).status_code == 200
    assert client.get(url(bravo_conversation)).status_code == 404
    client.post("/tenants/switch/", {"tenant": str(bravo.tenant.pk), "next": "/inbox/"})
    assert client.get(url(bravo_conversation)).status_code == 200
    assert client.get(url(acme_conversation)).status_code == 404


def test_a_user_without_a_workspace_gets_404(acme, db):
    from django.contrib.auth import get_user_model

    conversation = make_conversation(acme)
    lonely = get_user_model().objects.create_user("lonely@nowhere.test", "pw-123456789012")
    client = logged_in_client(lonely)
    assert "No workspace yet" in client.get("/inbox/").content.decode()
    assert client.get(url(conversation)).status_code == 404
    assert client.get("/inbox/list/").status_code == 404
