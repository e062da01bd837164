from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def inbox(request):
    """The conversation list of the member's current tenant."""
    return render(request, "conversations/inbox.html", {})
