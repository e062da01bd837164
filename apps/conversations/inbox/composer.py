"""The composer under the thread: the reply box while the 24-hour window is open, the template
picker with its live preview once it is closed, attachments, and what an agent reads when the
send gate refuses. Every send goes through the outbox's queueing functions, which call the gate;
no view calls Meta."""

from __future__ import annotations

import uuid
from datetime import datetime
from urllib.parse import urlencode

from django import forms
from django.contrib import messages as flash
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from apps.consent.services import consent_state
from apps.media.services import MediaRejected

from ..models import Conversation, Template, TemplateStatus
from ..outbound.gate import FREE_FORM, SendRefused, check_send, window_closes_at
from ..outbound.media import queue_media_reply
from ..outbound.outbox import (
    SendError,
    queue_template,
    queue_text_reply,
    render_template_text,
    template_variable_names,
)
from .access import is_htmx, member_required
from .forms import ReplyForm
from .lookups import (
    get_conversation_or_404,
    get_quotable_message_or_404,
    get_template_or_404,
    thread_messages,
    uuid_or_404,
)


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
                thread_messages(conversation)
                .filter(pk=uuid_or_404(str(quote_id)))
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


def first_error(form: forms.Form) -> str:
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
        return _refused(request, conversation, first_error(form), reply_form=form)
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


ATTACH_FORM_TEMPLATE = "conversations/_attach_form.html"


def _attach_form(request: HttpRequest, conversation, **context) -> HttpResponse:
    return render(request, ATTACH_FORM_TEMPLATE, {"conversation": conversation, **context})


@member_required
@require_POST
def attach(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """`POST /inbox/c/<uuid>/attach/`: an agent sends a file (with an optional caption).

    The send gate runs before anything is stored; the file is checked by its bytes. htmx posts
    the form as multipart and gets the form back (with the refusal, or cleared after a send
    plus `HX-Trigger: klaros:thread-changed` so the thread polls at once); without htmx the
    answer is a redirect to the conversation with a flash message."""
    conversation = get_conversation_or_404(request, pk)
    caption = request.POST.get("caption", "")
    uploaded = request.FILES.get("file")
    error = ""
    try:
        if uploaded is None:
            raise SendError("Choose a file to attach.")
        queue_media_reply(conversation, uploaded, caption=caption, actor=request.user)
    except SendRefused as refusal:
        error = refusal.message
    except MediaRejected as rejected:
        error = rejected.message
    except SendError as exc:
        error = str(exc)
    if is_htmx(request):
        # 200 even for a refusal: htmx swaps only 2xx answers, and the refusal is what the agent
        # needs to read next to the form.
        if error:
            return _attach_form(request, conversation, attach_error=error, attach_caption=caption)
        response = _attach_form(request, conversation, attach_notice="File queued for sending.")
        response["HX-Trigger"] = "klaros:thread-changed"
        return response
    if error:
        flash.error(request, error)
    else:
        flash.success(request, "File queued for sending.")
    return redirect("conversation", pk=conversation.pk)
