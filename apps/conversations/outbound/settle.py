"""How an outbound message is settled when it is not sent this time: failed for good (with
Meta's code and a sentence for the agent) or queued again for a retry with backoff and jitter.
The dispatcher and media sending both settle messages through these functions."""

from __future__ import annotations

import random
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.audit.services import record
from apps.tenants.models import CredentialStatus, WhatsAppNumber
from apps.whatsapp.graph import GraphError

from ..models import STATUS_RANK, Message, MessageStatus
from ..services import record_meta_marketing_refusal

# Graph calls a message may take before a retryable error fails it for good.
MAX_ATTEMPTS = 6


def handle_graph_error(message: Message, number: WhatsAppNumber, error: GraphError) -> int:
    if error.token_invalid:
        with transaction.atomic():
            # Several calls of the number may have been in flight when the token broke: alert
            # once, on the change.
            changed = (
                WhatsAppNumber.objects.filter(pk=number.pk)
                .exclude(credential_status=CredentialStatus.BROKEN)
                .update(
                    credential_status=CredentialStatus.BROKEN,
                    credential_error=f"({error.code}) {error.title}"[:300],
                )
            )
            if changed:
                record(
                    "number.credentials_broken",
                    number,
                    actor="system:outbox",
                    data={"code": error.code},
                )
            fail_send(
                message,
                code=error.code,
                title=error.title,
                details=error.human_explanation,
                audit="send.failed",
            )
        return 0
    if error.retryable and message.attempts < MAX_ATTEMPTS:
        retry_later(message, f"({error.code}) {error.title}")
        return 0
    if error.code == 131050:
        record_meta_marketing_refusal(message, "")
    fail_send(
        message,
        code=error.code,
        title=error.title,
        details=error.human_explanation,
        audit="send.failed",
    )
    return 0


def retry_later(message: Message, reason: str) -> None:
    delay = min(2**message.attempts, 300) * random.uniform(0.8, 1.3)  # noqa: S311 (jitter)
    Message.objects.filter(pk=message.pk).update(
        status=MessageStatus.QUEUED,
        status_rank=STATUS_RANK[MessageStatus.QUEUED],
        lease_until=None,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        error_title=f"Retrying: {reason}"[:300],
    )


def fail_send(message: Message, *, code: int | None, title: str, details: str, audit: str) -> None:
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            status=MessageStatus.FAILED,
            status_rank=STATUS_RANK[MessageStatus.FAILED],
            lease_until=None,
            next_attempt_at=None,
            error_code=code,
            error_title=(title or "")[:300],
            error_details=details or "",
        )
        record(audit, message, actor="system:outbox", data={"code": code, "title": title})
