"""The operator's audit review in the admin: readable (emails resolved when shown, the row keeps
ids), filterable, read-only for everyone, and exportable as a streamed CSV of the filtered
events with formula-looking cells neutralised."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.audit.presentation import data_summary, neutralise_cell
from apps.audit.services import record
from apps.tenants.scoping import tenant_scope, unscoped
from tests.conftest import logged_in_client

CHANGELIST = "admin:audit_auditevent_changelist"


@pytest.fixture
def operator_client(operator):
    return logged_in_client(operator)


def events(**filters):
    with unscoped("test reads the log"):
        return list(AuditEvent.objects.filter(**filters).order_by("id"))


def csv_rows(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_it_shows_the_actors_email_while_the_row_keeps_only_the_id(acme, operator_client):
    with tenant_scope(acme.tenant):
        event = record("conversation.assigned", acme.tenant, actor=acme.owner, data={"to": "x"})
    assert event.actor_id == str(acme.owner.pk) and "@" not in event.actor_id
    page = operator_client.get(reverse(CHANGELIST)).content.decode()
    assert acme.owner.email in page
    detail = operator_client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))
    assert detail.status_code == 200
    assert acme.owner.email in detail.content.decode()
    assert "<th>to</th><td>x</td>" in detail.content.decode()


def test_it_labels_a_deleted_user_as_former_without_breaking(acme, agnes, operator_client):
    with tenant_scope(acme.tenant):
        record("conversation.closed", acme.tenant, actor=agnes)
    agnes.delete()
    page = operator_client.get(reverse(CHANGELIST)).content.decode()
    assert "A former user" in page


def test_it_filters_by_tenant_action_and_actor(acme, bravo, operator_client):
    with tenant_scope(acme.tenant):
        record("conversation.closed", acme.tenant, actor=acme.owner)
    with tenant_scope(bravo.tenant):
        record("conversation.closed", bravo.tenant, actor=bravo.owner)
    url = reverse(CHANGELIST)
    by_actor = operator_client.get(url, {"actor": str(bravo.owner.pk)})
    assert [e.tenant_id for e in by_actor.context["cl"].result_list] == [bravo.tenant.pk]
    by_tenant = operator_client.get(
        url, {"tenant__id__exact": str(acme.tenant.pk), "action": "conversation.closed"}
    )
    assert [e.actor_id for e in by_tenant.context["cl"].result_list] == [str(acme.owner.pk)]
    by_kind = operator_client.get(url, {"actor": "kind:test"})
    assert {e.actor_type for e in by_kind.context["cl"].result_list} == {"test"}


def test_it_is_read_only_for_every_operator(acme, operator_client):
    [event, *_] = events(tenant=acme.tenant)
    assert operator_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    delete = operator_client.post(
        reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    change = operator_client.post(
        reverse("admin:audit_auditevent_change", args=[event.pk]), {"action": "forged"}
    )
    assert change.status_code == 403
    assert events(pk=event.pk)[0].action == event.action


def test_it_exports_exactly_the_filtered_events_as_csv(acme, bravo, operator_client):
    with tenant_scope(acme.tenant):
        record("conversation.closed", acme.tenant, actor=acme.owner, data={"note": "=1+1"})
    response = operator_client.get(
        reverse("admin:audit_auditevent_export"),
        {"tenant__id__exact": str(acme.tenant.pk), "action": "conversation.closed"},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    [row] = csv_rows(response)
    assert row["actor"] == acme.owner.email
    assert row["tenant_id"] == str(acme.tenant.pk)
    assert row["data"] == '{"note": "=1+1"}'  # JSON text starts with "{": not a formula
    [exported] = events(action="audit.exported")
    assert exported.tenant_id is None  # the operator's export is a deployment event


def test_it_streams_the_export_in_chunks_over_the_whole_filtered_log(acme, operator_client):
    from apps.audit.presentation import stream_events_csv

    with tenant_scope(acme.tenant):
        for index in range(7):
            record("conversation.closed", acme.tenant, actor="test", data={"n": index})
    with unscoped("test"):
        queryset = AuditEvent.objects.filter(action="conversation.closed")
        lines = list(stream_events_csv(queryset, chunk_size=3))
    numbers = [row["data"] for row in csv.DictReader(io.StringIO("".join(lines)))]
    assert numbers == [f'{{"n": {n}}}' for n in range(6, -1, -1)]  # newest first, none twice


def test_only_operators_reach_the_review(acme, alice_client):
    response = alice_client.get(reverse(CHANGELIST))
    assert response.status_code == 302  # the admin's login, not the log
    assert alice_client.get(reverse("admin:audit_auditevent_export")).status_code == 302


@pytest.mark.parametrize("value", ["=SUM(A1)", "+1", "-1", "@cmd", "\tx", "\rx"])
def test_it_neutralises_cells_a_spreadsheet_would_run(value):
    assert neutralise_cell(value) == "'" + value
    assert neutralise_cell("plain") == "plain"


def test_it_summarises_long_data_briefly():
    data = {f"k{i}": "v" * 200 for i in range(8)}
    summary = data_summary(data)
    assert summary.startswith("k0: " + "v" * 79 + "…")
    assert summary.endswith("and 2 more")


VERIFY = "admin:audit_auditevent_verify"


def test_it_shows_every_chain_verified(acme, bravo, operator_client):
    page = operator_client.get(reverse(VERIFY))
    assert page.status_code == 200
    report = page.context["report"]
    assert report.ok
    assert {c.label for c in report.chains} >= {"acme", "bravo", "deployment"}
    assert "verified." in page.content.decode()


def test_it_shows_where_a_tampered_chain_breaks(acme, bravo, operator_client):
    from tests.audit.tampering import chain_of, set_event_data, stored

    with tenant_scope(acme.tenant):
        record("conversation.closed", acme.tenant, actor="test")
    chain = chain_of(acme)
    last = stored(chain)[-1].seq
    set_event_data(chain, last, {"forged": True})
    page = operator_client.get(reverse(VERIFY), {"tenant": str(acme.tenant.pk)})
    [report] = page.context["report"].chains
    assert not report.ok
    assert report.problem.seq == last
    assert f'data-chain="{chain}" data-ok="false"' in page.content.decode()
    # The changelist filtered by the tenant links to the same check.
    listing = operator_client.get(reverse(CHANGELIST), {"tenant__id__exact": str(acme.tenant.pk)})
    assert f"?tenant={acme.tenant.pk}" in listing.content.decode()


def test_it_answers_404_for_an_unknown_tenant(operator_client, acme):
    assert operator_client.get(reverse(VERIFY), {"tenant": "nope"}).status_code == 404
    assert alice_cannot_verify(acme)


def alice_cannot_verify(acme) -> bool:
    return logged_in_client(acme.owner).get(reverse(VERIFY)).status_code == 302
