"""State changes of tenants, members and connected numbers. Each runs in one transaction and
writes its audit event."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from apps.audit.services import Actor, record

from .models import CredentialStatus, Membership, MetaApp, Role, Tenant, WhatsAppNumber
from .scoping import tenant_scope


class TenantError(Exception):
    """A request about tenants that cannot be carried out; the message is for a person."""


def create_tenant(slug: str, name: str, *, actor: Actor) -> Tenant:
    tenant = Tenant(slug=slug, name=name.strip() or slug)
    try:
        tenant.full_clean()
    except ValidationError as exc:
        raise TenantError(_first_message(exc)) from exc
    try:
        with transaction.atomic():
            tenant.save()
            record("tenant.created", tenant, actor=actor, data={"slug": tenant.slug})
    except IntegrityError as exc:
        raise TenantError(f"a tenant with slug {slug!r} already exists") from exc
    return tenant


def get_tenant_by_slug(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise TenantError(f"no tenant with slug {slug!r}") from None


def add_member(
    tenant: Tenant, email: str, *, role: str, password: str | None, actor: Actor
) -> Membership:
    """Add a member to a tenant, creating the user when the email is new.

    A new user needs a password that passes the validators; an existing user keeps theirs.
    """
    User = get_user_model()
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise TenantError(f"{email!r} is not a valid email address") from None
    if role not in Role.values:
        raise TenantError(f"role must be one of {', '.join(Role.values)}")
    with transaction.atomic():
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            if not password:
                raise TenantError("a new member needs a password")
            candidate = User(email=email)
            try:
                validate_password(password, user=candidate)
            except ValidationError as exc:
                raise TenantError("weak password: " + " ".join(exc.messages)) from None
            user = User.objects.create_user(email=email, password=password)
            record("user.created", user, actor=actor, tenant=tenant)
        if Membership.objects.filter(user=user, tenant=tenant).exists():
            raise TenantError(f"{email} is already a member of {tenant.slug}")
        membership = Membership.objects.create(user=user, tenant=tenant, role=role)
        record(
            "member.created",
            membership,
            actor=actor,
            tenant=tenant,
            data={"user_id": str(user.pk), "role": role},
        )
    return membership


@dataclass(frozen=True)
class NumberCredentials:
    access_token: str
    app_secret: str
    verify_token: str

    def __repr__(self) -> str:
        return "NumberCredentials(<masked>)"


def upsert_meta_app(app_id: str, *, app_secret: str, verify_token: str, actor: Actor) -> MetaApp:
    """Create the Meta app, or update its secrets when they differ (audited as a change)."""
    with transaction.atomic():
        app = MetaApp.objects.select_for_update().filter(app_id=app_id).first()
        if app is None:
            app = MetaApp(app_id=app_id, app_secret=app_secret, verify_token=verify_token)
            try:
                app.full_clean(exclude=["app_secret", "verify_token"])
            except ValidationError as exc:
                raise TenantError(_first_message(exc)) from exc
            app.save()
            record("meta_app.created", app, actor=actor, data={"app_id": app_id})
            return app
        changed = []
        if app.app_secret.reveal() != app_secret:
            app.app_secret = app_secret
            changed.append("app_secret")
        if app.verify_token.reveal() != verify_token:
            app.verify_token = verify_token
            changed.append("verify_token")
        if changed:
            app.save()
            record("meta_app.credentials_changed", app, actor=actor, data={"fields": changed})
        return app


def connect_number(
    tenant: Tenant,
    *,
    phone_number_id: str,
    waba_id: str,
    display_phone_number: str,
    app_id: str,
    credentials: NumberCredentials,
    actor: Actor,
) -> WhatsAppNumber:
    """Connect a WhatsApp business number to a tenant; the phone number id must be new."""
    for name, value in (
        ("access token", credentials.access_token),
        ("app secret", credentials.app_secret),
        ("verify token", credentials.verify_token),
    ):
        if not value:
            raise TenantError(f"the {name} is empty")
    with transaction.atomic(), tenant_scope(tenant):
        app = upsert_meta_app(
            app_id,
            app_secret=credentials.app_secret,
            verify_token=credentials.verify_token,
            actor=actor,
        )
        number = WhatsAppNumber(
            tenant=tenant,
            app=app,
            phone_number_id=phone_number_id,
            waba_id=waba_id,
            display_phone_number=display_phone_number,
            access_token=credentials.access_token,
        )
        try:
            number.full_clean(exclude=["access_token", "phone_number_id", "tenant"])
        except ValidationError as exc:
            raise TenantError(_first_message(exc)) from exc
        if not phone_number_id.isdigit():
            raise TenantError("the phone number id is digits only")
        try:
            with transaction.atomic():
                number.save()
        except IntegrityError:
            raise TenantError(f"phone number id {phone_number_id} is already connected") from None
        record(
            "number.connected",
            number,
            actor=actor,
            data={
                "phone_number_id": phone_number_id,
                "waba_id": waba_id,
                "app_id": app_id,
            },
        )
    return number


def set_number_access_token(number: WhatsAppNumber, access_token: str, *, actor: Actor) -> None:
    """Replace a number's access token and mark its credentials healthy again."""
    if not access_token:
        raise TenantError("the access token is empty")
    with transaction.atomic():
        number.access_token = access_token
        number.credential_status = CredentialStatus.HEALTHY
        number.credential_error = ""
        number.save()
        record("number.credentials_changed", number, actor=actor, data={"fields": ["access_token"]})


def _first_message(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        field, messages = next(iter(exc.message_dict.items()))
        return f"{field.replace('_', ' ')}: {messages[0]}"
    return exc.messages[0]
