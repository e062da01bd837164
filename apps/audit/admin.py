from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only review of the audit trail."""

    list_display = [
        "created_at",
        "action",
        "tenant",
        "actor_type",
        "actor_id",
        "object_type",
        "object_id",
        "seq",
    ]
    list_filter = ["action", "actor_type", "tenant"]
    search_fields = ["action", "object_id", "actor_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
