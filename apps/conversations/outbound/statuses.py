"""Applying Meta's status reports to outbound messages: forward-only, idempotent, and able to
apply statuses that arrived before the message's wamid was known."""

from __future__ import annotations

from apps.audit.services import record

from ..models import STATUS_RANK, Message, MessageStatus, StatusEvent


def update_message_status(
    messages, status: str, *, errors: list[tuple], pricing: dict | None
) -> int:
    """Apply one status to the given outbound messages with conditional updates: statuses never
    move backwards, a failure's error is recorded whenever it comes, pricing is kept once.
    Delivery progress (sent, delivered, read) is data about the message, not an audit event;
    a failure is audited, once per message."""
    rank = STATUS_RANK[MessageStatus(status)]
    changed = messages.filter(status_rank__lt=rank).update(status=status, status_rank=rank)
    if status == MessageStatus.FAILED and errors:
        code, title, details = errors[0]
        record_meta_failures(messages, code, title)
        messages.update(error_code=code, error_title=(title or "")[:300], error_details=details)
    if pricing:
        messages.filter(pricing__isnull=True).update(pricing=pricing)
    return changed


def apply_pending_statuses(message: Message) -> None:
    """Apply statuses that arrived before we knew this message's wamid (crash reconciliation,
    out-of-order delivery)."""
    if not message.wamid:
        return
    target = Message.objects.filter(pk=message.pk)
    for event in StatusEvent.objects.filter(wamid=message.wamid).order_by("occurred_at"):
        update_message_status(
            target,
            event.status,
            errors=[
                (e.get("code"), e.get("title", ""), (e.get("error_data") or {}).get("details", ""))
                for e in event.errors
            ],
            pricing=event.pricing,
        )


def record_meta_failures(messages, code: int | None, title: str) -> int:
    """Audit Meta's asynchronous refusal of sends (a `failed` status webhook) as `send.failed`,
    once per message: before its error is recorded, so a repeated webhook, or a failure the
    dispatcher already recorded from Graph's answer, writes nothing again."""
    failed = list(messages.filter(error_code__isnull=True).only("pk", "tenant_id"))
    for message in failed:
        record(
            "send.failed",
            message,
            actor="meta",
            data={"code": code, "title": (title or "")[:300], "reported_by": "status webhook"},
        )
    return len(failed)
