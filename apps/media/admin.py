"""Operators see media metadata (never the bytes, never a link) to diagnose unavailable media."""

from django.contrib import admin

from .models import MediaObject


@admin.register(MediaObject)
class MediaObjectAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "tenant",
        "kind",
        "direction",
        "state",
        "content_type",
        "size",
        "created_at",
    )
    list_filter = ("state", "direction", "kind")
    search_fields = ("=id", "=meta_media_id", "=sha256")
    readonly_fields = [f.name for f in MediaObject._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
