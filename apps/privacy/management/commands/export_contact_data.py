"""`manage.py export_contact_data <tenant-slug> <phone-or-bsuid> [--output FILE.zip]`."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.privacy.contact_data import ContactNotFound, find_contact
from apps.privacy.services import export_contact_data
from apps.tenants.models import Tenant
from apps.tenants.scoping import tenant_scope


class Command(BaseCommand):
    help = "Write one contact's own data (profile, messages, consent, notes, media) as a ZIP."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        parser.add_argument("identity", help="the contact's phone number or WhatsApp user id")
        parser.add_argument(
            "--output", "-o", help="ZIP file to write (default: contact-data-<id>.zip here)"
        )

    def handle(self, *args, tenant, identity, output, **options):
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"No tenant with the slug {tenant!r}.")
        with tenant_scope(found):
            try:
                contact = find_contact(found.pk, identity)
            except ContactNotFound as exc:
                raise CommandError(str(exc)) from exc
            path = Path(output or f"contact-data-{contact.pk}.zip")
            if not path.parent.is_dir():
                raise CommandError(f"The folder of {path} does not exist.")
            partial = path.with_name(path.name + ".partial")
            try:
                with partial.open("wb") as out:
                    summary = export_contact_data(
                        contact, out, actor="command:export_contact_data", via="cli"
                    )
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
        self.stdout.write(
            f"Wrote {path}: {summary.messages} messages, {summary.notes} notes, "
            f"{summary.consent_events} consent records, {summary.media_files} media files."
        )
