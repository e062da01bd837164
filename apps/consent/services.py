"""Recording consent and reading a contact's current state from the ledger."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import Actor, actor_fields, record

from .models import ConsentEvent, ConsentKind, ConsentScope, ConsentSource, KeywordRule

# Whole-message keywords (after normalising case, spaces and punctuation). A message that merely
# contains one of these words ("please don't stop", "stopped") is not an opt-out.
BUILTIN_OPT_OUT = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout"})
BUILTIN_OPT_IN = frozenset({"start", "unstop"})

OPT_OUT_CONFIRMATION = (
    "You have been unsubscribed and will receive no more messages from us. "
    "Reply START to subscribe again."
)


def normalise_keyword(text: str) -> str:
    """Casefold, strip accents' combining marks, drop spaces and punctuation: ' Opt-Out! ' →
    'optout'."""
    folded = unicodedata.normalize("NFKD", text or "").casefold()
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return re.sub(r"[\W_]+", "", folded)


def load_keyword_rules() -> list[KeywordRule]:
    """The active tenant's own keyword rules, to pass to `match_keyword` for many messages
    (the webhook drain loads them once per tenant per batch)."""
    return list(KeywordRule.objects.all())


def match_keyword(text: str, tenant_rules: list[KeywordRule] | None = None) -> str | None:
    """Return ConsentKind.OPT_OUT / OPT_IN when the whole message is a consent keyword."""
    if not text or len(text) > 40:
        return None
    word = normalise_keyword(text)
    if not word:
        return None
    for rule in tenant_rules if tenant_rules is not None else KeywordRule.objects.all():
        if normalise_keyword(rule.word) == word:
            return rule.kind
    if word in BUILTIN_OPT_OUT:
        return ConsentKind.OPT_OUT
    if word in BUILTIN_OPT_IN:
        return ConsentKind.OPT_IN
    return None


@dataclass(frozen=True)
class ConsentState:
    """What the ledger says now. `suppressed` blocks everything (but the single opt-out
    confirmation); marketing needs `marketing_opted_in` and not `marketing_opted_out`."""

    suppressed: bool
    marketing_opted_out: bool
    marketing_opted_in: bool
    last_event: ConsentEvent | None

    @property
    def label(self) -> str:
        if self.suppressed:
            return "Opted out of all messages"
        if self.marketing_opted_out:
            return "Opted out of marketing"
        if self.marketing_opted_in:
            return "Opted in to marketing"
        return "No marketing opt-in recorded"


@dataclass(frozen=True)
class ScopeState:
    """The current answer of one scope: the kind in force (None: nothing recorded), since when,
    and from which source."""

    kind: str | None
    since: datetime | None
    source: str


@dataclass(frozen=True)
class LedgerFold:
    everything: ScopeState
    marketing: ScopeState


NOTHING = ScopeState(None, None, "")


def fold_ledger(events: Iterable[Any]) -> LedgerFold:
    """The current state per scope of one contact's events, oldest first (each with `scope`,
    `kind`, `occurred_at` and `source`). The rules of the send gate: an opt-out of everything is
    also an opt-out of marketing; an opt-in to everything (START) lifts the suppression but is
    not a marketing opt-in."""
    everything = marketing = NOTHING
    for event in events:
        state = ScopeState(event.kind, event.occurred_at, event.source)
        if event.scope == ConsentScope.ALL:
            everything = state
            if event.kind == ConsentKind.OPT_OUT:
                marketing = state
            elif marketing.kind == ConsentKind.OPT_OUT:
                marketing = NOTHING
        else:
            marketing = state
    return LedgerFold(everything=everything, marketing=marketing)


def consent_state(contact: Any) -> ConsentState:
    events = list(
        ConsentEvent.objects.filter(contact=contact).order_by("occurred_at", "created_at")
    )
    fold = fold_ledger(events)
    suppressed = fold.everything.kind == ConsentKind.OPT_OUT
    return ConsentState(
        suppressed=suppressed,
        marketing_opted_out=suppressed or fold.marketing.kind == ConsentKind.OPT_OUT,
        marketing_opted_in=not suppressed and fold.marketing.kind == ConsentKind.OPT_IN,
        last_event=events[-1] if events else None,
    )


def record_consent(
    contact: Any,
    *,
    kind: str,
    scope: str,
    source: str,
    actor: Actor,
    evidence: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    ip_address: str | None = None,
    dedupe_key: str = "",
) -> ConsentEvent | None:
    """Append a consent event and its audit event; returns None when `dedupe_key` was already
    recorded (the same Meta event delivered twice)."""
    if kind not in ConsentKind.values or scope not in ConsentScope.values:
        raise ValueError("unknown consent kind or scope")
    if source not in ConsentSource.values:
        raise ValueError("unknown consent source")
    actor_type, actor_id = actor_fields(actor)
    event = ConsentEvent(
        tenant_id=contact.tenant_id,
        contact=contact,
        kind=kind,
        scope=scope,
        source=source,
        evidence=evidence or {},
        actor_type=actor_type,
        actor_id=actor_id,
        ip_address=ip_address,
        occurred_at=occurred_at or timezone.now(),
        dedupe_key=dedupe_key[:200],
    )
    try:
        with transaction.atomic():
            event.save()
            record(
                f"consent.{kind}",
                event,
                actor=actor,
                data={"contact_id": str(contact.pk), "scope": scope, "source": source},
            )
    except IntegrityError:
        if dedupe_key:
            return None
        raise
    return event
