from django.contrib import admin

from .models import ConsentEvent, KeywordRule


@admin.register(ConsentEvent)
class ConsentEventAdmin(admin.ModelAdmin):
    """The ledger is append-only: operators review it, nobody edits it."""

    list_display = ["occurred_at", "tenant", "contact", "kind", "scope", "source", "actor_type"]
    list_filter = ["tenant", "kind", "scope", "source"]
    readonly_fields = [f.name for f in ConsentEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(KeywordRule)
class KeywordRuleAdmin(admin.ModelAdmin):
    list_display = ["word", "kind", "language", "tenant"]
    list_filter = ["tenant", "kind"]
