"""The spend page in a real Chromium: the chart is drawn from the seeded days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from tests.billing.helpers import MARKETING, body_of, outbound_to, priced
from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD
from tests.conversations.payload_builders import deliver

pytestmark = pytest.mark.browser


def test_it_shows_the_spend_chart_with_a_bar_per_seeded_day(page, live_server, acme):
    now = datetime.now(UTC)
    days = sorted({1, now.day})
    for n, day in enumerate(days):
        message = outbound_to(acme, f"49151123456{n}")
        ts = int(now.replace(day=day, hour=0, minute=30, second=0, microsecond=0).timestamp())
        deliver(Client(), acme, body_of(acme, priced(message.wamid, MARKETING, ts=ts)))

    login(page, live_server, "alice@acme.test", PASSWORD)
    page.get_by_role("link", name="Spend").click()
    page.wait_for_selector("svg[role=img]")
    assert page.locator("h1").inner_text().startswith("Spend, ")
    bars = page.locator("svg[role=img] rect.bar")
    assert bars.count() == len(days)
    assert sorted(int(b.get_attribute("data-day")[-2:]) for b in bars.all()) == days
    assert page.locator("svg[role=img] title").first.text_content().startswith("Spend per day")
    assert csp_violations(page) == []
