"""Ensure the demo world `make run` shows a newcomer: one tenant, its owner, an operator for the
admin and a connected (simulated) WhatsApp number.

Idempotent: every run converges on the same state. Generated passwords and Meta secrets live in
`<KLAROS_VAR_DIR>/demo-credentials.txt` (mode 0600), outside the database, so a rerun reuses
them and prints the same logins.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.audit.services import record
from apps.tenants.crypto import DecryptionError
from apps.tenants.models import Membership, Role, WhatsAppNumber
from apps.tenants.scoping import tenant_scope
from apps.tenants.services import (
    NumberCredentials,
    TenantError,
    add_member,
    connect_number,
    create_tenant,
    get_tenant_by_slug,
    set_number_access_token,
    upsert_meta_app,
)

ACTOR = "command:bootstrap_demo"
TENANT_SLUG = "demo"
TENANT_NAME = "Demo Business"

# Fixed, public parts of the demo. Meta ids are digits only; these are not real Meta ids.
FIXED = {
    "OWNER_EMAIL": "owner@demo.klaros.local",
    "OPERATOR_EMAIL": "operator@demo.klaros.local",
    "PHONE_NUMBER_ID": "100000000000001",
    "WABA_ID": "200000000000001",
    "APP_ID": "300000000000001",
    "DISPLAY_PHONE_NUMBER": "+1 555 0100",
}
# Generated once, then read back from the credentials file. None of them may contain ':', which
# separates the fields of the Meta simulator's --number option.
GENERATED = {
    "OWNER_PASSWORD": lambda: secrets.token_urlsafe(18),
    "OPERATOR_PASSWORD": lambda: secrets.token_urlsafe(18),
    "ACCESS_TOKEN": lambda: "EAAdemo" + secrets.token_urlsafe(48),
    "APP_SECRET": lambda: secrets.token_hex(16),
    "VERIFY_TOKEN": lambda: secrets.token_urlsafe(24),
}

HEADER = (
    "# Klaros development demo credentials, written by `manage.py bootstrap_demo`.\n"
    "# Development only. Delete this file together with the database to start over.\n"
)


def credentials_path() -> Path:
    return Path(settings.KLAROS_VAR_DIR) / "demo-credentials.txt"


def read_credentials(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


def write_credentials(path: Path, values: dict[str, str]) -> None:
    """Write the file with mode 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    if temporary.exists():
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(HEADER)
        for name, value in values.items():
            handle.write(f"{name}={value}\n")
    os.replace(temporary, path)
    os.chmod(path, 0o600)


def load_or_create_credentials(path: Path) -> dict[str, str]:
    stored = read_credentials(path)
    values = dict(FIXED)
    for name, generate in GENERATED.items():
        values[name] = stored.get(name) or generate()
    if stored != values or (path.stat().st_mode & 0o077):
        write_credentials(path, values)
    return values


class Command(BaseCommand):
    help = (
        "Development only (DEBUG=true): ensure the demo tenant 'demo' with an owner, an operator "
        "for /admin/ and a connected demo WhatsApp number. Safe to run again; passwords and "
        "secrets are kept in KLAROS_VAR_DIR/demo-credentials.txt (mode 0600)."
    )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError(
                "bootstrap_demo creates accounts whose passwords are kept in a file; "
                "it runs only with DEBUG=true"
            )
        path = credentials_path()
        creds = load_or_create_credentials(path)
        try:
            with transaction.atomic():
                tenant = self.ensure_tenant()
                self.ensure_owner(tenant, creds)
                self.ensure_operator(creds)
                self.ensure_number(tenant, creds)
        except TenantError as exc:
            raise CommandError(str(exc)) from None
        except DecryptionError as exc:
            raise CommandError(
                f"{exc}. The development database was encrypted with another key than "
                f"{settings.KLAROS_DEV_KEY_FILE}; to start the demo over, delete the database "
                f"and {path}."
            ) from None

        self.stdout.write(self.style.SUCCESS(f"Demo tenant '{tenant.slug}' ({tenant.name}) ready."))
        self.stdout.write(
            f"  Owner:    {creds['OWNER_EMAIL']}  password: {creds['OWNER_PASSWORD']}"
        )
        self.stdout.write(
            f"  Operator: {creds['OPERATOR_EMAIL']}  password: {creds['OPERATOR_PASSWORD']}"
        )
        self.stdout.write(
            f"  Number:   {creds['DISPLAY_PHONE_NUMBER']} (phone number id "
            f"{creds['PHONE_NUMBER_ID']}); its Meta secrets are in {path}"
        )

    def ensure_tenant(self):
        try:
            return get_tenant_by_slug(TENANT_SLUG)
        except TenantError:
            return create_tenant(TENANT_SLUG, TENANT_NAME, actor=ACTOR)

    def ensure_owner(self, tenant, creds: dict[str, str]) -> None:
        User = get_user_model()
        email, password = creds["OWNER_EMAIL"], creds["OWNER_PASSWORD"]
        user = User.objects.filter(email__iexact=email).first()
        if user is None or not Membership.objects.filter(user=user, tenant=tenant).exists():
            user = add_member(tenant, email, role=Role.OWNER, password=password, actor=ACTOR).user
        self.ensure_login(user, password, is_operator=False)

    def ensure_operator(self, creds: dict[str, str]) -> None:
        User = get_user_model()
        email, password = creds["OPERATOR_EMAIL"], creds["OPERATOR_PASSWORD"]
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            user = User.objects.create_superuser(email, password)
            record("user.created", user, actor=ACTOR, data={"operator": True})
        self.ensure_login(user, password, is_operator=True)

    def ensure_login(self, user, password: str, *, is_operator: bool) -> None:
        """Bring an existing demo account back to the password in the credentials file."""
        changed = []
        if not user.is_active:
            user.is_active = True
            changed.append("is_active")
        if is_operator and not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            changed.append("operator")
        if not user.check_password(password):
            user.set_password(password)
            changed.append("password")
        if changed:
            user.save()
            record("user.changed", user, actor=ACTOR, data={"fields": changed})

    def ensure_number(self, tenant, creds: dict[str, str]) -> None:
        with tenant_scope(tenant):
            number = WhatsAppNumber.objects.filter(phone_number_id=creds["PHONE_NUMBER_ID"]).first()
            if number is None:
                connect_number(
                    tenant,
                    phone_number_id=creds["PHONE_NUMBER_ID"],
                    waba_id=creds["WABA_ID"],
                    display_phone_number=creds["DISPLAY_PHONE_NUMBER"],
                    app_id=creds["APP_ID"],
                    credentials=NumberCredentials(
                        access_token=creds["ACCESS_TOKEN"],
                        app_secret=creds["APP_SECRET"],
                        verify_token=creds["VERIFY_TOKEN"],
                    ),
                    actor=ACTOR,
                )
                return
            if number.access_token.reveal() != creds["ACCESS_TOKEN"]:
                set_number_access_token(number, creds["ACCESS_TOKEN"], actor=ACTOR)
        upsert_meta_app(
            creds["APP_ID"],
            app_secret=creds["APP_SECRET"],
            verify_token=creds["VERIFY_TOKEN"],
            actor=ACTOR,
        )
