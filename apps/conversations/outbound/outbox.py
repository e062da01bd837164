"""The outbox's front: every send path queues its message here, after the send gate allowed
it, in one transaction with its audit event. Nothing here calls Meta: the dispatcher
(`dispatcher.py`) sends queued rows and re-checks the gate right before each Graph call.

Lifecycle: queued → sending (claimed with a lease) → accepted (Meta gave a wamid) → sent /
delivered / read from status webhooks; or failed with Meta's code and a human explanation.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import Actor, record
from apps.consent.services import OPT_OUT_CONFIRMATION as OPT_OUT_CONFIRMATION_TEXT

from ..models import (
    STATUS_RANK,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    OutboxDrainFlag,
    Template,
)
from ..scheduling import CoalescedTask
from .gate import FREE_FORM, OPT_OUT_CONFIRMATION, TEMPLATE, SendRefused, send_gate

DISPATCH_TASK = "apps.conversations.tasks.dispatch_outbox"

MAX_TEXT_LENGTH = 4096


class SendError(Exception):
    """Bad input for a send (empty text, too long); the message is for a person."""


def queue_text_reply(
    conversation: Conversation,
    body: str,
    *,
    actor: Actor,
    quote: Message | None = None,
    path: str = "agent_reply",
) -> Message:
    """Queue a free-form text reply after the send gate allowed it."""
    if path == OPT_OUT_CONFIRMATION_PATH:
        raise ValueError("opt-out confirmations are queued by queue_opt_out_confirmation only")
    body = (body or "").strip()
    if not body:
        raise SendError("Write a message first.")
    if len(body) > MAX_TEXT_LENGTH:
        raise SendError(f"WhatsApp messages are limited to {MAX_TEXT_LENGTH} characters.")
    send_gate(conversation, kind=FREE_FORM, path=path, actor=actor)
    content: dict[str, Any] = {"body": body, "preview_url": False}
    if quote is not None:
        if quote.conversation_id != conversation.pk or not quote.wamid:
            raise SendError("That message cannot be quoted.")
        content["_context_wamid"] = quote.wamid
    return add_to_outbox_after_gate(
        conversation,
        type="text",
        content=content,
        text=body,
        path=path,
        actor=actor,
        context_wamid=quote.wamid if quote is not None else "",
    )


def render_template_text(template: Template, params: list[str]) -> str:
    """The body text with positional or named variables filled in (for the preview and the
    thread)."""
    body = next(
        (c.get("text", "") for c in template.components if str(c.get("type")).upper() == "BODY"),
        "",
    )
    for index, value in enumerate(params, start=1):
        body = body.replace(f"{{{{{index}}}}}", value)
    for name, value in zip(template_variable_names(template), params, strict=False):
        body = body.replace(f"{{{{{name}}}}}", value)
    return body


def template_variable_names(template: Template) -> list[str]:
    body = next(
        (c.get("text", "") for c in template.components if str(c.get("type")).upper() == "BODY"),
        "",
    )
    seen: list[str] = []
    for name in re.findall(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", body):
        if name not in seen:
            seen.append(name)
    return seen


def queue_template(
    conversation: Conversation,
    template: Template,
    params: list[str],
    *,
    actor: Actor,
    path: str = "agent_template",
) -> Message:
    """Queue an approved template with its body variables filled in."""
    # The gate first: it is what refuses a missing template (None), and its refusal is what
    # an agent needs to read before fixing variables.
    send_gate(conversation, kind=TEMPLATE, template=template, path=path, actor=actor)
    names = template_variable_names(template)
    params = [p.strip() for p in params]
    if len(params) != len(names) or any(not p for p in params):
        raise SendError(f"Fill in all {len(names)} variable(s) of {template.name}.")
    parameters = []
    for name, value in zip(names, params, strict=True):
        parameter = {"type": "text", "text": value}
        if template.parameter_format.upper() == "NAMED":
            parameter["parameter_name"] = name
        parameters.append(parameter)
    content = {
        "name": template.name,
        "language": {"code": template.language},
        "components": [{"type": "body", "parameters": parameters}] if parameters else [],
    }
    return add_to_outbox_after_gate(
        conversation,
        type="template",
        content=content,
        text=render_template_text(template, params),
        path=path,
        actor=actor,
        template=template,
    )


OPT_OUT_CONFIRMATION_PATH = "opt_out_confirmation"
OPT_OUT_CONFIRMATION_KEY = "opt-out-confirmation:"


def is_opt_out_confirmation(message: Message) -> bool:
    """The one message a suppressed contact may still receive. Recognised by its idempotency key,
    which only queue_opt_out_confirmation writes (one per consent event)."""
    return message.send_path == OPT_OUT_CONFIRMATION_PATH and message.idempotency_key.startswith(
        OPT_OUT_CONFIRMATION_KEY
    )


def queue_opt_out_confirmation(conversation: Conversation, consent_event_id: Any) -> Message | None:
    """The single short reply confirming an opt-out (idempotent per consent event)."""
    try:
        send_gate(
            conversation,
            kind=OPT_OUT_CONFIRMATION,
            path=OPT_OUT_CONFIRMATION_PATH,
            actor="system:consent",
        )
    except SendRefused:
        return None
    try:
        return add_to_outbox_after_gate(
            conversation,
            type="text",
            content={"body": OPT_OUT_CONFIRMATION_TEXT, "preview_url": False},
            text=OPT_OUT_CONFIRMATION_TEXT,
            path=OPT_OUT_CONFIRMATION_PATH,
            actor="system:consent",
            idempotency_key=f"{OPT_OUT_CONFIRMATION_KEY}{consent_event_id}",
        )
    except IntegrityError:
        return None


def add_internal_note(conversation: Conversation, text: str, *, actor: Actor) -> Message:
    """A note for colleagues. Never sent: it has no outbox status and no wamid."""
    text = (text or "").strip()
    if not text:
        raise SendError("Write a note first.")
    with transaction.atomic():
        note = Message.objects.create(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            direction=Direction.NOTE,
            type="note",
            content={"body": text},
            text=text,
            status=MessageStatus.NOTE,
            sent_at=timezone.now(),
            sent_by=actor if getattr(actor, "is_authenticated", False) else None,
            send_path="note",
        )
        record("conversation.note_added", note, actor=actor)
    return note


def add_to_outbox_after_gate(
    conversation: Conversation,
    *,
    type: str,
    content: dict,
    text: str,
    path: str,
    actor: Actor,
    template: Template | None = None,
    context_wamid: str = "",
    idempotency_key: str = "",
) -> Message:
    """Create the outbox row (`queued`) with its audit event, and request the dispatcher
    after commit. For send paths only: each calls the send gate before it, and the dispatcher
    calls it again before the Graph call."""
    with transaction.atomic():
        message = Message.objects.create(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            direction=Direction.OUTBOUND,
            type=type,
            content=content,
            text=text,
            status=MessageStatus.QUEUED,
            status_rank=STATUS_RANK[MessageStatus.QUEUED],
            sent_at=timezone.now(),
            sent_by=actor if getattr(actor, "is_authenticated", False) else None,
            send_path=path,
            template=template,
            context_wamid=context_wamid,
            idempotency_key=idempotency_key,
        )
        Conversation.objects.filter(pk=conversation.pk).update(
            last_message_at=message.sent_at, last_message_preview=text[:200]
        )
        record(
            "send.queued",
            message,
            actor=actor,
            data={"path": path, "type": type, "conversation_id": str(conversation.pk)},
        )
        request_dispatch()
    return message


DISPATCH = CoalescedTask(OutboxDrainFlag, DISPATCH_TASK, group="outbox", label="outbox dispatcher")
request_dispatch = DISPATCH.request
_enqueue_dispatch = DISPATCH.enqueue
