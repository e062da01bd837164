"""import_rate_card and export_charges."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from apps.billing.models import RateCardEntry
from apps.billing.services import CSV_COLUMNS
from tests.conversations.payload_builders import deliver

from .helpers import MARKETING, UTILITY, body_of, outbound_to, priced


def write(tmp_path, text):
    path = tmp_path / "rates.csv"
    path.write_text(text)
    return path


GOOD = (
    "market,category,currency,price,valid_from\n"
    "DE,marketing,EUR,0.1365,2026-01-01\n"
    "*,utility,USD,0.03,2025-07-01\n"
)


def test_it_imports_a_rate_card_once(db, tmp_path):
    path = write(tmp_path, GOOD)
    call_command("import_rate_card", str(path), stdout=io.StringIO())
    out = io.StringIO()
    call_command("import_rate_card", str(path), stdout=out)
    assert "0 entr(ies) added, 0 changed, 2 unchanged" in out.getvalue()
    rows = sorted(RateCardEntry.objects.values_list("market", "category", "currency", "price"))
    assert rows == [
        ("*", "utility", "USD", Decimal("0.030000")),
        ("DE", "marketing", "EUR", Decimal("0.136500")),
    ]


def test_bad_rows_are_reported_by_line_and_nothing_is_written(db, tmp_path):
    path = write(
        tmp_path,
        GOOD
        + "Germany,marketing,EUR,0.1,2026-01-01\n"
        + "FR,utility,EURO,-1,2026-13-01\n"
        + "DE,marketing,EUR,0.2,2026-01-01\n",
    )
    with pytest.raises(CommandError) as raised:
        call_command("import_rate_card", str(path))
    message = str(raised.value)
    assert "line 4: market 'Germany'" in message
    assert "line 5: currency 'EURO'" in message
    assert "price '-1'" in message and "valid_from '2026-13-01'" in message
    assert "line 6: repeats line 2" in message
    assert "line 2" not in message.replace("repeats line 2", "")
    assert RateCardEntry.objects.count() == 0


def test_a_missing_column_is_refused(db, tmp_path):
    with pytest.raises(CommandError, match="missing column"):
        call_command("import_rate_card", str(write(tmp_path, "market,category\nDE,x\n")))


def _ts(day):
    return int(datetime(2026, 1, day, 9, tzinfo=UTC).timestamp())


def test_it_exports_the_tenant_charges_with_the_columns_and_date_filters(
    client, acme, bravo, tmp_path
):
    RateCardEntry.objects.create(
        market="DE",
        category="marketing",
        currency="EUR",
        price=Decimal("0.1365"),
        valid_from=date(2026, 1, 1),
    )
    m1, m2 = (outbound_to(acme, f"491511234567{n}") for n in range(2))
    deliver(
        client,
        acme,
        body_of(
            acme,
            priced(m1.wamid, MARKETING, ts=_ts(5)),
            priced(m2.wamid, UTILITY, ts=_ts(10)),
            priced("=HYPERLINK(1)", MARKETING, ts=_ts(20)),
        ),
    )
    other = outbound_to(bravo, "4915112345670")
    deliver(client, bravo, body_of(bravo, priced(other.wamid, MARKETING, ts=_ts(10))))

    output = tmp_path / "charges.csv"
    call_command("export_charges", "acme", "--output", str(output), stderr=io.StringIO())
    rows = list(csv.reader(output.open()))
    assert (
        tuple(rows[0])
        == CSV_COLUMNS
        == (
            "occurred_at",
            "wamid",
            "number",
            "recipient market",
            "category",
            "pricing model",
            "billable",
            "type",
            "rate",
            "currency",
        )
    )
    assert [r[1] for r in rows[1:]] == [m1.wamid, m2.wamid, "'=HYPERLINK(1)"]
    # "+1 555 ..." starts like a formula: neutralised as well.
    assert rows[1] == [
        "2026-01-05T09:00:00+00:00",
        m1.wamid,
        "'" + acme.number.display_phone_number,
        "DE",
        "marketing",
        "PMP",
        "true",
        "regular",
        "0.136500",
        "EUR",
    ]
    assert rows[2][8:] == ["no rate", ""]
    assert other.wamid not in output.read_text()

    call_command(
        "export_charges",
        "acme",
        "--since",
        "2026-01-10",
        "--until",
        "2026-01-10",
        "--output",
        str(output),
        stderr=io.StringIO(),
    )
    assert [r[1] for r in csv.reader(output.open())][1:] == [m2.wamid]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nobody"], "no tenant with slug"),
        (["acme", "--since", "yesterday"], "--since 'yesterday' is not a YYYY-MM-DD date"),
        (["acme", "--since", "2026-02-01", "--until", "2026-01-01"], "--since is after --until"),
    ],
)
def test_bad_export_arguments_are_clear_errors(acme, args, error):
    with pytest.raises(CommandError, match=error):
        call_command("export_charges", *args)
