"""Tenants, their members, and the WhatsApp numbers (with Meta apps) they connect."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from .fields import EncryptedSecretField
from .scoping import TenantOwnedModel

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "Use 1-50 lower-case letters, digits and hyphens (not at either end).",
)
digits_validator = RegexValidator(r"^[0-9]{1,32}$", "Meta ids are digits only.")


class Tenant(models.Model):
    """A business using Klaros. Everything it owns is scoped to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    AGENT = "agent", "Agent"


class Membership(models.Model):
    """A user's role in one tenant.

    Not scoped: memberships are what decide which tenant scope a request enters, so they are
    looked up by user before any scope exists. Views never list another tenant's members.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.AGENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")
        ]
        ordering = ["tenant__name"]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}) in {self.tenant}"

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


class MetaApp(models.Model):
    """A Meta app whose secret signs webhooks. Deployment-level: the webhook endpoint must check
    signatures before it knows any tenant, so apps are operator configuration, not tenant data."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app_id = models.CharField(
        "Meta app id", max_length=32, unique=True, validators=[digits_validator]
    )
    name = models.CharField(max_length=200, blank=True)
    app_secret = EncryptedSecretField("app secret")
    verify_token = EncryptedSecretField("webhook verify token")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Meta app"
        ordering = ["app_id"]

    def __str__(self) -> str:
        return self.name or f"Meta app {self.app_id}"


class CredentialStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    BROKEN = "broken", "Broken (Meta rejected the token)"


class WhatsAppNumber(TenantOwnedModel):
    """A business phone number connected through Meta's Cloud API. Inbound events are routed to
    the tenant by `phone_number_id`, which is unique across the deployment."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(MetaApp, on_delete=models.PROTECT, related_name="numbers")
    phone_number_id = models.CharField(
        "phone number id", max_length=32, unique=True, validators=[digits_validator]
    )
    waba_id = models.CharField("WABA id", max_length=32, validators=[digits_validator])
    display_phone_number = models.CharField(max_length=32)
    access_token = EncryptedSecretField("access token")
    credential_status = models.CharField(
        max_length=10, choices=CredentialStatus.choices, default=CredentialStatus.HEALTHY
    )
    credential_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "WhatsApp number"
        ordering = ["display_phone_number"]

    def __str__(self) -> str:
        return self.display_phone_number
