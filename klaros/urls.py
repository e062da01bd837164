from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from apps.conversations.inbound.webhook import whatsapp_webhook

from . import views

admin.site.site_header = "Klaros operator admin"
admin.site.site_title = "Klaros admin"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="inbox", permanent=False)),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("apps.accounts.urls")),
    path("tenants/", include("apps.tenants.urls")),
    path("inbox/", include("apps.conversations.inbox.urls")),
    path("inbox/export/", include("apps.privacy.urls")),
    path("media/", include("apps.media.urls")),
    path("webhooks/whatsapp/", whatsapp_webhook, name="whatsapp_webhook"),
    path("webhooks/whatsapp/<str:app_id>/", whatsapp_webhook, name="whatsapp_webhook_app"),
    path("admin/", admin.site.urls),
]
