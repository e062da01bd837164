"""The contact-book export: every contact of the tenant and no other's, with activity and current
consent per scope, formula cells neutralised, streamed in chunks from the first byte, audited
with the row count; from the inbox (owners and admins) and from the command line."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.conversations.models import Direction
from apps.privacy.contact_export import COLUMNS, contact_rows
from apps.privacy.services import ContactExport, ExportError
from apps.tenants.scoping import tenant_scope, unscoped
from tests.conftest import logged_in_client
from tests.conversations.factories import make_contact, make_conversation, make_message

URL = reverse("export_contacts")
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def exports(**filters) -> list[AuditEvent]:
    with unscoped("test reads the log"):
        return list(AuditEvent.objects.filter(action="contacts.exported", **filters).order_by("id"))


@pytest.fixture
def book(acme, bravo):
    """Acme: three contacts (one with activity and consent, one BSUID-only, one whose name is a
    formula); Bravo: one canary contact."""
    dana = make_contact(acme.tenant, wa_id="15550000001", name="Dana Levi")
    conversation = make_conversation(acme, contact=dana, last_message_at=WHEN)
    make_message(conversation, direction=Direction.OUTBOUND, sent_at=WHEN)
    with tenant_scope(acme.tenant):
        record_consent(
            dana,
            kind=ConsentKind.OPT_IN,
            scope=ConsentScope.MARKETING,
            source=ConsentSource.FORM,
            actor="test",
            occurred_at=WHEN,
        )
        record_consent(
            dana,
            kind=ConsentKind.OPT_OUT,
            scope=ConsentScope.ALL,
            source=ConsentSource.KEYWORD,
            actor="customer",
            occurred_at=WHEN.replace(day=2),
        )
    make_contact(acme.tenant, wa_id="", user_id="US.13491208655302741918", name="Eli")
    make_contact(acme.tenant, wa_id="15550000003", name='=HYPERLINK("http://x")')
    make_contact(bravo.tenant, wa_id="15559999999", name="Bravo canary")
    return dana


def test_it_exports_every_contact_of_the_tenant_and_no_other(book, alice_client):
    response = alice_client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = body(response)
    rows = rows_of(text)
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 3
    assert "canary" not in text and "15559999999" not in text


def test_it_gives_activity_and_consent_per_scope(book, alice_client):
    rows = {r["name"]: r for r in rows_of(body(alice_client.get(URL)))}
    dana = rows["Dana Levi"]
    assert dana["phone"] == "15550000001"
    assert dana["conversations"] == "1"
    assert dana["last_inbound_at"] == WHEN.isoformat(timespec="microseconds")
    assert dana["last_outbound_at"] == WHEN.isoformat(timespec="microseconds")
    # STOP (all) after a marketing opt-in: suppressed, and marketing counts as opted out too.
    assert (dana["consent_all"], dana["consent_all_source"]) == ("opt_out", "keyword")
    assert dana["consent_all_since"] == WHEN.replace(day=2).isoformat(timespec="microseconds")
    assert dana["consent_marketing"] == "opt_out"
    eli = rows["Eli"]
    assert (eli["phone"], eli["bsuid"]) == ("", "US.13491208655302741918")
    assert (eli["conversations"], eli["consent_all"], eli["consent_marketing"]) == ("0", "", "")


def test_it_neutralises_cells_a_spreadsheet_would_run(book, alice_client):
    names = [r["name"] for r in rows_of(body(alice_client.get(URL)))]
    assert '\'=HYPERLINK("http://x")' in names


def test_it_reads_in_chunks_without_losing_or_repeating_a_contact(acme):
    for index in range(7):
        make_contact(acme.tenant, wa_id=f"1555000{index:04d}")
    rows = list(contact_rows(acme.tenant.pk, chunk=3))
    assert len(rows) == 7
    assert len({r[0] for r in rows}) == 7
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_it_sends_the_header_before_any_query(book, acme, django_assert_num_queries):
    export = ContactExport(acme.tenant, actor="test", via="test")
    pieces = iter(export)
    with django_assert_num_queries(0):
        header = next(pieces)
    assert header.strip() == ",".join(COLUMNS)
    export.close()


def test_it_audits_the_export_with_its_row_count(book, acme, alice_client):
    body(alice_client.get(URL))
    [event] = exports()
    assert event.tenant_id == acme.tenant.pk
    assert event.actor_id == str(acme.owner.pk)
    assert event.data == {"rows": 3, "format": "csv", "complete": True, "via": "inbox"}


def test_it_audits_an_export_the_reader_stopped(book, acme):
    export = ContactExport(acme.tenant, actor="test", via="test")
    pieces = iter(export)
    next(pieces)
    next(pieces)
    export.close()
    [event] = exports()
    assert event.data["complete"] is False


def test_it_is_for_owners_and_admins(book, agnes):
    assert logged_in_client(agnes).get(URL).status_code == 403


def test_each_owner_gets_their_own_book(book, bob_client):
    rows = rows_of(body(bob_client.get(URL)))
    assert [r["name"] for r in rows] == ["Bravo canary"]


def test_the_command_writes_csv_to_stdout(book, capsys):
    call_command("export_contacts", "acme")
    captured = capsys.readouterr()
    assert len(rows_of(captured.out)) == 3
    assert "3 contacts of acme" in captured.err


def test_the_command_writes_json_lines_to_a_file(book, tmp_path):
    target = tmp_path / "book.jsonl"
    call_command("export_contacts", "acme", "--output", str(target), "--format", "jsonl")
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == 3
    assert {line["name"] for line in lines} >= {"Dana Levi", '=HYPERLINK("http://x")'}
    [event] = exports()
    assert event.data["via"] == "cli" and event.data["format"] == "jsonl"


def test_the_command_refuses_bad_input(book, tmp_path):
    with pytest.raises(CommandError, match="No tenant"):
        call_command("export_contacts", "nope")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("export_contacts", "acme", "--output", str(tmp_path / "missing" / "x.csv"))
    with pytest.raises(CommandError):
        call_command("export_contacts", "acme", "--format", "xlsx")
    with pytest.raises(ExportError):
        ContactExport(book.tenant, actor="test", fmt="xlsx", via="test")


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_postgresql_reads_the_next_chunk_ahead_with_the_same_rows(
    acme, bravo
):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the read-ahead runs on PostgreSQL only (a second connection)")
    import threading

    for index in range(7):
        make_contact(acme.tenant, wa_id=f"1555100{index:04d}")
    make_contact(bravo.tenant, wa_id="15559999999", name="Bravo canary")
    threads_before = {t.name for t in threading.enumerate()}
    rows = list(contact_rows(acme.tenant.pk, chunk=3))
    assert len(rows) == 7 and len({r[0] for r in rows}) == 7
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(r[1] != "15559999999" for r in rows)
    # The reader thread is gone, and so is its connection.
    leftover = {t.name for t in threading.enumerate()} - threads_before
    assert not any(name.startswith("contact-export") for name in leftover)
    # Abandoned after the first row: the reader still ends.
    pieces = contact_rows(acme.tenant.pk, chunk=3)
    next(pieces)
    pieces.close()
    assert not any(t.name.startswith("contact-export") for t in threading.enumerate())
