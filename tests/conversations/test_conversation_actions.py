"""Conversation actions: assignment (me, a colleague, nobody; members only), close and reopen,
internal notes that never leave Klaros, mark-as-read sent to Meta once per open (from a task,
after commit), CSRF, and the same 404 for another tenant on every action URL."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.conversations import services
from apps.conversations.models import Conversation, Message
from apps.conversations.tasks import mark_read_at_meta
from apps.tenants.scoping import tenant_scope
from tests.conftest import logged_in_client

from .factories import make_message
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    make_conversation,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def fresh(conversation) -> Conversation:
    with tenant_scope(conversation.tenant_id):
        return Conversation.objects.get(pk=conversation.pk)


def url(conversation, action: str = "") -> str:
    return f"/inbox/c/{conversation.pk}/{action + '/' if action else ''}"


# --- Assignment ---------------------------------------------------------------------------------


def test_it_assigns_to_me_a_colleague_and_nobody_with_audit_events(acme, agnes, alice_client):
    conversation = make_conversation(acme)
    page = alice_client.get(url(conversation)).content.decode()
    assert ">Me (alice@acme.test)</option>" in page and ">agnes@acme.test</option>" in page

    alice_client.post(url(conversation, "assign"), {"assignee": str(acme.owner.pk)})
    assert fresh(conversation).assigned_to == acme.owner
    alice_client.post(url(conversation, "assign"), {"assignee": str(agnes.pk)})
    assert fresh(conversation).assigned_to == agnes
    alice_client.post(url(conversation, "assign"), {"assignee": ""})
    assert fresh(conversation).assigned_to is None

    events = audit_events(acme, "conversation.assigned")
    assert [e.data["assigned_to"] for e in events] == [str(acme.owner.pk), str(agnes.pk), None]
    assert all(e.object_id == str(conversation.pk) for e in events)
    assert all(e.actor_id == str(acme.owner.pk) for e in events)


def test_assigning_the_same_person_again_writes_nothing(acme, alice_client):
    conversation = make_conversation(acme)
    for _ in range(2):
        alice_client.post(url(conversation, "assign"), {"assignee": str(acme.owner.pk)})
    assert len(audit_events(acme, "conversation.assigned")) == 1


def test_it_assigns_only_to_members_of_the_tenant(acme, bravo, alice_client):
    conversation = make_conversation(acme)
    page = alice_client.get(url(conversation)).content.decode()
    assert "bob@bravo.test" not in page
    response = alice_client.post(
        url(conversation, "assign"), {"assignee": str(bravo.owner.pk)}, follow=True
    )
    assert "Choose a colleague from the list." in response.content.decode()
    assert fresh(conversation).assigned_to is None
    assert audit_events(acme, "conversation.assigned") == []


def test_the_service_refuses_a_non_member(acme, bravo):
    conversation = make_conversation(acme)
    with tenant_scope(acme.tenant), pytest.raises(services.ConversationActionError):
        services.assign_conversation(conversation, bravo.owner, actor=acme.owner)
    assert fresh(conversation).assigned_to is None


# --- Close and reopen ---------------------------------------------------------------------------


def test_it_closes_and_reopens_with_audit_events(acme, alice_client):
    conversation = make_conversation(acme)
    alice_client.post(url(conversation, "close"))
    assert fresh(conversation).status == "closed"
    assert "Reopen conversation" in alice_client.get(url(conversation)).content.decode()
    alice_client.post(url(conversation, "close"))  # already closed: nothing new
    alice_client.post(url(conversation, "reopen"))
    assert fresh(conversation).status == "open"
    assert [e.action for e in audit_events(acme) if e.action.startswith("conversation.")] == [
        "conversation.closed",
        "conversation.reopened",
    ]


# --- Internal notes -----------------------------------------------------------------------------


def test_it_adds_an_internal_note_that_never_leaves_klaros(sim, acme, alice_client):
    conversation = make_conversation(acme)
    response = alice_client.post(url(conversation, "notes"), {"text": "VIP <b>customer</b>"})
    assert response.status_code == 302
    with tenant_scope(acme.tenant):
        [note] = Message.objects.filter(conversation=conversation)
    assert (note.direction, note.status, note.wamid, note.text) == (
        "note",
        "note",
        None,
        "VIP <b>customer</b>",
    )
    [event] = audit_events(acme, "conversation.note_added")
    assert event.object_id == str(note.pk)
    html = alice_client.get(url(conversation)).content.decode()
    assert 'class="msg msg-note' in html and 'data-direction="note"' in html
    assert "Internal note by alice@acme.test · not sent" in html
    assert "VIP &lt;b&gt;customer&lt;/b&gt;" in html
    assert sim.requests() == []


def test_an_empty_note_is_refused(acme, alice_client):
    conversation = make_conversation(acme)
    response = alice_client.post(url(conversation, "notes"), {"text": "  "}, follow=True)
    assert "Write a note first." in response.content.decode()
    with tenant_scope(acme.tenant):
        assert not Message.objects.exists()


# --- Mark as read at Meta -----------------------------------------------------------------------


def read_receipts(sim) -> list[dict]:
    return [
        r
        for r in sim.requests()
        if r["method"] == "POST" and isinstance(r.get("json"), dict) and r["json"].get("status")
    ]


def test_opening_a_conversation_marks_the_latest_inbound_message_read_at_meta(
    sim, acme, alice_client, django_capture_on_commit_callbacks
):
    conversation = make_conversation(acme)
    make_message(conversation, wamid="wamid.OLDER")
    make_message(conversation, direction="out", wamid="wamid.OURS")
    make_message(conversation, wamid=None, type="system")
    latest = make_message(conversation, wamid="wamid.LATEST")
    last = make_message(conversation, wamid="wamid.NEWEST_NOTE", direction="note")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert alice_client.get(url(conversation)).status_code == 200
    # Enqueued after commit, not run inside the request.
    assert len(callbacks) == 1 and read_receipts(sim) == []

    with django_capture_on_commit_callbacks(execute=True):
        alice_client.get(url(conversation))
    [receipt] = read_receipts(sim)
    assert receipt["path"].endswith(f"/{acme.number.phone_number_id}/messages")
    assert receipt["json"]["message_id"] == latest.wamid
    assert receipt["json"]["status"] == "read"

    # Polls and history pages do not send it again; each new open does.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        alice_client.get(f"{url(conversation)}messages/?after={last.pk}")
        alice_client.get(f"{url(conversation)}?before={last.pk}")
    assert callbacks == []
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.get(url(conversation))
    assert len(read_receipts(sim)) == 2


def test_nothing_is_enqueued_without_an_inbound_message(
    acme, alice_client, django_capture_on_commit_callbacks
):
    conversation = make_conversation(acme)
    make_message(conversation, direction="out", wamid="wamid.OURS")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alice_client.get(url(conversation))
    assert callbacks == []


def test_a_failing_mark_as_read_is_logged_not_raised(sim, acme, caplog):
    from apps.whatsapp.simulator import Fault

    conversation = make_conversation(acme)
    message = make_message(conversation, wamid="wamid.X")
    sim.add_fault(Fault(acme.number.phone_number_id, code=131000, scope="read"))
    assert mark_read_at_meta(str(acme.tenant.pk), str(message.pk)) is False
    assert "mark-as-read" in caplog.text


def test_the_task_finds_nothing_of_another_tenant(sim, acme, bravo):
    message = make_message(make_conversation(bravo), wamid="wamid.BRAVO")
    assert mark_read_at_meta(str(acme.tenant.pk), str(message.pk)) is False
    assert read_receipts(sim) == []


# --- CSRF and tenant isolation ------------------------------------------------------------------


def test_every_action_needs_the_csrf_token(acme):
    conversation = make_conversation(acme)
    client = Client(enforce_csrf_checks=True)
    client.force_login(acme.owner)
    for action, data in [
        ("reply", {"body": "Hi"}),
        ("template", {"template": ""}),
        ("template/preview", {}),
        ("notes", {"text": "x"}),
        ("assign", {"assignee": ""}),
        ("close", {}),
        ("reopen", {}),
    ]:
        assert client.post(url(conversation, action), data).status_code == 403, action


def test_another_tenant_gets_404_on_every_action(acme, bravo, carol, bob_client):
    conversation = make_conversation(acme)
    actions = [
        ("reply", {"body": "Hi"}),
        ("template", {"template": ""}),
        ("template/preview", {}),
        ("notes", {"text": "x"}),
        ("assign", {"assignee": str(bravo.owner.pk)}),
        ("close", {}),
        ("reopen", {}),
    ]
    # Bob (Bravo only) and Carol while her current workspace is Bravo.
    carol_in_bravo = logged_in_client(carol)
    session = carol_in_bravo.session
    session["klaros_tenant_id"] = str(bravo.tenant.pk)
    session.save()
    for client in (bob_client, carol_in_bravo):
        for action, data in actions:
            assert client.post(url(conversation, action), data).status_code == 404, action
    after = fresh(conversation)
    assert (after.status, after.assigned_to) == ("open", None)
    with tenant_scope(acme.tenant):
        assert not Message.objects.exists()
    assert [e for e in audit_events(acme) if e.action.startswith(("conversation.", "send."))] == []
