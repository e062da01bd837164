"""Import consent evidence collected elsewhere (a signup form, a shop checkout, a paper list)."""

import csv
import hashlib
import re
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.conversations.models import Contact
from apps.tenants.scoping import tenant_scope
from apps.tenants.services import TenantError, get_tenant_by_slug

REQUIRED_COLUMNS = ("phone", "kind", "scope", "evidence")
PHONE_SEPARATORS = re.compile(r"[\s().+-]")


class Command(BaseCommand):
    help = (
        "Import consent events from a CSV file with the columns phone, kind (opt_in|opt_out), "
        "scope (marketing|all), evidence (where and how consent was given; required) and "
        "optionally occurred_at (ISO 8601). All rows are checked first; nothing is written when "
        "one is invalid. Importing the same file again records nothing twice."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant_slug")
        parser.add_argument("csv_path", type=Path)
        parser.add_argument("--dry-run", action="store_true", help="check the file only")

    def handle(self, *args, tenant_slug, csv_path, dry_run, **options):
        try:
            tenant = get_tenant_by_slug(tenant_slug)
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        try:
            raw = csv_path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {csv_path}: {exc.strerror}") from None
        rows = self._parse(raw)
        if dry_run:
            self.stdout.write(f"{len(rows)} row(s) are valid; nothing was written (--dry-run).")
            return
        file_digest = hashlib.sha256(raw).hexdigest()[:16]
        recorded = 0
        with tenant_scope(tenant), transaction.atomic():
            for line, row in rows:
                contact = Contact.objects.filter(
                    wa_id=row["wa_id"]
                ).first() or Contact.objects.create(tenant=tenant, wa_id=row["wa_id"])
                event = record_consent(
                    contact,
                    kind=row["kind"],
                    scope=row["scope"],
                    source=ConsentSource.IMPORT,
                    actor="command:import_consent",
                    evidence={"text": row["evidence"], "file": csv_path.name, "line": line},
                    occurred_at=row["occurred_at"],
                    dedupe_key=f"import:{file_digest}:{line}",
                )
                recorded += event is not None
        self.stdout.write(
            self.style.SUCCESS(
                f"Recorded {recorded} consent event(s) for {tenant.slug}; "
                f"{len(rows) - recorded} already imported."
            )
        )

    def _parse(self, raw: bytes) -> list[tuple[int, dict]]:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CommandError("the file is not UTF-8 text") from None
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CommandError("missing column(s): " + ", ".join(missing))
        rows, errors = [], []
        for line, record in enumerate(reader, start=2):
            try:
                rows.append((line, self._row(record)))
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
        if errors:
            raise CommandError("nothing imported:\n  " + "\n  ".join(errors[:50]))
        if not rows:
            raise CommandError("the file has no rows")
        return rows

    @staticmethod
    def _row(record: dict) -> dict:
        digits = PHONE_SEPARATORS.sub("", (record.get("phone") or "").strip())
        if not digits.isdigit() or not 6 <= len(digits) <= 15:
            raise ValueError("phone must be an international number (6-15 digits)")
        kind = (record.get("kind") or "").strip().lower()
        if kind not in ConsentKind.values:
            raise ValueError("kind must be opt_in or opt_out")
        scope = (record.get("scope") or "").strip().lower()
        if scope not in ConsentScope.values:
            raise ValueError("scope must be marketing or all")
        evidence = (record.get("evidence") or "").strip()
        if not evidence:
            raise ValueError("evidence is required (where and how consent was given)")
        occurred_at: datetime | None = None
        when = (record.get("occurred_at") or "").strip()
        if when:
            occurred_at = parse_datetime(when)
            if occurred_at is None:
                raise ValueError("occurred_at must be an ISO 8601 date and time")
            if timezone.is_naive(occurred_at):
                occurred_at = timezone.make_aware(occurred_at, timezone.utc)
            if occurred_at > timezone.now():
                raise ValueError("occurred_at is in the future")
        return {
            "wa_id": digits,
            "kind": kind,
            "scope": scope,
            "evidence": evidence[:1000],
            "occurred_at": occurred_at,
        }
