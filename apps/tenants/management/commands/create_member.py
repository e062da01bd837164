import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from apps.tenants.models import Role
from apps.tenants.services import TenantError, add_member, get_tenant_by_slug


class Command(BaseCommand):
    help = (
        "Add a member to a tenant, creating the user when the email is new. The password comes "
        "from --password-stdin or an interactive prompt, never from an argument."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant_slug")
        parser.add_argument("email")
        parser.add_argument("--role", choices=Role.values, default=Role.AGENT)
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )

    def handle(self, *args, tenant_slug, email, role, password_stdin, **options):
        try:
            tenant = get_tenant_by_slug(tenant_slug)
            password = self._read_password(password_stdin)
            membership = add_member(
                tenant, email, role=role, password=password, actor="command:create_member"
            )
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"{membership.user.email} is now {membership.get_role_display().lower()} "
                f"of {tenant.slug}."
            )
        )

    def _read_password(self, from_stdin: bool) -> str | None:
        if from_stdin:
            return sys.stdin.readline().rstrip("\r\n") or None
        if not sys.stdin.isatty():
            return None  # an existing user needs none; a new one gets a clear error
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise TenantError("the passwords do not match")
        return first
