from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from .middleware import SESSION_KEY


@login_required
@require_POST
def switch_tenant(request):
    """Make another of the member's tenants the current one (same 404 for 'not yours')."""
    wanted = request.POST.get("tenant", "")
    membership = next((m for m in request.memberships if str(m.tenant_id) == wanted), None)
    if membership is None:
        raise Http404("No such workspace")
    request.session[SESSION_KEY] = str(membership.tenant_id)
    messages.info(request, f"Switched to {membership.tenant.name}.")
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = "inbox"
    return redirect(next_url)
