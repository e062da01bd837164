"""Load the operator's rate card from a CSV file: all rows or none."""

import csv
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.audit.services import record
from apps.billing.models import DEFAULT_MARKET, RateCardEntry

COLUMNS = ("market", "category", "currency", "price", "valid_from")


class Command(BaseCommand):
    help = (
        "Import rate card entries from a CSV file with the columns market (ISO country code, "
        "or * for every other market), category, currency (ISO 4217), price (a decimal, never "
        "negative) and valid_from (YYYY-MM-DD, UTC). Every row is checked first and nothing is "
        "written when one is invalid; importing the same file again changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("csv_path", type=Path)

    def handle(self, *args, csv_path, **options):
        try:
            text = csv_path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise CommandError(f"cannot read {csv_path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CommandError("the file is not UTF-8 text") from None
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CommandError(f"line 1: missing column(s): {', '.join(missing)}")
        errors, entries, seen = [], [], {}
        for line, row in enumerate(reader, start=2):
            entry, problems = self._parse(row)
            if entry is not None:
                key = (entry["market"], entry["category"], entry["valid_from"])
                if key in seen:
                    problems.append(f"repeats line {seen[key]}")
                seen.setdefault(key, line)
            if problems:
                errors.append(f"line {line}: {'; '.join(problems)}")
            else:
                entries.append(entry)
        if errors:
            raise CommandError("nothing was imported:\n" + "\n".join(errors))
        created = updated = 0
        with transaction.atomic():
            for entry in entries:
                stored = RateCardEntry.objects.filter(
                    market=entry["market"],
                    category=entry["category"],
                    valid_from=entry["valid_from"],
                ).first()
                if stored is None:
                    RateCardEntry.objects.create(**entry)
                    created += 1
                elif (stored.price, stored.currency) != (entry["price"], entry["currency"]):
                    stored.price, stored.currency = entry["price"], entry["currency"]
                    stored.save(update_fields=["price", "currency", "updated_at"])
                    updated += 1
            if created or updated:
                record(
                    "rate_card.imported",
                    actor="command:import_rate_card",
                    data={"created": created, "updated": updated, "rows": len(entries)},
                )
        self.stdout.write(
            self.style.SUCCESS(
                f"{created} entr(ies) added, {updated} changed, "
                f"{len(entries) - created - updated} unchanged."
            )
        )

    def _parse(self, row: dict) -> tuple[dict | None, list[str]]:
        problems = []
        if None in row or any(value is None for value in row.values()):
            return None, ["wrong number of fields"]
        market = row["market"].strip().upper()
        if not (market == DEFAULT_MARKET or (len(market) == 2 and market.isalpha())):
            problems.append(f"market {row['market']!r} is not a 2-letter country code or *")
        category = row["category"].strip().lower().replace("-", "_")
        if not category or len(category) > 40 or not category.replace("_", "").isalnum():
            problems.append(f"category {row['category']!r} is not a category name")
        currency = row["currency"].strip().upper()
        if not (len(currency) == 3 and currency.isalpha()):
            problems.append(f"currency {row['currency']!r} is not a 3-letter ISO code")
        try:
            price = Decimal(row["price"].strip())
            if not price.is_finite() or price < 0:
                raise InvalidOperation
            if price != price.quantize(Decimal("0.000001")) or price >= 10**6:
                problems.append(f"price {row['price']!r} has more than 6 decimals or 6 digits")
        except InvalidOperation:
            problems.append(f"price {row['price']!r} is not a non-negative decimal")
            price = None
        try:
            valid_from = date.fromisoformat(row["valid_from"].strip())
        except ValueError:
            problems.append(f"valid_from {row['valid_from']!r} is not a YYYY-MM-DD date")
            valid_from = None
        if problems:
            return None, problems
        return {
            "market": market,
            "category": category,
            "currency": currency,
            "price": price,
            "valid_from": valid_from,
        }, []
