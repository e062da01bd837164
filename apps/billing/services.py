"""Recording charges from Meta's pricing objects, and pricing them with the rate card.

`record_charges` is the one entry point the webhook ingest calls, from its per-event path and
from its batched drain alike, so both record the same rows. Everything else here reads: the
rate card lookup, the month's spend, and the CSV rows the spend page and `export_charges`
share.
"""

from __future__ import annotations

import bisect
import functools
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal

import phonenumbers
from django.db import connection, transaction
from django.db.models import Count
from django.db.models.functions import TruncDate

from apps.audit.presentation import neutralise_cell
from apps.audit.services import record_many
from apps.conversations.models import Direction, Message

from .models import DEFAULT_MARKET, UNKNOWN_MARKET, Charge, PricingModel, RateCardEntry

# --- From Meta's pricing object to a charge ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PricedStatus:
    """What a status webhook says about a message's price, in terms billing understands (the
    ingest builds these; billing never sees webhook payload types)."""

    number_id: uuid.UUID
    wamid: str
    occurred_at: datetime
    recipient_id: str  # the recipient's phone digits, "" when Meta names a BSUID only
    pricing: Mapping
    conversation: Mapping | None = None


@dataclass(frozen=True, slots=True)
class ChargeFacts:
    category: str
    pricing_model: str
    billable: bool
    pricing_type: str
    conversation_id: str


# Meta's own table once spells this category with a hyphen.
_CATEGORY_SPELLINGS = {"authentication-international": "authentication_international"}
# `type` values that cost nothing. Meta deprecates `billable` in favour of `type`.
FREE_TYPES = frozenset({"free_customer_service", "free_entry_point"})


def charge_facts(pricing: Mapping, conversation: Mapping | None = None) -> ChargeFacts | None:
    """The charge a pricing object describes, or None when it names no category at all.

    Billability comes from `type` when Meta sends one (`regular` is charged, `free_*` is not;
    `billable` is being deprecated) and from `billable` otherwise (conversation-based pricing
    and webhooks older than v24). The category falls back to the conversation's origin type,
    which is all some CBP webhooks carry."""
    if not isinstance(pricing, Mapping):
        return None
    origin = {}
    if isinstance(conversation, Mapping) and isinstance(conversation.get("origin"), Mapping):
        origin = conversation["origin"]
    category = _text(pricing.get("category")) or _text(origin.get("type"))
    category = category.lower()
    category = _CATEGORY_SPELLINGS.get(category, category)[:40]
    if not category:
        return None
    model = (_text(pricing.get("pricing_model")) or PricingModel.PMP).upper()[:8]
    kind = _text(pricing.get("type")).lower()[:40]
    billable = kind not in FREE_TYPES if kind else pricing.get("billable") is True
    conversation_id = ""
    if model == PricingModel.CBP and isinstance(conversation, Mapping):
        conversation_id = _text(conversation.get("id"))[:100]
    return ChargeFacts(category, model, billable, kind, conversation_id)


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


@functools.lru_cache(maxsize=8192)
def market_of(phone_digits: str) -> str:
    """The ISO country of a phone number given as Meta's digits, "unknown" without one.

    A number `phonenumbers` cannot place in one region (a test range such as +1 555 01xx, or
    a block it does not know yet) goes to its calling code's main country: Meta prices by
    calling code, and +1 is priced as North America either way."""
    digits = "".join(ch for ch in phone_digits or "" if ch.isdigit())
    if not digits:
        return UNKNOWN_MARKET
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return UNKNOWN_MARKET
    region = phonenumbers.region_code_for_number(number)
    if not region or region == "001":
        region = phonenumbers.region_code_for_country_code(number.country_code)
    if not region or region in ("ZZ", "001"):
        return UNKNOWN_MARKET
    return region


_IN_CHUNK = 5000


def record_charges(
    tenant_id: uuid.UUID, statuses: Sequence[PricedStatus], *, actor="meta"
) -> list[uuid.UUID]:
    """Record the billable charges these statuses carry for one tenant (inside its scope);
    returns the ids of the charges that are new. Free pricing objects are not recorded.

    Idempotent by the unique (tenant, wamid, category) index: the first status naming a
    charge wins (its timestamp is the charge's time), repeats in the same batch are dropped
    here, and repeats already stored, or being stored by another drain at the same moment,
    are skipped by the INSERT (`ON CONFLICT DO NOTHING`). Each new charge gets its
    `charge.recorded` audit event in the same transaction; a skipped one gets none."""
    first: dict[tuple[str, str], tuple[PricedStatus, ChargeFacts]] = {}
    for status in statuses:
        facts = charge_facts(status.pricing, status.conversation)
        if facts is None or not facts.billable:
            continue  # free messages cost nothing and are not charges (docs/billing.md)
        first.setdefault((status.wamid, facts.category), (status, facts))
    if not first:
        return []
    ours: dict[str, tuple[uuid.UUID, str]] = {}
    wamids = sorted({wamid for wamid, _category in first})
    for start in range(0, len(wamids), _IN_CHUNK):
        chunk = wamids[start : start + _IN_CHUNK]
        for wamid, pk, wa_id in Message.objects.filter(
            wamid__in=chunk, direction=Direction.OUTBOUND
        ).values_list("wamid", "pk", "conversation__contact__wa_id"):
            ours[wamid] = (pk, wa_id)
    rows = []
    for (wamid, _category), (status, facts) in first.items():
        message_id, wa_id = ours.get(wamid, (None, ""))
        rows.append(
            {
                "id": uuid.uuid4(),
                "number_id": status.number_id,
                "message_id": message_id,
                "wamid": wamid[:200],
                "market": market_of(wa_id or status.recipient_id),
                "category": facts.category,
                "pricing_model": facts.pricing_model,
                "billable": facts.billable,
                "pricing_type": facts.pricing_type,
                "conversation_id": facts.conversation_id,
                "occurred_at": status.occurred_at,
            }
        )
    with transaction.atomic():
        inserted = _insert_new(tenant_id, rows)
        record_many(
            [
                (
                    "charge.recorded",
                    _AuditedCharge(row["id"], tenant_id),
                    {
                        "category": row["category"],
                        "number_id": str(row["number_id"]),
                        "message_id": str(row["message_id"]) if row["message_id"] else None,
                    },
                )
                for row in rows
                if row["id"] in inserted
            ],
            actor=actor,
            tenant=tenant_id,
        )
    return [row["id"] for row in rows if row["id"] in inserted]


@dataclass(frozen=True, slots=True)
class _AuditedCharge:
    """What the audit log reads of a charge (label and id), without building a model
    instance per row of a drain batch."""

    pk: uuid.UUID
    tenant_id: uuid.UUID

    class _meta:  # the shape of a model's _meta that audit reads
        label = Charge._meta.label


_COLUMNS = (
    ("id", "uuid"),
    ("number_id", "uuid"),
    ("message_id", "uuid"),
    ("wamid", "varchar"),
    ("market", "varchar"),
    ("category", "varchar"),
    ("pricing_model", "varchar"),
    ("billable", "boolean"),
    ("pricing_type", "varchar"),
    ("conversation_id", "varchar"),
    ("occurred_at", "timestamptz"),
)
# Only the column names and types listed above are interpolated.
_PG_INSERT = (  # noqa: S608
    "INSERT INTO billing_charge (tenant_id, recorded_at, {columns}) "
    "SELECT %s::uuid, now(), {selected} FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
    "ON CONFLICT DO NOTHING RETURNING id"
).format(
    columns=", ".join(name for name, _ in _COLUMNS),
    selected=", ".join(f"r.{name}" for name, _ in _COLUMNS),
    record=", ".join(f"{name} {kind}" for name, kind in _COLUMNS),
)


def _insert_new(tenant_id: uuid.UUID, rows: list[dict]) -> set[uuid.UUID]:
    """INSERT the rows, skipping those the unique index already holds; the ids inserted.

    The ids are generated here, so the ids present afterwards are exactly the rows this
    transaction wrote: a row another drain committed first has another id. On PostgreSQL the
    rows travel as one JSON parameter per 1,000 (a drain batch records thousands); elsewhere
    `bulk_create` and a SELECT of the ids."""
    inserted: set[uuid.UUID] = set()
    if connection.vendor == "postgresql":
        for start in range(0, len(rows), 1000):
            document = [
                {
                    **row,
                    "id": str(row["id"]),
                    "number_id": str(row["number_id"]),
                    "message_id": str(row["message_id"]) if row["message_id"] else None,
                    "occurred_at": row["occurred_at"].isoformat(),
                }
                for row in rows[start : start + 1000]
            ]
            with connection.cursor() as cursor:
                cursor.execute(
                    _PG_INSERT, [str(tenant_id), json.dumps(document, separators=(",", ":"))]
                )
                inserted.update(uuid.UUID(str(pk)) for (pk,) in cursor.fetchall())
        return inserted
    Charge.objects.bulk_create(
        [Charge(tenant_id=tenant_id, **row) for row in rows], ignore_conflicts=True
    )
    ids = [row["id"] for row in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        inserted.update(
            Charge.objects.filter(pk__in=ids[start : start + _IN_CHUNK]).values_list(
                "pk", flat=True
            )
        )
    return inserted


# --- The rate card -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    price: Decimal
    currency: str
    valid_from: date


class RateCard:
    """Every rate card entry, loaded once per page or export, looked up in memory.

    `rate_for` takes the entry of the charge's market and category with the latest
    `valid_from` on or before the charge's UTC day; without one, the `*` market's entry of the
    category by the same rule; without that, None ("no rate", never 0)."""

    def __init__(self, entries: Iterable[RateCardEntry]) -> None:
        self._index: dict[tuple[str, str], tuple[list[date], list[Rate]]] = {}
        for entry in sorted(entries, key=lambda e: e.valid_from):
            days, rates = self._index.setdefault((entry.market, entry.category), ([], []))
            days.append(entry.valid_from)
            rates.append(Rate(entry.price, entry.currency, entry.valid_from))

    @classmethod
    def load(cls) -> RateCard:
        return cls(RateCardEntry.objects.all())

    def rate_for(self, market: str, category: str, day: date) -> Rate | None:
        for key in ((market, category), (DEFAULT_MARKET, category)):
            found = self._index.get(key)
            if found is None:
                continue
            days, rates = found
            position = bisect.bisect_right(days, day)
            if position:
                return rates[position - 1]
        return None

    def price(self, market: str, category: str, billable: bool, day: date) -> Rate | None:
        """What one charge costs: its rate when billable, 0 when not (in the rate's currency
        if there is one), None when billable and unpriced."""
        rate = self.rate_for(market, category, day)
        if billable:
            return rate
        return Rate(Decimal("0"), rate.currency if rate else "", rate.valid_from if rate else day)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


# --- Spend ------------------------------------------------------------------------------------


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of `month`, in UTC."""
    start = datetime.combine(month.replace(day=1), time.min, tzinfo=UTC)
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return start, end


@dataclass
class SpendLine:
    """Counts and amounts of a group of charges (a number, a category, a day)."""

    charges: int = 0
    billable: int = 0
    unpriced: int = 0  # billable charges without a rate
    amounts: dict[str, Decimal] = field(default_factory=dict)  # currency -> amount

    def add(self, count: int, billable: bool, rate: Rate | None) -> None:
        self.charges += count
        if billable:
            self.billable += count
        if rate is None:
            self.unpriced += count
            return
        if rate.currency:
            amount = rate.price * count
            self.amounts[rate.currency] = self.amounts.get(rate.currency, Decimal("0")) + amount

    def amount_list(self) -> list[tuple[str, Decimal]]:
        return sorted(self.amounts.items())


@dataclass
class MonthSpend:
    month: date
    total: SpendLine
    by_number: dict[uuid.UUID, SpendLine]
    by_category: dict[str, SpendLine]
    by_day: dict[date, SpendLine]


def month_spend(
    month: date, *, tenant_id: uuid.UUID | None = None, number_id: uuid.UUID | None = None
) -> MonthSpend:
    """The month's charges, counted and priced per number, category and UTC day.

    Reads the active scope's charges (one tenant in the inbox; in the admin, unscoped, all of
    them or `tenant_id`'s), optionally of one number. One grouped query: charges are counted
    per (number, category, market, billable, day) in the database, each group priced once."""
    start, end = month_bounds(month)
    charges = Charge.objects.filter(occurred_at__gte=start, occurred_at__lt=end)
    if tenant_id is not None:
        charges = charges.filter(tenant_id=tenant_id)
    if number_id is not None:
        charges = charges.filter(number_id=number_id)
    groups = (
        charges.annotate(day=TruncDate("occurred_at", tzinfo=UTC))
        .values("number_id", "category", "market", "billable", "day")
        .annotate(n=Count("id"))
        .order_by()
    )
    card = RateCard.load()
    spend = MonthSpend(start.date(), SpendLine(), {}, {}, {})
    for group in groups:
        rate = card.price(group["market"], group["category"], group["billable"], group["day"])
        count, billable = group["n"], group["billable"]
        spend.total.add(count, billable, rate)
        spend.by_number.setdefault(group["number_id"], SpendLine()).add(count, billable, rate)
        spend.by_category.setdefault(group["category"], SpendLine()).add(count, billable, rate)
        spend.by_day.setdefault(group["day"], SpendLine()).add(count, billable, rate)
    return spend


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = (
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
NO_RATE = "no rate"


def charge_rows(
    charges, *, card: RateCard | None = None, chunk_size: int = 2000
) -> Iterator[list[str]]:
    """The CSV rows (header first) of a queryset of charges, oldest first, streamed in chunks
    so a large ledger is never held in memory."""
    card = card or RateCard.load()
    yield list(CSV_COLUMNS)
    rows = (
        charges.order_by("occurred_at", "id")
        .values_list(
            "occurred_at",
            "wamid",
            "number__display_phone_number",
            "market",
            "category",
            "pricing_model",
            "billable",
            "pricing_type",
        )
        .iterator(chunk_size=chunk_size)
    )
    for occurred_at, wamid, number, market, category, model, billable, kind in rows:
        rate = card.price(market, category, billable, utc_day(occurred_at))
        values = [
            occurred_at.astimezone(UTC).isoformat(),
            wamid,
            number,
            market,
            category,
            model,
            "true" if billable else "false",
            kind,
            NO_RATE if rate is None else str(rate.price),
            "" if rate is None else rate.currency,
        ]
        yield [neutralise_cell(value) for value in values]
