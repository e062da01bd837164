"""The conversation list: filters, search, keyset pages and the fragment htmx polls; the panel
and page of Meta's value-level errors (admins); and, in development, the form that makes the
Meta simulator's customer write."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

import requests
from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.tenants.models import WhatsAppNumber

from ..models import Conversation, MetaErrorReport
from .access import member_required
from .lookups import (
    get_number_or_404,
    tenant_conversations,
    tenant_numbers,
)

PAGE_SIZE = 50
ERRORS_PANEL_SIZE = 5
ERRORS_PAGE_SIZE = 100
STATUS_FILTERS = ("open", "closed", "all")
_NUMERIC_SEARCH = re.compile(r"^[\d\s+()\-.]+$")


@dataclass(frozen=True)
class ListFilters:
    number: WhatsAppNumber | None
    status: str
    q: str
    cursor: tuple[datetime | None, uuid.UUID] | None

    def query(self, **override: str) -> str:
        """The filters as a query string (without the cursor unless given)."""
        params = {
            "number": str(self.number.pk) if self.number else "",
            "status": self.status,
            "q": self.q,
        }
        params.update(override)
        return urlencode({k: v for k, v in params.items() if v})


def encode_cursor(last_message_at: datetime | None, pk: uuid.UUID) -> str:
    raw = json.dumps([last_message_at.isoformat() if last_message_at else None, pk.hex])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime | None, uuid.UUID] | None:
    """The (last_message_at, id) position a cursor names; None for anything malformed."""
    if not value or len(value) > 200:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        stamp, pk = json.loads(raw)
        at = datetime.fromisoformat(stamp) if stamp is not None else None
        if at is not None and at.tzinfo is None:
            return None
        return at, uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return None


def _parse_filters(request: HttpRequest, numbers: list[WhatsAppNumber]) -> ListFilters:
    number_id = request.GET.get("number", "")
    number = next((n for n in numbers if str(n.pk) == number_id), None)
    status = request.GET.get("status", "open")
    if status not in STATUS_FILTERS:
        status = "open"
    q = " ".join(request.GET.get("q", "").split())[:100]
    return ListFilters(number, status, q, decode_cursor(request.GET.get("cursor", "")))


def _search(queryset: QuerySet[Conversation], q: str) -> QuerySet[Conversation]:
    if not q:
        return queryset
    condition = Q(contact__profile_name__icontains=q)
    if _NUMERIC_SEARCH.match(q):
        # "+49 151 2345-678" finds wa_id "491512345678": numbers are stored as digits only.
        digits = re.sub(r"\D", "", q)
        if digits:
            condition |= Q(contact__wa_id__contains=digits)
    else:
        condition |= Q(contact__username__icontains=q)
    return queryset.filter(condition)


def conversation_page(request: HttpRequest, filters: ListFilters) -> tuple[list[Conversation], str]:
    """One page of the list, newest first, by keyset: (last_message_at DESC NULLS LAST, id
    DESC). No OFFSET: a page costs the same at any depth and rows arriving meanwhile shift
    nothing. Returns the rows and the cursor of the next page ("" on the last page)."""
    queryset = tenant_conversations(request).select_related("contact", "number")
    if filters.number is not None:
        queryset = queryset.filter(number=filters.number)
    if filters.status != "all":
        queryset = queryset.filter(status=filters.status)
    queryset = _search(queryset, filters.q)
    if filters.cursor is not None:
        at, pk = filters.cursor
        if at is None:
            queryset = queryset.filter(last_message_at__isnull=True, id__lt=pk)
        else:
            queryset = queryset.filter(
                Q(last_message_at__lt=at)
                | Q(last_message_at=at, id__lt=pk)
                | Q(last_message_at__isnull=True)
            )
    rows = list(
        queryset.order_by(F("last_message_at").desc(nulls_last=True), "-id")[: PAGE_SIZE + 1]
    )
    next_cursor = ""
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        next_cursor = encode_cursor(rows[-1].last_message_at, rows[-1].pk)
    return rows, next_cursor


def _list_context(request: HttpRequest) -> dict:
    numbers = list(tenant_numbers(request).order_by("display_phone_number", "id"))
    filters = _parse_filters(request, numbers)
    rows, next_cursor = conversation_page(request, filters)
    cursor = request.GET.get("cursor", "") if filters.cursor else ""
    return {
        "numbers": numbers,
        "filters": filters,
        "conversations": rows,
        "next_url": f"?{filters.query(cursor=next_cursor)}" if next_cursor else "",
        "first_url": f"?{filters.query()}" if filters.cursor else "",
        "rows_url": f"{reverse('inbox_rows')}?{filters.query(cursor=cursor)}",
        "show_number": len(numbers) > 1,
    }


@member_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    """The conversation list of the member's current tenant."""
    if request.tenant is None:
        return render(request, "conversations/inbox.html", {})
    context = _list_context(request)
    context["show_errors"] = request.membership.is_admin
    if context["show_errors"]:
        context["error_reports"] = list(_error_reports(request)[:ERRORS_PANEL_SIZE])
    if simulator_enabled():
        context["simulate_form"] = SimulateCustomerForm(numbers=context["numbers"])
    return render(request, "conversations/inbox.html", context)


@member_required
@require_GET
def inbox_rows(request: HttpRequest) -> HttpResponse:
    """The list fragment htmx polls every few seconds, with the page's filters and cursor."""
    if request.tenant is None:
        raise Http404("Not found.")
    return render(request, "conversations/_conversation_rows.html", _list_context(request))


def _error_reports(request: HttpRequest) -> QuerySet[MetaErrorReport]:
    return (
        MetaErrorReport.objects.filter(tenant_id=request.tenant.pk)
        .select_related("number")
        .order_by("-received_at", "-id")
    )


@member_required
@require_GET
def error_reports(request: HttpRequest) -> HttpResponse:
    if request.tenant is None:
        raise Http404("Not found.")
    if not request.membership.is_admin:
        raise PermissionDenied("Only the workspace's admins see Meta's error reports.")
    return render(
        request,
        "conversations/errors.html",
        {"error_reports": list(_error_reports(request)[:ERRORS_PAGE_SIZE])},
    )


def simulator_url() -> str:
    return (getattr(settings, "KLAROS_SIMULATOR_URL", "") or "").rstrip("/")


def simulator_enabled() -> bool:
    return bool(settings.DEBUG and simulator_url())


class SimulateCustomerForm(forms.Form):
    number = forms.ChoiceField(label="To number")
    phone = forms.CharField(label="Customer phone", max_length=32, initial="15551234567")
    name = forms.CharField(
        label="Customer name", max_length=256, required=False, initial="Test Customer"
    )
    text = forms.CharField(
        label="Message", max_length=4096, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, numbers: list[WhatsAppNumber], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["number"].choices = [(str(n.pk), n.display_phone_number) for n in numbers]

    def clean_phone(self) -> str:
        digits = re.sub(r"[\s+()\-.]", "", self.cleaned_data["phone"])
        if not digits.isdigit() or not 6 <= len(digits) <= 15:
            raise forms.ValidationError("Use the customer's number in international format.")
        return digits


@member_required
@require_POST
def simulate_customer(request: HttpRequest) -> HttpResponse:
    """Ask the Meta simulator's control API to deliver a customer's text to one of the
    tenant's numbers, as a signed webhook. The message appears once the worker drains it."""
    if request.tenant is None or not simulator_enabled():
        raise Http404("Not found.")
    numbers = list(tenant_numbers(request))
    form = SimulateCustomerForm(request.POST, numbers=numbers)
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[f].label if f in form.fields else f}: {' '.join(e)}"
            for f, e in form.errors.items()
        )
        flash.error(request, f"Simulated message not sent. {problems}")
        return redirect("inbox")
    number = get_number_or_404(request, form.cleaned_data["number"])
    payload = {
        "phone_number_id": number.phone_number_id,
        "from": form.cleaned_data["phone"],
        "name": form.cleaned_data["name"],
        "type": "text",
        # The simulator's control API takes the body as a plain string under "text".
        "text": form.cleaned_data["text"],
    }
    try:
        response = requests.post(f"{simulator_url()}/_sim/inbound", json=payload, timeout=5)
    except requests.RequestException as exc:
        flash.error(request, f"The Meta simulator at {simulator_url()} did not answer: {exc}")
        return redirect("inbox")
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if not response.ok:
        error = answer.get("error") if isinstance(answer, dict) else None
        flash.error(
            request,
            f"The Meta simulator refused the message (HTTP {response.status_code}): "
            f"{error or response.text[:200]}",
        )
    elif isinstance(answer, dict) and answer.get("status") != 200:
        flash.error(
            request,
            "The simulator built the message but Klaros's webhook did not accept it "
            f"(answered {answer.get('status') or 'nothing'}"
            f"{': ' + str(answer['error']) if answer.get('error') else ''}).",
        )
    else:
        flash.success(
            request,
            f"The simulated customer +{payload['from']} wrote to {number.display_phone_number}. "
            "It appears in the list as soon as the worker has processed it.",
        )
    return redirect("inbox")
