from django.core.management.base import BaseCommand, CommandError

from apps.conversations.outbound.template_sync import sync_templates
from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.graph import GraphError, GraphTransportError


class Command(BaseCommand):
    help = "Fetch message templates from Meta for every number (or one tenant's numbers)."

    def add_arguments(self, parser):
        parser.add_argument("tenant_slug", nargs="?", help="only this tenant's numbers")

    def handle(self, *args, tenant_slug, **options):
        with unscoped("template sync command lists numbers across tenants"):
            numbers = WhatsAppNumber.objects.select_related("tenant").order_by("tenant__slug")
            if tenant_slug:
                numbers = numbers.filter(tenant__slug=tenant_slug)
            numbers = list(numbers)
        if tenant_slug and not numbers:
            raise CommandError(f"no connected number for tenant {tenant_slug!r}")
        failures = 0
        for number in numbers:
            with tenant_scope(number.tenant_id):
                try:
                    result = sync_templates(number, actor="command:sync_templates")
                except (GraphError, GraphTransportError) as exc:
                    failures += 1
                    self.stderr.write(f"{number.tenant.slug} {number}: {exc}")
                    continue
            self.stdout.write(
                f"{number.tenant.slug} {number}: {result.total} template(s), "
                f"{result.created} new, {result.updated} updated"
            )
        if failures:
            raise CommandError(f"{failures} number(s) could not be synced")
