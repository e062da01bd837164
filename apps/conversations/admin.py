"""Operator review of the journal, conversations and messages (read-mostly)."""

from django.contrib import admin, messages

from apps.audit.services import record

from .inbound.journal import replay_quarantined
from .models import (
    Contact,
    Conversation,
    Message,
    MetaErrorReport,
    StatusEvent,
    Template,
    WebhookEvent,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    """The journal. Bodies are Meta's (customer data): shown only as a size here."""

    list_display = ["id", "received_at", "app", "state", "attempts", "short_reason", "body_size"]
    list_filter = ["state", "app"]
    readonly_fields = [
        "id",
        "app",
        "received_at",
        "state",
        "attempts",
        "next_attempt_at",
        "processed_at",
        "reason",
        "counts",
        "body_size",
    ]
    exclude = ["body"]
    actions = ["replay"]

    @admin.display(description="reason")
    def short_reason(self, obj):
        return obj.reason[:120]

    @admin.display(description="body bytes")
    def body_size(self, obj):
        return len(obj.body or b"")

    @admin.action(description="Replay selected quarantined events")
    def replay(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        count = replay_quarantined(ids)
        record("webhook.replayed", actor=request.user, data={"events": ids[:100], "count": count})
        self.message_user(
            request, f"{count} quarantined event(s) queued for replay.", messages.SUCCESS
        )


@admin.register(Contact)
class ContactAdmin(ReadOnlyAdmin):
    list_display = ["display_name", "tenant", "wa_id", "user_id", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["wa_id", "user_id", "profile_name"]


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ["contact", "number", "tenant", "status", "last_message_at", "unread_count"]
    list_filter = ["tenant", "status"]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "direction", "type", "status", "wamid", "error_code"]
    list_filter = ["tenant", "direction", "type", "status"]
    search_fields = ["wamid"]


@admin.register(StatusEvent)
class StatusEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "tenant", "wamid", "status", "occurred_at"]
    list_filter = ["tenant", "status"]
    search_fields = ["wamid"]


@admin.register(MetaErrorReport)
class MetaErrorReportAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "tenant", "number", "code", "title"]
    list_filter = ["tenant", "code"]


@admin.register(Template)
class TemplateAdmin(ReadOnlyAdmin):
    list_display = ["name", "language", "tenant", "waba_id", "category", "status", "synced_at"]
    list_filter = ["tenant", "status", "category"]
    search_fields = ["name", "waba_id"]
