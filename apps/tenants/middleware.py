"""The web entry point of tenant scoping.

Every request runs inside exactly one scope decision: a member's request runs in their current
tenant's scope; an operator's request to the admin runs unscoped (the admin audits what it
changes); anything else (anonymous pages, login, the webhook, which routes by itself) has no
scope, so a stray tenant-owned query fails loudly instead of leaking.
"""

from __future__ import annotations

from django.urls import reverse

from .models import Membership
from .scoping import no_scope, tenant_scope, unscoped

SESSION_KEY = "klaros_tenant_id"


def memberships_for(user) -> list[Membership]:
    return list(
        Membership.objects.filter(user=user, tenant__is_active=True)
        .select_related("tenant")
        .order_by("tenant__name")
    )


class TenantScopeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.admin_prefix = None

    def __call__(self, request):
        if self.admin_prefix is None:
            self.admin_prefix = reverse("admin:index")
        request.tenant = None
        request.membership = None
        request.memberships = []
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            with no_scope():
                return self.get_response(request)
        if request.path.startswith(self.admin_prefix):
            if user.is_staff:
                with unscoped("operator admin"):
                    return self.get_response(request)
            with no_scope():
                return self.get_response(request)
        request.memberships = memberships_for(user)
        current = self._current_membership(request)
        if current is None:
            with no_scope():
                return self.get_response(request)
        request.membership = current
        request.tenant = current.tenant
        with tenant_scope(current.tenant):
            return self.get_response(request)

    @staticmethod
    def _current_membership(request) -> Membership | None:
        if not request.memberships:
            return None
        wanted = request.session.get(SESSION_KEY)
        for membership in request.memberships:
            if str(membership.tenant_id) == wanted:
                return membership
        return request.memberships[0]
