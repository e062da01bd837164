def tenant(request):
    """Expose the current tenant and the member's other tenants (for the switcher)."""
    return {
        "current_tenant": getattr(request, "tenant", None),
        "current_membership": getattr(request, "membership", None),
        "memberships": getattr(request, "memberships", []),
    }
