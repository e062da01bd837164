from django.core.management.base import BaseCommand, CommandError

from apps.tenants.services import TenantError, create_tenant


class Command(BaseCommand):
    help = "Create a tenant (a business using Klaros)."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="short id: lower-case letters, digits and hyphens")
        parser.add_argument("--name", required=True, help="display name")

    def handle(self, *args, slug, name, **options):
        try:
            tenant = create_tenant(slug, name, actor="command:create_tenant")
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Created tenant {tenant.slug} ({tenant.name})."))
