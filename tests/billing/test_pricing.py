"""Pricing charges with the rate card: Decimal amounts, the valid_from rule, the * market."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from apps.billing.models import Charge, RateCardEntry
from apps.billing.services import RateCard, charge_facts, month_spend
from apps.tenants.scoping import tenant_scope
from tests.conversations.payload_builders import deliver

from .helpers import (
    CBP_CONVERSATION,
    FREE_SERVICE,
    MARKETING,
    UTILITY,
    body_of,
    outbound_to,
    priced,
)

JAN_10 = int(datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp())
JAN_20 = int(datetime(2026, 1, 20, 12, tzinfo=UTC).timestamp())


def rate(market, category, price, valid_from, currency="USD"):
    return RateCardEntry.objects.create(
        market=market,
        category=category,
        currency=currency,
        price=Decimal(price),
        valid_from=valid_from,
    )


def test_it_prices_marketing_utility_free_and_cbp_charges(client, acme):
    rate("DE", "marketing", "0.1365", date(2026, 1, 1), "EUR")
    rate("DE", "marketing", "0.1500", date(2026, 1, 15), "EUR")  # a raise mid-month
    rate("DE", "marketing", "0.2000", date(2026, 2, 1), "EUR")  # not valid yet in January
    rate("*", "utility", "0.0300", date(2025, 7, 1))
    rate("GB", "utility", "0.0220", date(2026, 1, 1))
    messages = [
        outbound_to(acme, wa)
        for wa in ("4915112345678", "4915112345679", "447700900123", "5511987654321", "15551230001")
    ]
    de1, de2, gb, br, us = messages
    deliver(
        client,
        acme,
        body_of(
            acme,
            priced(de1.wamid, MARKETING, ts=JAN_10),
            priced(de2.wamid, MARKETING, ts=JAN_20),
            priced(gb.wamid, UTILITY, ts=JAN_10),
            priced(
                br.wamid,
                {"billable": True, "pricing_model": "CBP", "category": "utility"},
                ts=JAN_10,
                conversation=CBP_CONVERSATION,
            ),
            priced(us.wamid, FREE_SERVICE, ts=JAN_10),
        ),
    )
    card = RateCard.load()
    with tenant_scope(acme.tenant):
        by_wamid = {c.wamid: c for c in Charge.objects.all()}
    assert set(by_wamid) == {de1.wamid, de2.wamid, gb.wamid, br.wamid}  # the free one: no charge

    def price(message):
        c = by_wamid[message.wamid]
        found = card.price(c.market, c.category, c.billable, c.occurred_at.date())
        return (found.price, found.currency)

    assert price(de1) == (Decimal("0.1365"), "EUR")
    assert price(de2) == (Decimal("0.1500"), "EUR")
    assert price(gb) == (Decimal("0.0220"), "USD")
    assert price(br) == (Decimal("0.0300"), "USD")  # BR has no utility entry: the * market
    assert isinstance(price(de1)[0], Decimal)

    with tenant_scope(acme.tenant):
        spend = month_spend(date(2026, 1, 1))
    assert spend.total.charges == 4
    assert spend.total.amounts == {"EUR": Decimal("0.2865"), "USD": Decimal("0.0520")}
    assert spend.by_category["marketing"].amounts == {"EUR": Decimal("0.2865")}
    assert spend.total.unpriced == 0


def test_a_billable_charge_without_a_rate_is_no_rate_and_not_zero(client, acme):
    rate("DE", "marketing", "0.1365", date(2026, 1, 15))  # only from after the message
    message = outbound_to(acme, "4915112345678")
    deliver(client, acme, body_of(acme, priced(message.wamid, MARKETING, ts=JAN_10)))
    card = RateCard.load()
    assert card.price("DE", "marketing", True, date(2026, 1, 10)) is None
    with tenant_scope(acme.tenant):
        spend = month_spend(date(2026, 1, 1))
    assert (spend.total.charges, spend.total.unpriced, spend.total.amounts) == (1, 1, {})


def test_a_free_charge_costs_zero():
    card = RateCard(
        [
            RateCardEntry(
                market="DE",
                category="utility",
                currency="EUR",
                price=Decimal("0.05"),
                valid_from=date(2026, 1, 1),
            )
        ]
    )
    found = card.price("DE", "utility", False, date(2026, 1, 2))
    assert (found.price, found.currency) == (Decimal("0"), "EUR")


def test_billability_follows_type_before_the_deprecated_flag():
    facts = charge_facts(
        {
            "billable": True,
            "pricing_model": "PMP",
            "type": "free_entry_point",
            "category": "referral_conversion",
        }
    )
    assert facts.billable is False
    facts = charge_facts(
        {"billable": True, "pricing_model": "PMP", "category": "authentication-international"}
    )
    assert (facts.billable, facts.category) == (True, "authentication_international")
    assert charge_facts({"pricing_model": "PMP"}) is None
