"""Small helpers that create inbox rows inside a tenant's scope, for the inbox view tests.

Each helper enters the tenant's scope itself, so tests can call them from outside any scope
(every test starts unscoped, like every entry point).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from apps.conversations.models import (
    STATUS_RANK,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
)
from apps.tenants.scoping import tenant_scope

BASE_TIME = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
_seq = itertools.count(1)


def make_contact(tenant, *, wa_id: str | None = None, name: str = "Dana Levi", **fields) -> Contact:
    with tenant_scope(tenant):
        return Contact.objects.create(
            tenant=tenant,
            wa_id=wa_id if wa_id is not None else f"1555{next(_seq):07d}",
            profile_name=name,
            **fields,
        )


def make_conversation(
    world,
    *,
    contact: Contact | None = None,
    name: str = "Dana Levi",
    wa_id: str | None = None,
    number=None,
    last_message_at: datetime | None = BASE_TIME,
    preview: str = "Hi, is my order shipped?",
    unread_count: int = 0,
    status: str = "open",
) -> Conversation:
    tenant = world.tenant
    contact = contact or make_contact(tenant, wa_id=wa_id, name=name)
    with tenant_scope(tenant):
        return Conversation.objects.create(
            tenant=tenant,
            number=number or world.number,
            contact=contact,
            last_message_at=last_message_at,
            last_inbound_at=last_message_at,
            last_message_preview=preview,
            unread_count=unread_count,
            status=status,
        )


def make_message(
    conversation: Conversation,
    *,
    type: str = "text",
    content: Any = None,
    direction: str = Direction.INBOUND,
    wamid: str | None = "auto",
    sent_at: datetime | None = None,
    text: str | None = None,
    status: str | None = None,
    **fields,
) -> Message:
    """A message as ingest stores it; ``content`` is the ``<type>`` object as Meta sent it."""
    n = next(_seq)
    if content is None:
        content = {"body": f"message {n}"} if type == "text" else {}
    if text is None:
        text = content.get("body", "") if isinstance(content, dict) else ""
        text = text or f"{type} message"
    if status is None:
        status = MessageStatus.RECEIVED if direction == Direction.INBOUND else MessageStatus.SENT
    with tenant_scope(conversation.tenant_id):
        return Message.objects.create(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            direction=direction,
            wamid=f"wamid.TEST{n:08d}" if wamid == "auto" else wamid,
            type=type,
            content=content,
            text=text,
            status=status,
            status_rank=STATUS_RANK[MessageStatus(status)],
            sent_at=sent_at or BASE_TIME + timedelta(seconds=n),
            **fields,
        )
