"""The conversation page: the thread (newest page first, history pages on demand), the fragment
htmx polls for new messages and changed statuses, message permalinks, and the side panel's
actions: internal notes, assignment, closing and reopening."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from django.contrib import messages as flash
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from ..models import Conversation, Direction, Message
from ..outbound.outbox import (
    SendError,
    add_internal_note,
)
from ..services import (
    ConversationActionError,
    assign_conversation,
    close_conversation,
    mark_conversation_read,
    reopen_conversation,
    request_mark_read_at_meta,
)
from .access import member_required
from .composer import composer_context, first_error
from .forms import (
    AssignForm,
    NoteForm,
)
from .lookups import (
    get_conversation_or_404,
    get_message_or_404,
    get_template_or_404,
    tenant_memberships,
    thread_messages,
    uuid_or_404,
)

THREAD_PAGE_SIZE = 200


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
    queryset = thread_messages(conversation)
    before_id = request.GET.get("before", "")
    before = None
    if before_id:
        before = queryset.filter(pk=uuid_or_404(before_id)).only("id", "sent_at").first()
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
    context.update(side_context(request, conversation))
    return render(request, "conversations/thread.html", context)


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
    queryset = thread_messages(conversation)
    after_id, since_id = request.GET.get("after", ""), request.GET.get("since", "")
    anchors: list[Message] = []
    new = queryset
    if after_id:
        wanted = {uuid_or_404(after_id), uuid_or_404(since_id or after_id)}
        found = {
            m.pk: m for m in queryset.filter(pk__in=wanted).only("id", "sent_at", "created_at")
        }
        if len(found) != len(wanted):
            raise Http404("Not found.")
        after = found[uuid_or_404(after_id)]
        since = found[uuid_or_404(since_id or after_id)]
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


def side_context(request: HttpRequest, conversation: Conversation) -> dict:
    memberships = list(tenant_memberships(request))
    assign_form = AssignForm(
        initial={"assignee": str(conversation.assigned_to_id or "")},
        memberships=memberships,
        current_user=request.user,
    )
    assignee = next((m.user for m in memberships if m.user_id == conversation.assigned_to_id), None)
    return {"assign_form": assign_form, "assignee": assignee, "note_form": NoteForm()}


@member_required
@require_POST
def add_note(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """An internal note: stored in the thread, never sent to WhatsApp."""
    conversation = get_conversation_or_404(request, pk)
    form = NoteForm(request.POST)
    if not form.is_valid():
        flash.error(request, first_error(form))
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
