"""Who may open the inbox's screens, and how a refusal is answered: an htmx poll with an
expired session gets a redirect header instead of a login page swapped into a fragment."""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse


def member_required(view):
    """Like ``login_required``, but an expired session on an htmx poll asks htmx to load the
    login page as a whole page instead of swapping it into a fragment."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            if request.headers.get("HX-Request"):
                response = HttpResponse(status=204)
                response["HX-Redirect"] = reverse(settings.LOGIN_URL)
                return response
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def require_admin(request: HttpRequest) -> None:
    if request.tenant is None:
        raise Http404("Not found.")
    if not request.membership.is_admin:
        raise PermissionDenied("Only the workspace's admins can change this.")
