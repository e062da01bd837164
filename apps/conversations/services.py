"""State changes that both pipelines and the inbox share: reading, assignment, closing and
reopening a conversation, asking Meta to show the customer that their messages were read, and
the marketing opt-out that Meta's 131050 refusal stands for (seen by the dispatcher in Graph's
answer and by ingest in a failed status webhook)."""

from __future__ import annotations

import logging
import uuid

from django.db import transaction

from apps.audit.services import Actor, record
from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.tenants.models import Membership

from .models import Conversation, ConversationStatus, Direction, Message

logger = logging.getLogger(__name__)

MARK_READ_TASK = "apps.conversations.tasks.mark_read_at_meta"


class ConversationActionError(Exception):
    """An inbox action that cannot be done as asked; the message is for a person."""


def mark_conversation_read(conversation: Conversation, *, actor: object) -> bool:
    """Reset the conversation's unread count; returns True when it had unread messages.

    A conditional UPDATE rather than read-modify-write: an inbound message counted concurrently
    by the ingest worker (``unread_count = unread_count + 1``) is never lost to a stale save.
    Reading is not a security event, so it writes no audit entry; ``actor`` is kept for the
    common service signature and for a future per-agent read marker.
    """
    changed = Conversation.objects.filter(
        pk=conversation.pk, tenant_id=conversation.tenant_id, unread_count__gt=0
    ).update(unread_count=0)
    conversation.unread_count = 0
    return bool(changed)


def assign_conversation(conversation: Conversation, user_or_none, *, actor: Actor) -> bool:
    """Assign the conversation to a member of its tenant, or to nobody (None).

    Returns False when it was already assigned that way (nothing written). Raises
    ConversationActionError for a user who is not a member of the conversation's tenant: the
    form only offers members, so this is a forged request or a member removed meanwhile.
    """
    if (
        user_or_none is not None
        and not Membership.objects.filter(
            user=user_or_none, tenant_id=conversation.tenant_id
        ).exists()
    ):
        raise ConversationActionError("Conversations can only be assigned to your colleagues.")
    new_id = user_or_none.pk if user_or_none is not None else None
    with transaction.atomic():
        current = (
            Conversation.objects.select_for_update()
            .filter(pk=conversation.pk, tenant_id=conversation.tenant_id)
            .values_list("assigned_to_id", flat=True)
            .first()
        )
        if current == new_id:
            conversation.assigned_to = user_or_none
            return False
        Conversation.objects.filter(pk=conversation.pk).update(assigned_to_id=new_id)
        record(
            "conversation.assigned",
            conversation,
            actor=actor,
            data={
                "assigned_to": str(new_id) if new_id is not None else None,
                "previous": str(current) if current is not None else None,
            },
        )
    conversation.assigned_to = user_or_none
    return True


def _set_status(conversation: Conversation, status: str, action: str, *, actor: Actor) -> bool:
    # A conditional UPDATE: two agents closing at once write one audit event, not two.
    with transaction.atomic():
        changed = (
            Conversation.objects.filter(pk=conversation.pk, tenant_id=conversation.tenant_id)
            .exclude(status=status)
            .update(status=status)
        )
        if changed:
            record(action, conversation, actor=actor, data={"status": status})
    conversation.status = status
    return bool(changed)


def close_conversation(conversation: Conversation, *, actor: Actor) -> bool:
    """Close the conversation (it leaves the open list; a new customer message reopens it).
    Returns False when it was already closed."""
    return _set_status(conversation, ConversationStatus.CLOSED, "conversation.closed", actor=actor)


def reopen_conversation(conversation: Conversation, *, actor: Actor) -> bool:
    """Reopen a closed conversation. Returns False when it was already open."""
    return _set_status(conversation, ConversationStatus.OPEN, "conversation.reopened", actor=actor)


def latest_inbound_wamid_message(conversation: Conversation) -> uuid.UUID | None:
    return (
        Message.objects.filter(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            direction=Direction.INBOUND,
            wamid__isnull=False,
        )
        .order_by("-sent_at", "-id")
        .values_list("pk", flat=True)
        .first()
    )


def request_mark_read_at_meta(conversation: Conversation) -> uuid.UUID | None:
    """Ask Meta, from a task after commit, to mark the customer's latest message as read (the
    blue ticks on their phone). Meta marks earlier messages of the thread read with it.

    Never calls Graph itself: a slow or failing Meta must not slow down opening a conversation.
    Returns the id of the message the task will mark, or None when there is none.
    """
    message_id = latest_inbound_wamid_message(conversation)
    if message_id is None:
        return None
    tenant_id = conversation.tenant_id

    def enqueue() -> None:
        from django_q.tasks import async_task

        try:
            async_task(MARK_READ_TASK, str(tenant_id), str(message_id), q_options={"group": "read"})
        except Exception:
            # Read receipts are a courtesy: losing one is logged, never shown to the agent.
            logger.exception("could not enqueue mark-as-read for message %s", message_id)

    transaction.on_commit(enqueue)
    return message_id


def record_meta_marketing_refusal(message: Message, wamid: str) -> None:
    """Meta refused a marketing template with 131050: the customer stopped marketing."""
    record_consent(
        message.conversation.contact,
        kind=ConsentKind.OPT_OUT,
        scope=ConsentScope.MARKETING,
        source=ConsentSource.META_ERROR,
        actor="meta",
        evidence={"wamid": wamid, "message_id": str(message.pk), "code": 131050},
        dedupe_key=f"131050:{message.pk}",
    )
