"""`manage.py export_contacts <tenant-slug> [--output FILE] [--format csv|jsonl]`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.privacy.contact_export import FORMATS
from apps.privacy.services import ContactExport
from apps.tenants.models import Tenant

PROGRESS_EVERY = 2.0  # seconds between progress lines on stderr


class Command(BaseCommand):
    help = "Export a tenant's whole contact book (CSV or JSON lines) to a file or stdout."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--format", choices=sorted(FORMATS), default="csv", dest="fmt")

    def handle(self, *args, tenant, output, fmt, **options):
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"No tenant with the slug {tenant!r}.")
        target = None
        if output:
            path = Path(output)
            if not path.parent.is_dir():
                raise CommandError(f"The folder of {output} does not exist.")
            target = path.open("w", encoding="utf-8", newline="")
        write = (
            target.write if target is not None else lambda text: self.stdout.write(text, ending="")
        )
        export = ContactExport(found, actor="command:export_contacts", fmt=fmt, via="cli")
        started = last_report = time.monotonic()
        try:
            for piece in export:
                write(piece)
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY:
                    sys.stderr.write(f"export_contacts: {export.rows:,} contacts so far\n")
                    last_report = now
        finally:
            export.close()
            if target is not None:
                target.close()
        elapsed = time.monotonic() - started
        where = f" to {output}" if output else ""
        sys.stderr.write(
            f"export_contacts: {export.rows:,} contacts of {found.slug}{where} in {elapsed:.1f} s\n"
        )
