"""The operator's review of the audit trail: read-only, readable (actor emails resolved when
shown, a summary of each event's data), filterable by tenant, action, actor and date, and
exportable as a streamed CSV of exactly the filtered events."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.tenants.models import Tenant

from .models import AuditEvent
from .presentation import data_items, label_events, stream_events_csv
from .services import record
from .verification import verify_all


class LabelledChangeList(ChangeList):
    """Resolves the actors of the page shown with one query."""

    def get_results(self, request):
        super().get_results(request)
        label_events(list(self.result_list))


class ActorFilter(admin.SimpleListFilter):
    """By who acted: one of the users or operators seen in the log, or a kind of actor."""

    title = "actor"
    parameter_name = "actor"
    KINDS = ("system", "meta", "customer", "command", "anonymous")
    USERS_LISTED = 100

    def lookups(self, request, model_admin):
        ids = (
            AuditEvent.objects.filter(actor_type__in=("user", "operator"))
            .exclude(actor_id="")
            .values_list("actor_id", flat=True)
            .distinct()[: self.USERS_LISTED]
        )
        users = []
        for value in ids:
            try:
                users.append(uuid.UUID(value))
            except ValueError:
                continue
        emails = get_user_model().objects.filter(pk__in=users).values_list("pk", "email")
        choices = [(str(pk), email) for pk, email in sorted(emails, key=lambda row: row[1])]
        return choices + [(f"kind:{kind}", f"({kind})") for kind in self.KINDS]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value.startswith("kind:"):
            return queryset.filter(actor_type=value.removeprefix("kind:"))
        return queryset.filter(actor_type__in=("user", "operator"), actor_id=value)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only review of the audit trail. No add, change or delete, for anyone."""

    list_display = ["created_at", "action", "tenant", "actor", "object", "summary", "seq"]
    list_filter = ["action", ActorFilter, "actor_type", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["action", "object_id", "actor_id"]
    date_hierarchy = "created_at"
    fields = [
        "created_at",
        "tenant",
        "action",
        "actor",
        "actor_type",
        "actor_id",
        "object",
        "object_type",
        "object_id",
        "data_table",
        "chain",
        "seq",
        "prev_hash",
        "hash",
    ]
    readonly_fields = fields
    change_list_template = "admin/audit/auditevent/change_list.html"

    def get_changelist(self, request, **kwargs):
        return LabelledChangeList

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_object(self, request, object_id, from_field=None):
        event = super().get_object(request, object_id, from_field)
        if event is not None:
            label_events([event])
        return event

    @admin.display(description="actor")
    def actor(self, event: AuditEvent) -> str:
        return getattr(event, "actor_label", "")

    @admin.display(description="object")
    def object(self, event: AuditEvent) -> str:
        return getattr(event, "object_label", "")

    @admin.display(description="data")
    def summary(self, event: AuditEvent) -> str:
        return getattr(event, "data_summary", "")

    @admin.display(description="data")
    def data_table(self, event: AuditEvent) -> str:
        items = data_items(event.data)
        if not items:
            return "—"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", items)
        return format_html('<table class="audit-data">{}</table>', rows)

    # --- CSV export of the filtered events ------------------------------------------------

    def get_urls(self):
        export = path(
            "export.csv",
            self.admin_site.admin_view(self.export_csv),
            name="audit_auditevent_export",
        )
        verify = path(
            "verify/",
            self.admin_site.admin_view(self.verify_view),
            name="audit_auditevent_verify",
        )
        return [export, verify, *super().get_urls()]

    # --- Chain verification ---------------------------------------------------------------

    def verify_view(self, request):
        """Recompute one tenant's chain (`?tenant=<id>`) or every chain, against every signed
        checkpoint, and show where each stands. Long deployments run `manage.py verify_audit`
        instead: this page works in one request."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenant = None
        wanted = request.GET.get("tenant", "")
        if wanted:
            try:
                tenant = Tenant.objects.get(pk=uuid.UUID(wanted))
            except (ValueError, Tenant.DoesNotExist) as exc:
                raise Http404("No such tenant.") from exc
        report = verify_all(tenant=tenant)
        context = {
            **self.admin_site.each_context(request),
            "title": "Audit chain verification",
            "opts": self.model._meta,
            "report": report,
            "tenant": tenant,
            "changelist_url": reverse("admin:audit_auditevent_changelist"),
        }
        return TemplateResponse(request, "admin/audit/auditevent/verify.html", context)

    def changelist_view(self, request, extra_context=None):
        query = request.GET.urlencode()
        tenant = request.GET.get("tenant__id__exact", "")
        extra_context = {
            **(extra_context or {}),
            "export_url": reverse("admin:audit_auditevent_export") + (f"?{query}" if query else ""),
            "verify_url": reverse("admin:audit_auditevent_verify")
            + (f"?{urlencode({'tenant': tenant})}" if tenant else ""),
        }
        return super().changelist_view(request, extra_context)

    def export_csv(self, request):
        """The events the changelist shows with the same filters, search and date, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        queryset = changelist.get_queryset(request)
        record(
            "audit.exported",
            actor=request.user,
            data={"filters": request.GET.urlencode()[:500], "scope": "deployment"},
        )
        response = StreamingHttpResponse(
            stream_events_csv(queryset), content_type="text/csv; charset=utf-8"
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
        return response
