"""The spend page and its CSV: they agree with the ledger, and only the tenant's admins see them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

from django.urls import reverse

from apps.billing.models import Charge, RateCardEntry
from apps.tenants.scoping import tenant_scope
from tests.conftest import logged_in_client
from tests.conversations.payload_builders import deliver

from .helpers import MARKETING, UTILITY, body_of, outbound_to, priced

SPEND = reverse("inbox_spend")
CSV = reverse("inbox_spend_csv")


def _ts(day, hour=9):
    return int(datetime(2026, 1, day, hour, tzinfo=UTC).timestamp())


def seed_january(client, world, wa_prefix="49151123456"):
    RateCardEntry.objects.get_or_create(
        market="DE",
        category="marketing",
        valid_from=date(2026, 1, 1),
        defaults={"currency": "EUR", "price": Decimal("0.1365")},
    )
    messages = [outbound_to(world, f"{wa_prefix}{n:02d}") for n in range(3)]
    deliver(
        client,
        world,
        body_of(
            world,
            priced(messages[0].wamid, MARKETING, ts=_ts(3)),
            priced(messages[1].wamid, MARKETING, ts=_ts(3, 15)),
            priced(messages[2].wamid, UTILITY, ts=_ts(17)),
        ),
    )
    return messages


def test_the_page_and_the_csv_agree_with_the_ledger(client, acme, alice_client):
    seed_january(client, acme)
    response = alice_client.get(SPEND, {"month": "2026-01"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-total-charges="3"' in page
    assert "0.273000 EUR" in page  # two marketing messages in DE
    assert "1 with no rate" in page  # the utility one
    assert page.count('class="bar"') == 2  # two days with charges
    assert 'data-day="2026-01-03"' in page and 'data-day="2026-01-17"' in page
    assert '<title id="spend-chart-title">' in page
    assert acme.number.display_phone_number in page

    response = alice_client.get(CSV, {"month": "2026-01"})
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="charges-acme-2026-01.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    with tenant_scope(acme.tenant):
        ledger = sorted(Charge.objects.values_list("wamid", flat=True))
    assert sorted(r[1] for r in rows[1:]) == ledger
    assert sum(Decimal(r[8]) for r in rows[1:] if r[8] != "no rate") == Decimal("0.273")


def test_another_month_shows_nothing(client, acme, alice_client):
    seed_january(client, acme)
    page = alice_client.get(SPEND, {"month": "2026-02"}).content.decode()
    assert 'data-total-charges="0"' in page and 'class="bar"' not in page


def test_bravo_never_sees_acme_charges(client, acme, bravo, bob_client):
    seed_january(client, acme)
    page = bob_client.get(SPEND, {"month": "2026-01"}).content.decode()
    assert 'data-total-charges="0"' in page
    assert acme.number.display_phone_number not in page
    # Acme's number on Bravo's spend page: the same 404 as a number that does not exist.
    assert bob_client.get(SPEND, {"month": "2026-01", "number": acme.number.pk}).status_code == 404
    csv_text = b"".join(bob_client.get(CSV, {"month": "2026-01"}).streaming_content).decode()
    assert csv_text.strip().count("\n") == 0  # the header only


def test_a_number_filter_shows_that_number_only(client, acme, alice_client):
    seed_january(client, acme)
    response = alice_client.get(SPEND, {"month": "2026-01", "number": acme.number.pk})
    assert response.status_code == 200
    assert 'data-total-charges="3"' in response.content.decode()


def test_agents_are_refused(acme, agnes):
    client = logged_in_client(agnes)
    assert client.get(SPEND).status_code == 403
    assert client.get(CSV).status_code == 403


def test_the_nav_links_the_spend_page_for_admins_only(acme, agnes, alice_client):
    assert SPEND in alice_client.get(reverse("inbox")).content.decode()
    assert SPEND not in logged_in_client(agnes).get(reverse("inbox")).content.decode()


def test_a_bad_month_is_not_found(acme, alice_client):
    assert alice_client.get(SPEND, {"month": "2026-13"}).status_code == 404


def test_operators_see_every_tenant_in_the_admin(client, acme, bravo, operator):
    seed_january(client, acme)
    seed_january(client, bravo, wa_prefix="49151123457")
    admin = logged_in_client(operator)
    changelist = admin.get(reverse("admin:billing_charge_changelist"), {"month": "2026-01"})
    assert changelist.status_code == 200
    summary = admin.get(reverse("admin:billing_charge_spend"), {"month": "2026-01"})
    page = summary.content.decode()
    assert summary.status_code == 200
    assert "Acme (acme)" in page and "Bravo (bravo)" in page
    assert "0.546000 EUR" in page  # both tenants' marketing charges
