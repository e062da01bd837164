"""The inbox: conversation list, conversation page, their polled fragments, and the errors panel.

Views are thin: parse the request, look objects up through the scoped helpers in ``lookups``,
call a service, render. Fragments polled by htmx render the same partial templates as the pages.
"""

from __future__ import annotations

import base64
import binascii
import functools
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
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.timesince import timesince
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.throttling import client_ip_behind_proxies
from apps.audit.services import record
from apps.consent.models import ConsentEvent, ConsentSource, KeywordRule
from apps.consent.services import consent_state, record_consent
from apps.tenants.models import WhatsAppNumber
from apps.whatsapp.graph import GraphError, GraphTransportError

from .forms import (
    CONSENT_ACTIONS,
    AssignForm,
    ConsentForm,
    KeywordRuleForm,
    NoteForm,
    ReplyForm,
)
from .gate import FREE_FORM, SendRefused, check_send, window_closes_at
from .lookups import (
    get_contact_or_404,
    get_conversation_or_404,
    get_keyword_rule_or_404,
    get_message_or_404,
    get_number_or_404,
    get_quotable_message_or_404,
    get_template_or_404,
    tenant_conversations,
    tenant_memberships,
    tenant_numbers,
)
from .models import Conversation, Direction, Message, MetaErrorReport, Template, TemplateStatus
from .outbox import (
    SendError,
    add_internal_note,
    queue_template,
    queue_text_reply,
    render_template_text,
    template_variable_names,
)
from .services import (
    ConversationActionError,
    assign_conversation,
    close_conversation,
    mark_conversation_read,
    reopen_conversation,
    request_mark_read_at_meta,
)
from .template_sync import sync_templates

PAGE_SIZE = 50
THREAD_PAGE_SIZE = 200
ERRORS_PANEL_SIZE = 5
ERRORS_PAGE_SIZE = 100
STATUS_FILTERS = ("open", "closed", "all")
_NUMERIC_SEARCH = re.compile(r"^[\d\s+()\-.]+$")


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


# ------------------------------------------------------------------------------------------
# Conversation list


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


# ------------------------------------------------------------------------------------------
# Conversation page


def _attach_quotes(conversation: Conversation, items: list[Message]) -> None:
    """Give each reply its quoted message and each reaction its target, with one query.

    Quotes are looked up in this conversation only: a wamid from Meta is a pointer, not proof
    the row it names is the customer's (and the scope already limits it to the tenant)."""
    wanted = set()
    for item in items:
        if item.context_wamid:
            wanted.add(item.context_wamid)
        if item.type == "reaction" and isinstance(item.content, dict):
            target = item.content.get("message_id")
            if isinstance(target, str) and target:
                wanted.add(target)
    found = {}
    if wanted:
        found = {
            m.wamid: m
            for m in Message.objects.filter(
                tenant_id=conversation.tenant_id, conversation=conversation, wamid__in=wanted
            ).only("id", "wamid", "type", "text", "direction")
        }
    for item in items:
        item.quoted = found.get(item.context_wamid) if item.context_wamid else None
        target = item.content.get("message_id") if isinstance(item.content, dict) else None
        item.reacted_to = found.get(target) if item.type == "reaction" and target else None


def _thread_messages(conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(tenant_id=conversation.tenant_id, conversation=conversation)


def _poll_url(conversation: Conversation, shown: list[Message]) -> str:
    """The fragment URL that asks for what the page has not shown yet.

    ``after`` is the last message in display order (sent_at, id); ``since`` the most recently
    stored one (created_at, id). Both are needed: Meta's timestamp is the customer's clock and
    webhooks may arrive late (Meta retries for days), so a message stored now can sort before
    the last one shown; it is then appended once, and sits in its place after a reload."""
    url = reverse("conversation_messages", args=[conversation.pk])
    if not shown:
        return url
    after = max(shown, key=lambda m: (m.sent_at, m.pk))
    since = max(shown, key=lambda m: (m.created_at, m.pk))
    return f"{url}?{urlencode({'after': after.pk, 'since': since.pk})}"


@member_required
@require_GET
def conversation_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_or_404(request, pk)
    queryset = _thread_messages(conversation)
    before_id = request.GET.get("before", "")
    before = None
    if before_id:
        before = queryset.filter(pk=_uuid_or_404(before_id)).only("id", "sent_at").first()
        if before is None:
            raise Http404("Not found.")
        queryset = queryset.filter(
            Q(sent_at__lt=before.sent_at) | Q(sent_at=before.sent_at, id__lt=before.pk)
        )
    # The newest page, read backwards and shown oldest first.
    items = list(
        queryset.select_related("sent_by")
        .prefetch_related("media_objects")
        .order_by("-sent_at", "-id")[: THREAD_PAGE_SIZE + 1]
    )
    has_earlier = len(items) > THREAD_PAGE_SIZE
    items = items[:THREAD_PAGE_SIZE][::-1]
    _attach_quotes(conversation, items)
    mark_conversation_read(conversation, actor=request.user)
    if before is None:
        # Once per open of the conversation (not per poll, not for history pages).
        request_mark_read_at_meta(conversation)
    template_id = request.GET.get("template", "")
    context = {
        "conversation": conversation,
        "contact": conversation.contact,
        "thread_messages": items,
        "earlier_url": f"?before={items[0].pk}" if has_earlier and items else "",
        "is_history": before is not None,
        # Reading history (a `before` page) does not poll: new messages belong after a gap.
        "poll_url": "" if before else _poll_url(conversation, items),
    }
    context.update(
        composer_context(
            request,
            conversation,
            template=get_template_or_404(request, template_id) if template_id else None,
        )
    )
    context.update(_side_context(request, conversation))
    return render(request, "conversations/thread.html", context)


def _uuid_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise Http404("Not found.") from exc


MAX_TICKS = 100


def _parse_ticks(value: str) -> dict[uuid.UUID, str]:
    """``id:status,id:status`` — the outbound messages the page shows with a status that may
    still change. Malformed pairs are ignored (this only decides what to re-render)."""
    shown: dict[uuid.UUID, str] = {}
    for pair in value.split(",")[:MAX_TICKS]:
        pk, _, status = pair.partition(":")
        try:
            shown[uuid.UUID(pk)] = status[:20]
        except ValueError:
            continue
    return shown


@member_required
@require_GET
def conversation_messages(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Messages after ``after`` (by sent_at, id) or stored after ``since`` (by created_at),
    for htmx to append to the thread, plus what changed on the page.

    The page's script adds what it shows: ``ticks`` (outbound messages whose status may still
    change) and ``mode``/``window`` (the composer's state). Messages whose status differs come
    back as out-of-band replacements, the window line when its text changed, and the whole
    composer when the reply box must give way to the template picker (or back).

    204 when there is nothing new, so htmx swaps nothing. Otherwise the new messages plus an
    out-of-band replacement of the poller carrying the new ``after``, so the next poll never
    returns them again."""
    conversation = get_conversation_or_404(request, pk)
    queryset = _thread_messages(conversation)
    after_id, since_id = request.GET.get("after", ""), request.GET.get("since", "")
    anchors: list[Message] = []
    new = queryset
    if after_id:
        wanted = {_uuid_or_404(after_id), _uuid_or_404(since_id or after_id)}
        found = {
            m.pk: m for m in queryset.filter(pk__in=wanted).only("id", "sent_at", "created_at")
        }
        if len(found) != len(wanted):
            raise Http404("Not found.")
        after = found[_uuid_or_404(after_id)]
        since = found[_uuid_or_404(since_id or after_id)]
        anchors = [after, since]
        new = queryset.filter(
            Q(sent_at__gt=after.sent_at)
            | Q(sent_at=after.sent_at, id__gt=after.pk)
            | Q(created_at__gt=since.created_at)
        ).exclude(pk__in=wanted)
    items = list(
        new.select_related("sent_by")
        .prefetch_related("media_objects")
        .order_by("sent_at", "id")[:THREAD_PAGE_SIZE]
    )
    shown = {m.pk for m in items}
    ticks = _parse_ticks(request.GET.get("ticks", ""))
    changed = []
    if ticks:
        changed = [
            m
            for m in queryset.filter(
                pk__in=list(ticks), direction=Direction.OUTBOUND
            ).prefetch_related("media_objects")
            if m.pk not in shown and m.status != ticks[m.pk]
        ]
    context = {
        "conversation": conversation,
        "contact": conversation.contact,
        "thread_messages": items,
        "changed_messages": changed,
        "poll_url": _poll_url(conversation, anchors + items),
    }
    shown_mode = request.GET.get("mode")
    if shown_mode is not None:
        composer = composer_context(request, conversation)
        if composer["composer_mode"] != shown_mode:
            context.update(composer, composer_oob=True)
        elif composer["window"]["key"] != request.GET.get("window", ""):
            context.update(composer, window_oob=True)
    if not items and not changed and "composer_oob" not in context and "window_oob" not in context:
        return HttpResponse(status=204)
    _attach_quotes(conversation, items + changed)
    if items:
        # The agent is looking at the conversation: what just arrived is read.
        mark_conversation_read(conversation, actor=request.user)
    return render(request, "conversations/_thread_poll.html", context)


@member_required
@require_GET
def message_permalink(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    message = get_message_or_404(request, pk)
    url = reverse("conversation", args=[message.conversation_id])
    return redirect(f"{url}#m-{message.pk}")


# ------------------------------------------------------------------------------------------
# Meta's value-level errors (admins)


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


# ------------------------------------------------------------------------------------------
# Demo: make the simulated customer write (DEBUG + a configured Meta simulator only)


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


# ------------------------------------------------------------------------------------------
# Replying: the reply box, or the template picker once free-form text is not allowed


def window_summary(conversation: Conversation, now: datetime | None = None) -> dict:
    """The 24-hour window in words, computed here so every agent sees the server's clock."""
    now = now or timezone.now()
    closes = window_closes_at(conversation)
    if closes is None:
        text, is_open = "No window yet: the customer has not written to this number.", False
    elif now < closes:
        minutes = int((closes - now).total_seconds() // 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            left = f"{hours} h {minutes} min"
        elif minutes:
            left = f"{minutes} min"
        else:
            left = "less than a minute"
        text, is_open = f"Window open: closes in {left}", True
    else:
        text, is_open = f"Window closed {timesince(closes, now)} ago", False
    return {"open": is_open, "text": text, "closes_at": closes}


def _template_choices(conversation: Conversation, state) -> list[dict]:
    """Approved templates of the number's WABA; marketing ones are listed but disabled, with
    the reason, when the ledger does not allow them (the gate would refuse them anyway)."""
    templates = Template.objects.filter(
        tenant_id=conversation.tenant_id,
        waba_id=conversation.number.waba_id,
        status=TemplateStatus.APPROVED,
    ).order_by("name", "language")
    choices = []
    for template in templates:
        reason = ""
        if template.is_marketing:
            if state.marketing_opted_out:
                reason = "the customer opted out of marketing"
            elif not state.marketing_opted_in:
                reason = "needs a recorded marketing opt-in"
        choices.append({"template": template, "disabled_reason": reason})
    return choices


def _template_variables(template: Template | None, params: list[str]) -> list[dict]:
    if template is None:
        return []
    names = template_variable_names(template)
    values = [*params[: len(names)], *[""] * (len(names) - len(params))]
    return [
        {"name": name, "value": value, "index": index}
        for index, (name, value) in enumerate(zip(names, values, strict=True), start=1)
    ]


def _component_text(template: Template, kind: str) -> str:
    for component in template.components or []:
        if not isinstance(component, dict) or str(component.get("type")).upper() != kind:
            continue
        if kind == "HEADER" and str(component.get("format", "TEXT")).upper() != "TEXT":
            return f"[{str(component.get('format')).lower()} header]"
        text = component.get("text")
        return text if isinstance(text, str) else ""
    return ""


def template_preview_context(template: Template | None, params: list[str]) -> dict:
    """What the customer would read. Variables left empty keep their placeholder; the values
    are plain text, escaped by the template like everything else."""
    if template is None:
        return {"preview": None}
    variables = _template_variables(template, params)
    filled = [v["value"].strip() or f"{{{{{v['name']}}}}}" for v in variables]
    buttons = []
    for component in template.components or []:
        if isinstance(component, dict) and str(component.get("type")).upper() == "BUTTONS":
            for button in component.get("buttons") or []:
                if isinstance(button, dict) and isinstance(button.get("text"), str):
                    buttons.append(button["text"])
    return {
        "preview": {
            "header": _component_text(template, "HEADER"),
            "body": render_template_text(template, filled),
            "footer": _component_text(template, "FOOTER"),
            "buttons": buttons,
        }
    }


def composer_context(
    request: HttpRequest,
    conversation: Conversation,
    *,
    reply_form: ReplyForm | None = None,
    error: str = "",
    template: Template | None = None,
    params: list[str] | None = None,
) -> dict:
    """The composer under the thread: ``reply`` (free-form allowed now), ``template`` (the
    window is closed: pick an approved template) or ``blocked`` (the gate refuses everything,
    e.g. the contact opted out). The gate decides, so the page never offers what it refuses."""
    window = window_summary(conversation)
    mode, refusal = "reply", ""
    try:
        check_send(conversation, kind=FREE_FORM)
    except SendRefused as exc:
        refusal = exc.message
        mode = "template" if exc.code == "window_closed" else "blocked"
    window["key"] = f"{mode}|{window['text']}"
    context = {
        "composer_mode": mode,
        "composer_refusal": refusal,
        "composer_error": error,
        "window": window,
        "is_admin": bool(request.membership and request.membership.is_admin),
    }
    if mode == "reply":
        reply_form = reply_form or ReplyForm()
        quote = None
        quote_id = reply_form["quote"].value() if reply_form.is_bound else None
        if quote_id:
            quote = (
                _thread_messages(conversation)
                .filter(pk=_uuid_or_404(str(quote_id)))
                .exclude(wamid__isnull=True)
                .first()
            )
        context.update(reply_form=reply_form, reply_quote=quote)
    elif mode == "template":
        choices = _template_choices(conversation, consent_state(conversation.contact))
        usable = {c["template"].pk for c in choices if not c["disabled_reason"]}
        selected = template if template is not None and template.pk in usable else None
        params = params or []
        context.update(
            template_choices=choices,
            selected_template=selected,
            template_variables=_template_variables(selected, params),
            **template_preview_context(selected, params),
        )
    return context


def _side_context(request: HttpRequest, conversation: Conversation) -> dict:
    memberships = list(tenant_memberships(request))
    assign_form = AssignForm(
        initial={"assignee": str(conversation.assigned_to_id or "")},
        memberships=memberships,
        current_user=request.user,
    )
    assignee = next((m.user for m in memberships if m.user_id == conversation.assigned_to_id), None)
    return {"assign_form": assign_form, "assignee": assignee, "note_form": NoteForm()}


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _composer_response(request: HttpRequest, conversation: Conversation, **kwargs) -> HttpResponse:
    context = {"conversation": conversation, "contact": conversation.contact}
    context.update(composer_context(request, conversation, **kwargs))
    return render(request, "conversations/_composer.html", context)


def _after_send(request: HttpRequest, conversation: Conversation) -> HttpResponse:
    if is_htmx(request):
        response = _composer_response(request, conversation)
        # The page polls at once, so the new message shows without waiting for the next tick.
        response["HX-Trigger"] = "klaros:thread-changed"
        return response
    return redirect("conversation", pk=conversation.pk)


def _refused(
    request: HttpRequest, conversation: Conversation, error: str, *, query: str = "", **kwargs
) -> HttpResponse:
    """Nothing was queued: say why, next to the box (htmx) or as a message after a redirect."""
    if is_htmx(request):
        # 200, not 422: htmx does not swap error responses by default, and the refusal is the
        # content the agent needs to see.
        return _composer_response(request, conversation, error=error, **kwargs)
    flash.error(request, error)
    return redirect(reverse("conversation", args=[conversation.pk]) + query)


def _first_error(form: forms.Form) -> str:
    for errors in form.errors.values():
        return " ".join(errors)
    return "Check the form."


@member_required
@require_POST
def reply(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Queue a free-form reply (optionally quoting a message). Never calls Graph: the outbox
    worker does, after re-checking the gate."""
    conversation = get_conversation_or_404(request, pk)
    form = ReplyForm(request.POST)
    if not form.is_valid():
        return _refused(request, conversation, _first_error(form), reply_form=form)
    quote = None
    if form.cleaned_data["quote"]:
        quote = get_quotable_message_or_404(request, conversation, form.cleaned_data["quote"])
    try:
        queue_text_reply(conversation, form.cleaned_data["body"], actor=request.user, quote=quote)
    except SendRefused as refusal:
        return _refused(request, conversation, refusal.message, reply_form=form)
    except SendError as exc:
        return _refused(request, conversation, str(exc), reply_form=form)
    return _after_send(request, conversation)


@member_required
@require_POST
def send_template(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Queue an approved template with its variables filled in."""
    conversation = get_conversation_or_404(request, pk)
    template_id = request.POST.get("template", "")
    params = request.POST.getlist("params")[:50]
    if not template_id:
        return _refused(request, conversation, "Choose a template to send.")
    template = get_template_or_404(request, template_id)
    try:
        queue_template(conversation, template, params, actor=request.user)
    except (SendRefused, SendError) as exc:
        message = exc.message if isinstance(exc, SendRefused) else str(exc)
        return _refused(
            request,
            conversation,
            message,
            template=template,
            params=params,
            query=f"?{urlencode({'template': template.pk})}",
        )
    return _after_send(request, conversation)


@member_required
@require_POST
def template_preview(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """The picker's server-rendered parts: the variable fields of the chosen template with its
    preview (``part=fields``), or the preview alone while the agent types."""
    conversation = get_conversation_or_404(request, pk)
    template_id = request.POST.get("template", "")
    template = get_template_or_404(request, template_id) if template_id else None
    if template is not None and template.waba_id != conversation.number.waba_id:
        template = None
    params = request.POST.getlist("params")[:50]
    context = {
        "conversation": conversation,
        "selected_template": template,
        "template_variables": _template_variables(template, params),
        **template_preview_context(template, params),
    }
    part = "fields" if request.GET.get("part") == "fields" else "preview"
    return render(request, f"conversations/_template_{part}.html", context)


# ------------------------------------------------------------------------------------------
# Conversation actions: notes, assignment, close and reopen


@member_required
@require_POST
def add_note(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """An internal note: stored in the thread, never sent to WhatsApp."""
    conversation = get_conversation_or_404(request, pk)
    form = NoteForm(request.POST)
    if not form.is_valid():
        flash.error(request, _first_error(form))
    else:
        try:
            add_internal_note(conversation, form.cleaned_data["text"], actor=request.user)
        except SendError as exc:
            flash.error(request, str(exc))
    return redirect("conversation", pk=conversation.pk)


@member_required
@require_POST
def assign(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_or_404(request, pk)
    form = AssignForm(
        request.POST, memberships=list(tenant_memberships(request)), current_user=request.user
    )
    if not form.is_valid():
        # Only members of this tenant are choices: anyone else is "not a valid choice".
        flash.error(request, "Choose a colleague from the list.")
        return redirect("conversation", pk=conversation.pk)
    user = form.assignee_user()
    try:
        changed = assign_conversation(conversation, user, actor=request.user)
    except ConversationActionError as exc:
        flash.error(request, str(exc))
    else:
        if changed:
            who = "nobody" if user is None else "you" if user == request.user else user.email
            flash.success(request, f"Assigned to {who}.")
    return redirect("conversation", pk=conversation.pk)


@member_required
@require_POST
def close(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_or_404(request, pk)
    if close_conversation(conversation, actor=request.user):
        flash.success(request, "Conversation closed.")
    return redirect("conversation", pk=conversation.pk)


@member_required
@require_POST
def reopen(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_or_404(request, pk)
    if reopen_conversation(conversation, actor=request.user):
        flash.success(request, "Conversation reopened.")
    return redirect("conversation", pk=conversation.pk)


# ------------------------------------------------------------------------------------------
# The contact's consent: current state, the ledger, and recording an agent's event


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


# ------------------------------------------------------------------------------------------
# Workspace settings (tenant admins): template sync per number, the tenant's keyword rules


def _require_admin(request: HttpRequest) -> None:
    if request.tenant is None:
        raise Http404("Not found.")
    if not request.membership.is_admin:
        raise PermissionDenied("Only the workspace's admins can change this.")


def _settings_context(request: HttpRequest, keyword_form: KeywordRuleForm | None = None) -> dict:
    numbers = list(tenant_numbers(request).order_by("display_phone_number", "id"))
    counts = {}
    for waba_id, status in Template.objects.filter(tenant_id=request.tenant.pk).values_list(
        "waba_id", "status"
    ):
        entry = counts.setdefault(waba_id, {"approved": 0, "total": 0})
        entry["total"] += 1
        entry["approved"] += status == TemplateStatus.APPROVED
    for number in numbers:
        number.template_counts = counts.get(number.waba_id, {"approved": 0, "total": 0})
    return {
        "numbers": numbers,
        "keyword_rules": list(KeywordRule.objects.filter(tenant_id=request.tenant.pk)),
        "keyword_form": keyword_form or KeywordRuleForm(),
    }


@member_required
@require_GET
def workspace_settings(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    return render(request, "conversations/settings.html", _settings_context(request))


@member_required
@require_POST
def sync_number_templates(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Fetch the number's templates from Meta now. Runs in the request (an admin action, with
    the Graph client's timeout) so the admin sees the outcome or Meta's error at once."""
    _require_admin(request)
    number = get_number_or_404(request, pk)
    try:
        result = sync_templates(number, actor=request.user)
    except GraphError as exc:
        detail = exc.details or exc.message or exc.title
        flash.error(
            request,
            f"Meta refused the template sync for {number.display_phone_number}: "
            f"{exc.human_explanation}{f' ({detail})' if detail else ''}",
        )
    except GraphTransportError as exc:
        flash.error(
            request,
            f"Meta could not be reached to sync the templates of "
            f"{number.display_phone_number}. Try again in a minute. ({exc})",
        )
    else:
        flash.success(
            request,
            f"Synced {result.total} template{'s' if result.total != 1 else ''} of "
            f"{number.display_phone_number} from Meta ({result.created} new, "
            f"{result.updated} updated).",
        )
    return redirect(_local_next(request) or reverse("inbox_settings"))


def _local_next(request: HttpRequest) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return ""


@member_required
@require_POST
def keyword_rule_add(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    form = KeywordRuleForm(request.POST)
    if not form.is_valid():
        context = _settings_context(request, keyword_form=form)
        return render(request, "conversations/settings.html", context, status=422)
    with transaction.atomic():
        rule = KeywordRule.objects.create(
            tenant_id=request.tenant.pk,
            word=form.cleaned_data["word"],
            kind=form.cleaned_data["kind"],
            language=form.cleaned_data["language"],
        )
        record(
            "consent.keyword_added",
            rule,
            actor=request.user,
            data={"word": rule.word, "kind": rule.kind, "language": rule.language},
        )
    flash.success(request, f"Added {rule.word}: {rule.get_kind_display().lower()}.")
    return redirect("inbox_settings")


@member_required
@require_POST
def keyword_rule_delete(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    _require_admin(request)
    rule = get_keyword_rule_or_404(request, pk)
    with transaction.atomic():
        record(
            "consent.keyword_deleted",
            rule,
            actor=request.user,
            data={"word": rule.word, "kind": rule.kind},
        )
        rule.delete()
    flash.success(request, f"The keyword {rule.word} was removed.")
    return redirect("inbox_settings")
