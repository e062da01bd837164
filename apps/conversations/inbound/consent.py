"""Where inbound traffic writes the consent ledger: keywords (and the one opt-out confirmation
they queue through the outbox) and Meta's marketing preference webhook. The 131050 refusal,
which the dispatcher sees too, is `services.record_meta_marketing_refusal`."""

from __future__ import annotations

from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import consent_state, match_keyword, record_consent

from ..models import Conversation, Message
from ..outbound.outbox import queue_opt_out_confirmation


def handle_consent_keyword(conversation: Conversation, message: Message) -> None:
    """A whole-message STOP (or a tenant's own word) opts the contact out of everything and is
    confirmed by at most one short reply; START opts back in."""
    text = message.content.get("body") if message.type == "text" else message.content.get("text")
    kind = match_keyword(text or "")
    if kind is None:
        return
    contact = conversation.contact
    was_suppressed = consent_state(contact).suppressed
    event = record_consent(
        contact,
        kind=kind,
        scope=ConsentScope.ALL,
        source=ConsentSource.KEYWORD,
        actor="customer",
        evidence={"wamid": message.wamid, "message_id": str(message.pk), "text": text[:200]},
        occurred_at=message.sent_at,
        dedupe_key=f"keyword:{message.wamid}",
    )
    if event is not None and kind == ConsentKind.OPT_OUT and not was_suppressed:
        queue_opt_out_confirmation(conversation, event.pk)


def record_marketing_preference(contact, *, value: str, detail: str, occurred_at, key: str):
    """Meta's `user_preferences` webhook: the customer tapped Stop / Resume promotions."""
    if value not in ("stop", "resume"):
        return None
    return record_consent(
        contact,
        kind=ConsentKind.OPT_OUT if value == "stop" else ConsentKind.OPT_IN,
        scope=ConsentScope.MARKETING,
        source=ConsentSource.META_PREFERENCE,
        actor="meta",
        evidence={"detail": detail[:300], "value": value},
        occurred_at=occurred_at,
        dedupe_key=f"preference:{key}",
    )
