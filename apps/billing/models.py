"""The charges ledger and the rate card.

A `Charge` is what Meta's `pricing` object says about one message: billable or not, in which
category, under which pricing model. It holds no amount: amounts come from the operator's
`RateCardEntry` rows when the ledger is read, so a corrected rate card prices past charges too.
"""

from __future__ import annotations

import uuid

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from apps.tenants.scoping import TenantOwnedModel

UNKNOWN_MARKET = "unknown"  # a recipient Meta names only by BSUID: no phone, no country
DEFAULT_MARKET = "*"  # a rate card entry for every market without one of its own


class PricingModel(models.TextChoices):
    PMP = "PMP", "per message"
    CBP = "CBP", "per conversation (legacy)"


class Charge(TenantOwnedModel):
    """One billable message's price category, once per (tenant, wamid, category) however often
    Meta repeats it.

    Only billable pricing objects become charges: free customer-service replies and free entry
    points cost nothing, and recording a row and an audit event for every free message halved
    the journal drain's throughput (docs/billing.md). `billable` is kept as derived from Meta's
    object so the rule can change without a migration. `message` is set when the wamid is one
    of ours at recording time; `wamid` is kept either way (a message sent from elsewhere
    through the same number is still charged to the tenant).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    number = models.ForeignKey(
        "tenants.WhatsAppNumber", on_delete=models.CASCADE, related_name="charges"
    )
    # SET_NULL: erasing a contact deletes its messages, the ledger keeps what was charged.
    message = models.ForeignKey(
        "conversations.Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="charges",
    )
    wamid = models.CharField(max_length=200)
    market = models.CharField(
        "recipient market", max_length=16, help_text="ISO country code, or 'unknown'"
    )
    category = models.CharField(max_length=40)
    pricing_model = models.CharField(max_length=8)
    billable = models.BooleanField()
    pricing_type = models.CharField("type", max_length=40, blank=True)
    conversation_id = models.CharField("Meta conversation id", max_length=100, blank=True)
    occurred_at = models.DateTimeField(help_text="timestamp of the status that carried it")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "wamid", "category"], name="charge_unique_wamid_category"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "occurred_at"], name="charge_tenant_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.category} {self.wamid}"


class RateCardEntry(models.Model):
    """The price of one message in a market and category from `valid_from` (a UTC date) on.

    Deployment-wide: the operator keeps it in line with Meta's rate card, in the admin or with
    `import_rate_card`. The entry priced in is the one with the latest `valid_from` on or
    before the charge's UTC date; market `*` stands in for markets without an entry.
    """

    market = models.CharField(
        max_length=16, help_text="ISO country code (e.g. DE), or * for every other market"
    )
    category = models.CharField(max_length=40, help_text="marketing, utility, authentication...")
    currency = models.CharField(max_length=3, help_text="ISO 4217, e.g. USD")
    price = models.DecimalField(max_digits=12, decimal_places=6, validators=[MinValueValidator(0)])
    valid_from = models.DateField(help_text="first UTC day this price applies")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["market", "category", "-valid_from"]
        verbose_name = "rate card entry"
        verbose_name_plural = "rate card"
        constraints = [
            models.UniqueConstraint(
                fields=["market", "category", "valid_from"], name="rate_unique_market_category_day"
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="rate_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.market} {self.category} {self.price} {self.currency} from {self.valid_from}"
