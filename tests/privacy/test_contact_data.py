"""A contact's own data (an access request): one ZIP with the profile, every message in and out
with its statuses, the consent ledger with evidence, notes and the media files themselves, plus a
summary; from the contact page (owners and admins) and the command line; audited."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.conversations.models import Direction, StatusEvent
from apps.media.models import MediaDirection, MediaKind, MediaObject, MediaState
from apps.media.storage import media_storage, new_storage_key
from apps.privacy.contact_data import ContactNotFound, find_contact
from apps.tenants.scoping import tenant_scope, unscoped
from tests.conftest import logged_in_client
from tests.conversations.factories import make_contact, make_conversation, make_message
from tests.conversations.media_fixtures import media_root_fixture, png  # noqa: F401 (fixture)

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
IMAGE = png()


@pytest.fixture
def dana(acme, bravo, media_root):
    contact = make_contact(acme.tenant, wa_id="15550000001", name="Dana Levi")
    conversation = make_conversation(acme, contact=contact, last_message_at=WHEN)
    make_message(conversation, text="Where is my order?", content={"body": "Where is my order?"})
    out = make_message(
        conversation,
        direction=Direction.OUTBOUND,
        content={"body": "On its way", "_private": "x"},
        status="delivered",
    )
    make_message(
        conversation,
        type="note",
        direction=Direction.NOTE,
        content={"body": "VIP"},
        wamid=None,
        status="note",
        text="VIP customer",
    )
    photo = make_message(conversation, type="image", content={"caption": "box"}, text="box")
    with tenant_scope(acme.tenant):
        StatusEvent.objects.create(
            tenant=acme.tenant, wamid=out.wamid, status="delivered", occurred_at=WHEN
        )
        key = new_storage_key(acme.tenant.pk, "box.png")
        media_storage().save(key, ContentFile(IMAGE))
        MediaObject.objects.create(
            tenant=acme.tenant,
            number=acme.number,
            message=photo,
            direction=MediaDirection.INBOUND,
            kind=MediaKind.IMAGE,
            state=MediaState.STORED,
            storage_key=key,
            safe_name="box.png",
            content_type="image/png",
            size=len(IMAGE),
        )
        record_consent(
            contact,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.KEYWORD,
            actor="customer",
            evidence={"text": "STOP"},
            occurred_at=WHEN,
        )
    other = make_contact(acme.tenant, wa_id="15550000002", name="Someone Else")
    make_message(make_conversation(acme, contact=other), text="not Dana's")
    make_contact(bravo.tenant, wa_id="15550000001", name="Bravo's Dana")
    return contact


def bundle(response) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_it_bundles_everything_the_workspace_holds_about_the_contact(dana, alice_client):
    response = alice_client.get(reverse("export_contact_data", args=[dana.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    archive = bundle(response)
    names = set(archive.namelist())
    assert {"contact.json", "messages.jsonl", "README.txt"} <= names
    document = json.loads(archive.read("contact.json"))
    assert document["profile"]["phone"] == "+15550000001"
    assert [c["business_number"] for c in document["conversations"]] == ["+1 555 0001"]
    [consent] = document["consent"]
    assert (consent["kind"], consent["evidence"]) == ("opt_out", {"text": "STOP"})
    assert [n["text"] for n in document["notes"]] == ["VIP customer"]
    messages = [json.loads(line) for line in archive.read("messages.jsonl").splitlines()]
    assert [m["direction"] for m in messages] == ["in", "out", "in"]
    outbound = messages[1]
    assert outbound["content"] == {"body": "On its way"}  # private keys stay out
    assert [s["status"] for s in outbound["status_history"]] == ["delivered"]
    [media] = document["media"]
    assert archive.read(media["file"]) == IMAGE
    summary = archive.read("README.txt").decode()
    assert "Messages in and out: 3" in summary and "Media files: 1" in summary


def test_it_holds_nothing_of_anyone_else(dana, alice_client):
    archive = bundle(alice_client.get(reverse("export_contact_data", args=[dana.pk])))
    text = b"".join(archive.read(n) for n in archive.namelist() if not n.startswith("media/"))
    assert b"not Dana's" not in text and b"Someone Else" not in text and b"Bravo" not in text


def test_it_is_audited_with_counts_only(dana, acme, alice_client):
    alice_client.get(reverse("export_contact_data", args=[dana.pk]))
    with unscoped("test reads the log"):
        [event] = AuditEvent.objects.filter(action="contact.data_exported")
    assert event.object_id == str(dana.pk)
    assert event.data == {
        "messages": 3,
        "notes": 1,
        "consent_events": 1,
        "media_files": 1,
        "via": "inbox",
    }


def test_it_is_for_owners_and_admins_of_the_contacts_tenant(dana, agnes, bob_client):
    url = reverse("export_contact_data", args=[dana.pk])
    assert logged_in_client(agnes).get(url).status_code == 403
    assert bob_client.get(url).status_code == 404


def test_the_contact_page_offers_it_to_admins_only(dana, alice_client, agnes):
    link = reverse("export_contact_data", args=[dana.pk])
    assert link in alice_client.get(reverse("contact", args=[dana.pk])).content.decode()
    agent_page = logged_in_client(agnes).get(reverse("contact", args=[dana.pk]))
    assert link not in agent_page.content.decode()


def test_the_command_finds_the_contact_by_any_spelling_of_the_number(dana, tmp_path, capsys):
    target = tmp_path / "dana.zip"
    call_command("export_contact_data", "acme", "+1 (555) 000-0001", "--output", str(target))
    archive = zipfile.ZipFile(target)
    assert json.loads(archive.read("contact.json"))["profile"]["id"] == str(dana.pk)
    assert "3 messages" in capsys.readouterr().out
    assert not (tmp_path / "dana.zip.partial").exists()


def test_the_command_refuses_bad_input(dana, tmp_path):
    with pytest.raises(CommandError, match="No tenant"):
        call_command("export_contact_data", "nope", "15550000001")
    with pytest.raises(CommandError, match="No contact"):
        call_command("export_contact_data", "acme", "15559999999")
    with pytest.raises(CommandError, match="does not exist"):
        call_command(
            "export_contact_data", "acme", "15550000001", "-o", str(tmp_path / "x" / "y.zip")
        )


def test_it_finds_a_phone_less_contact_by_bsuid(acme):
    contact = make_contact(acme.tenant, wa_id="", user_id="US.13491208655302741918")
    with tenant_scope(acme.tenant):
        assert find_contact(acme.tenant.pk, "US.13491208655302741918") == contact
        with pytest.raises(ContactNotFound):
            find_contact(acme.tenant.pk, "")
