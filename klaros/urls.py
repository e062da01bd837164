from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from . import views

admin.site.site_header = "Klaros operator admin"
admin.site.site_title = "Klaros admin"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="inbox", permanent=False)),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("apps.accounts.urls")),
    path("tenants/", include("apps.tenants.urls")),
    path("inbox/", include("apps.conversations.urls")),
    path("admin/", admin.site.urls),
]
