"""Operator admin (staff only, unscoped by the middleware). Secrets are write-only here."""

from django.contrib import admin, messages

from apps.audit.services import record

from .models import Membership, MetaApp, Tenant, WhatsAppNumber

SECRET_FIELDS = {"app_secret", "verify_token", "access_token"}


class AuditedAdminMixin:
    """Every change an operator makes is audited; changed secrets are named, never shown."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        changed = sorted(form.changed_data) if change else []
        action = f"{obj._meta.model_name}.{'changed' if change else 'created'}_by_operator"
        data = {"fields": changed}
        if SECRET_FIELDS & set(changed):
            action = f"{obj._meta.model_name}.credentials_changed"
        record(action, obj, actor=request.user, data=data)

    def delete_model(self, request, obj):
        record(f"{obj._meta.model_name}.deleted_by_operator", obj, actor=request.user)
        super().delete_model(request, obj)


class SecretsRequiredOnAddMixin:
    """Secret form fields are optional so that blank keeps the stored value on a change; a new
    row has no stored value, so there they are required (else it would be saved without one)."""

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None:
            for name in SECRET_FIELDS & set(form.base_fields):
                form.base_fields[name].required = True
        return form


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(MetaApp)
class MetaAppAdmin(SecretsRequiredOnAddMixin, AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["app_id", "name", "updated_at"]
    fields = ["app_id", "name", "app_secret", "verify_token"]


@admin.register(WhatsAppNumber)
class WhatsAppNumberAdmin(SecretsRequiredOnAddMixin, AuditedAdminMixin, admin.ModelAdmin):
    list_display = [
        "display_phone_number",
        "tenant",
        "phone_number_id",
        "waba_id",
        "credential_status",
    ]
    list_filter = ["credential_status", "tenant"]
    search_fields = ["display_phone_number", "phone_number_id", "waba_id"]
    fields = [
        "tenant",
        "app",
        "phone_number_id",
        "waba_id",
        "display_phone_number",
        "access_token",
        "credential_status",
        "credential_error",
    ]
    readonly_fields = ["credential_error"]
    actions = ["sync_message_templates"]

    @admin.action(description="Sync message templates from Meta")
    def sync_message_templates(self, request, queryset):
        # The admin is the top layer, like a view: it may call the conversations service.
        from apps.conversations.outbound.template_sync import sync_templates
        from apps.whatsapp.graph import GraphError, GraphTransportError

        from .scoping import tenant_scope

        for number in queryset.select_related("tenant"):
            with tenant_scope(number.tenant_id):
                try:
                    result = sync_templates(number, actor=request.user)
                except (GraphError, GraphTransportError) as exc:
                    self.message_user(request, f"{number}: {exc}", messages.ERROR)
                    continue
            self.message_user(
                request,
                f"{number} ({number.tenant}): {result.total} template(s), {result.created} new, "
                f"{result.updated} updated.",
                messages.SUCCESS,
            )
