"""The real URLs plus one probe that reports the scope a request ran in (test-only)."""

from django.http import JsonResponse
from django.urls import path

from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import ScopeError, get_scope
from klaros.urls import urlpatterns as real_urlpatterns


def scope_probe(request):
    scope = get_scope()
    try:
        numbers = sorted(WhatsAppNumber.objects.values_list("phone_number_id", flat=True))
    except ScopeError:
        numbers = "refused"
    return JsonResponse(
        {
            "tenant_id": str(scope.tenant_id) if scope and scope.tenant_id else None,
            "all_tenants": bool(scope and scope.all_tenants),
            "numbers": numbers,
        }
    )


urlpatterns = [*real_urlpatterns, path("test-probe/scope/", scope_probe)]
