"""Operators' view of every tenant's charges (the admin runs unscoped) and the rate card."""

from __future__ import annotations

from datetime import date

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from apps.tenants.models import Tenant

from .models import Charge, RateCardEntry
from .services import month_spend


class MonthFilter(admin.SimpleListFilter):
    title = "month"
    parameter_name = "month"

    def lookups(self, request, model_admin):
        months = Charge.objects.dates("occurred_at", "month", order="DESC")[:24]
        return [(m.strftime("%Y-%m"), m.strftime("%B %Y")) for m in months]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            year, month = (int(part) for part in self.value().split("-"))
            first = date(year, month, 1)
        except ValueError:
            return queryset.none()
        return queryset.filter(occurred_at__year=first.year, occurred_at__month=first.month)


@admin.register(Charge)
class ChargeAdmin(admin.ModelAdmin):
    """Read-only: charges come from Meta's webhooks only."""

    list_display = [
        "occurred_at",
        "tenant",
        "number",
        "category",
        "market",
        "billable",
        "pricing_type",
        "pricing_model",
        "wamid",
    ]
    list_filter = [MonthFilter, "tenant", "number", "category", "billable", "pricing_model"]
    search_fields = ["wamid"]
    date_hierarchy = "occurred_at"
    list_select_related = ["tenant", "number"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        summary = path(
            "spend/",
            self.admin_site.admin_view(self.spend_view),
            name="billing_charge_spend",
        )
        return [summary, *super().get_urls()]

    def spend_view(self, request):
        """The month's spend per tenant, as tenants see theirs on their spend page."""
        today = date.today()
        try:
            year, month = (int(p) for p in request.GET.get("month", "").split("-"))
            first = date(year, month, 1)
        except ValueError:
            first = today.replace(day=1)
        rows = []
        for tenant in Tenant.objects.order_by("slug"):
            spend = month_spend(first, tenant_id=tenant.pk)
            if spend.total.charges:
                rows.append((tenant, spend.total))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Spend, {first:%B %Y}",
            "month": first,
            "rows": rows,
            "total": month_spend(first).total,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "billing/admin_spend.html", context)


@admin.register(RateCardEntry)
class RateCardEntryAdmin(admin.ModelAdmin):
    list_display = ["market", "category", "price", "currency", "valid_from", "updated_at"]
    list_filter = ["category", "currency", "market"]
    search_fields = ["market", "category"]
