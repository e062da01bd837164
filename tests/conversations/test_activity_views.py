"""Activity: owners and admins read their workspace's own audit trail (never another
tenant's), in words, filtered by kind, paged, and as a CSV."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.conversations.inbox.activity import ACTIVITY_PAGE_SIZE
from apps.tenants.scoping import tenant_scope, unscoped
from tests.conftest import logged_in_client

URL = reverse("inbox_activity")


def csv_rows(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_it_shows_the_workspaces_events_in_words(acme, alice_client):
    with tenant_scope(acme.tenant):
        record("conversation.closed", acme.tenant, actor=acme.owner, data={"status": "closed"})
    response = alice_client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-action="conversation.closed"' in page
    assert acme.owner.email in page
    assert "status: closed" in page


def test_it_never_shows_another_tenants_events(acme, bravo, alice_client, bob_client):
    with tenant_scope(bravo.tenant):
        record("conversation.closed", bravo.tenant, actor=bravo.owner, data={"secret": "x"})
    page = alice_client.get(URL).content.decode()
    assert bravo.owner.email not in page
    rows = csv_rows(alice_client.get(reverse("inbox_activity_export")))
    assert rows and {r["tenant_id"] for r in rows} == {str(acme.tenant.pk)}
    with unscoped("test"):
        bravo_event = AuditEvent.objects.filter(tenant=bravo.tenant).latest("id")
    # Paging from another tenant's event is a 404, like every lookup of another tenant's row.
    assert alice_client.get(URL, {"before": bravo_event.pk}).status_code == 404
    assert bob_client.get(URL, {"before": bravo_event.pk}).status_code == 200


def test_it_is_for_owners_and_admins_only(acme, agnes):
    agent = logged_in_client(agnes)
    assert agent.get(URL).status_code == 403
    assert agent.get(reverse("inbox_activity_export")).status_code == 403


def test_it_names_operators_without_their_email(acme, operator, alice_client):
    with tenant_scope(acme.tenant):
        record("number.credentials_changed", acme.number, actor=operator)
    page = alice_client.get(URL).content.decode()
    assert operator.email not in page
    assert "A Klaros operator" in page


def test_it_filters_by_kind_and_pages_back_without_repeating(acme, alice_client):
    with tenant_scope(acme.tenant):
        for index in range(ACTIVITY_PAGE_SIZE + 5):
            record("send.queued", acme.tenant, actor="test", data={"n": index})
        record("consent.opt_out", acme.tenant, actor="test")
    first = alice_client.get(URL, {"kind": "send"})
    shown = [e.data["n"] for e in first.context["events"]]
    assert len(shown) == ACTIVITY_PAGE_SIZE
    assert all(e.action == "send.queued" for e in first.context["events"])
    second = alice_client.get(URL + first.context["next_url"])
    rest = [e.data["n"] for e in second.context["events"]]
    assert sorted(shown + rest) == list(range(ACTIVITY_PAGE_SIZE + 5))
    assert second.context["next_url"] == ""
    unknown = alice_client.get(URL, {"kind": "nonsense"})
    assert unknown.context["kind"] == ""


def test_it_audits_the_export(acme, alice_client):
    alice_client.get(reverse("inbox_activity_export"), {"kind": "consent"})
    with unscoped("test"):
        [event] = AuditEvent.objects.filter(action="audit.exported")
    assert (event.tenant_id, event.data) == (acme.tenant.pk, {"kind": "consent"})


@pytest.mark.parametrize("before", ["abc", "999999999"])
def test_it_answers_404_for_a_bad_cursor(acme, alice_client, before):
    assert alice_client.get(URL, {"before": before}).status_code == 404
