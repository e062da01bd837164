"""Mounted at /media/ by klaros/urls.py: `path("media/", include("apps.media.urls"))`."""

from django.urls import path

from . import views

app_name = "media"

urlpatterns = [
    path("<uuid:media_id>/", views.view_media, name="view"),
    path("f/<str:token>/", views.serve_signed_media, name="serve"),
    path("meta/<str:token>/", views.serve_media_to_meta, name="meta_fetch"),
]
