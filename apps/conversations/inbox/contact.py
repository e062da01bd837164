"""The contact page: the contact's conversations, current consent, the consent ledger with its
evidence, and an agent recording an opt-out or opt-in."""

from __future__ import annotations

import json
import uuid

from django.contrib import messages as flash
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.throttling import client_ip_behind_proxies
from apps.consent.models import ConsentEvent, ConsentSource
from apps.consent.services import consent_state, record_consent

from .access import member_required
from .forms import (
    CONSENT_ACTIONS,
    ConsentForm,
)
from .lookups import (
    get_contact_or_404,
    tenant_conversations,
)


def _ledger(contact) -> list[ConsentEvent]:
    events = list(
        ConsentEvent.objects.filter(tenant_id=contact.tenant_id, contact=contact).order_by(
            "-occurred_at", "-created_at"
        )[:200]
    )
    user_ids = {e.actor_id for e in events if e.actor_type in ("user", "operator") and e.actor_id}
    emails = {}
    if user_ids:
        emails = {
            str(pk): email
            for pk, email in get_user_model()
            .objects.filter(pk__in=user_ids)
            .values_list("pk", "email")
        }
    for event in events:
        event.actor_label = _actor_label(event, emails)
        event.evidence_items = _evidence_items(event.evidence)
    return events


def _actor_label(event: ConsentEvent, emails: dict[str, str]) -> str:
    if event.actor_type in ("user", "operator"):
        return emails.get(event.actor_id, "a former member")
    if event.actor_type == "system":
        return "Klaros" + (f" ({event.actor_id})" if event.actor_id else "")
    return f"{event.actor_type}{f' ({event.actor_id})' if event.actor_id else ''}"


def _evidence_items(evidence) -> list[tuple[str, str]]:
    """Evidence as (label, text) pairs; values are plain text (escaped by the template)."""
    if not isinstance(evidence, dict):
        return [("evidence", str(evidence))] if evidence else []
    items = []
    for key, value in evidence.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        items.append((str(key).replace("_", " "), text[:1000]))
    return items


def _contact_context(request: HttpRequest, contact, consent_form: ConsentForm | None = None):
    conversations = (
        tenant_conversations(request)
        .filter(contact=contact)
        .select_related("number")
        .order_by("-last_message_at", "-id")
    )
    return {
        "contact": contact,
        "contact_conversations": conversations,
        "consent": consent_state(contact),
        "ledger": _ledger(contact),
        "consent_form": consent_form or ConsentForm(),
        "is_admin": bool(request.membership and request.membership.is_admin),
    }


@member_required
@require_GET
def contact_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    contact = get_contact_or_404(request, pk)
    return render(request, "conversations/contact.html", _contact_context(request, contact))


@member_required
@require_POST
def contact_consent(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """An agent or admin records an opt-out or opt-in, with the reason as evidence."""
    contact = get_contact_or_404(request, pk)
    form = ConsentForm(request.POST)
    if not form.is_valid():
        context = _contact_context(request, contact, consent_form=form)
        return render(request, "conversations/contact.html", context, status=422)
    evidence = {"reason": form.cleaned_data["reason"]} if form.cleaned_data["reason"] else {}
    record_consent(
        contact,
        kind=form.cleaned_data["kind"],
        scope=form.cleaned_data["scope"],
        source=ConsentSource.AGENT,
        actor=request.user,
        evidence=evidence,
        ip_address=client_ip_behind_proxies(request),
    )
    flash.success(request, f"Recorded: {CONSENT_ACTIONS[form.cleaned_data['action']][2]}.")
    return redirect("contact", pk=contact.pk)
