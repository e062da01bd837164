import os

from django.core.management.base import BaseCommand, CommandError

from apps.tenants.services import (
    NumberCredentials,
    TenantError,
    connect_number,
    get_tenant_by_slug,
)

SECRET_VARIABLES = ("WHATSAPP_ACCESS_TOKEN", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN")


class Command(BaseCommand):
    help = (
        "Connect a WhatsApp business number to a tenant. Secrets are read from the environment "
        "variables WHATSAPP_ACCESS_TOKEN, WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN, never "
        "from arguments (arguments end up in shell history and process lists)."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant_slug")
        parser.add_argument("--phone-number-id", required=True)
        parser.add_argument("--waba-id", required=True)
        parser.add_argument("--display-phone-number", required=True)
        parser.add_argument("--app-id", required=True)

    def handle(
        self, *args, tenant_slug, phone_number_id, waba_id, display_phone_number, app_id, **options
    ):
        missing = [name for name in SECRET_VARIABLES if not os.environ.get(name)]
        if missing:
            raise CommandError("set " + ", ".join(missing) + " in the environment")
        credentials = NumberCredentials(
            access_token=os.environ["WHATSAPP_ACCESS_TOKEN"],
            app_secret=os.environ["WHATSAPP_APP_SECRET"],
            verify_token=os.environ["WHATSAPP_VERIFY_TOKEN"],
        )
        try:
            tenant = get_tenant_by_slug(tenant_slug)
            number = connect_number(
                tenant,
                phone_number_id=phone_number_id,
                waba_id=waba_id,
                display_phone_number=display_phone_number,
                app_id=app_id,
                credentials=credentials,
                actor="command:connect_number",
            )
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Connected {number.display_phone_number} (phone number id "
                f"{number.phone_number_id}) to {tenant.slug}."
            )
        )
