"""The project's URLs plus /media/, for the media tests until klaros/urls.py mounts it."""

from django.urls import include, path

from klaros.urls import urlpatterns as project_urlpatterns

_mounted = any(getattr(p, "app_name", None) == "media" for p in project_urlpatterns)
urlpatterns = list(project_urlpatterns)
if not _mounted:
    urlpatterns.append(path("media/", include("apps.media.urls")))
