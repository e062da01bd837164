"""Write one tenant's charges as CSV, the same rows as the spend page's download."""

import csv
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.billing.models import Charge
from apps.billing.services import charge_rows
from apps.tenants.scoping import tenant_scope
from apps.tenants.services import TenantError, get_tenant_by_slug


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a YYYY-MM-DD date") from None


class Command(BaseCommand):
    help = (
        "Export a tenant's charges as CSV (occurred_at, wamid, number, recipient market, "
        "category, pricing model, billable, type, rate, currency), oldest first. --since and "
        "--until are UTC days, both included. Streams to standard output or --output."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant_slug")
        parser.add_argument("--since", help="first UTC day (YYYY-MM-DD), included")
        parser.add_argument("--until", help="last UTC day (YYYY-MM-DD), included")
        parser.add_argument("--output", type=Path, help="file to write (default: stdout)")

    def handle(self, *args, tenant_slug, since, until, output, **options):
        try:
            tenant = get_tenant_by_slug(tenant_slug)
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        since_day = _day(since, "--since") if since else None
        until_day = _day(until, "--until") if until else None
        if since_day and until_day and since_day > until_day:
            raise CommandError("--since is after --until")
        try:
            stream = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror}") from None
        written = 0
        try:
            with tenant_scope(tenant):
                charges = Charge.objects.select_related(None)
                if since_day:
                    charges = charges.filter(
                        occurred_at__gte=datetime.combine(since_day, time.min, tzinfo=UTC)
                    )
                if until_day:
                    end = datetime.combine(until_day + timedelta(days=1), time.min, tzinfo=UTC)
                    charges = charges.filter(occurred_at__lt=end)
                writer = csv.writer(stream)
                for row in charge_rows(charges):
                    writer.writerow(row)
                    written += 1
        finally:
            if output:
                stream.close()
        if output:
            self.stderr.write(f"{written - 1} charge(s) written to {output}.")
