"""The send gate: the one function every send path calls, before anything is queued and again
right before the Graph call (DESIGN.md section 6, promise P5).

It refuses, with a sentence an agent can act on, when:
- the contact opted out of everything (only the single opt-out confirmation may pass), or out of
  marketing and the message is a marketing template, or a marketing template has no opt-in;
- free-form content is sent outside the 24-hour customer-service window (measured from the
  customer's last message by that message's own timestamp);
- a template is not an APPROVED template of the number's WABA;
- the number's access token is known to be broken.
Every refusal is audited, and nothing is queued or sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.timesince import timesince

from apps.audit.services import Actor, record
from apps.consent.services import consent_state
from apps.tenants.models import CredentialStatus

from ..models import Conversation, Template, TemplateStatus

CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)

# What a send path asks to send.
FREE_FORM = "free_form"
TEMPLATE = "template"
OPT_OUT_CONFIRMATION = "opt_out_confirmation"


class SendRefused(Exception):
    """A send the gate refused. `code` is stable (tests, audit); `message` is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class GateDecision:
    kind: str
    window_open: bool
    window_closes_at: datetime | None


def window_closes_at(conversation: Conversation) -> datetime | None:
    if conversation.last_inbound_at is None:
        return None
    return conversation.last_inbound_at + CUSTOMER_SERVICE_WINDOW


def check_send(
    conversation: Conversation,
    *,
    kind: str,
    template: Template | None = None,
    now: datetime | None = None,
) -> GateDecision:
    """Raise SendRefused when the send is not allowed; pure (no audit), for previews."""
    now = now or timezone.now()
    number = conversation.number
    if number.credential_status != CredentialStatus.HEALTHY:
        raise SendRefused(
            "credentials_broken",
            f"Meta rejected the access token of {number.display_phone_number}; an admin must "
            "update it before anything can be sent from this number.",
        )
    state = consent_state(conversation.contact)
    if state.suppressed and kind != OPT_OUT_CONFIRMATION:
        when = state.last_event.occurred_at if state.last_event else None
        since = f" {timesince(when, now)} ago" if when else ""
        raise SendRefused(
            "suppressed",
            f"{conversation.contact.display_name} opted out of all messages{since}. Nothing can "
            "be sent unless they opt back in (for example by writing START).",
        )
    closes = window_closes_at(conversation)
    open_ = closes is not None and now < closes
    if kind == TEMPLATE:
        _check_template(conversation, template, state)
    elif kind in (FREE_FORM, OPT_OUT_CONFIRMATION):
        if not open_:
            if closes is None:
                reason = "The customer has not written to this number yet"
            else:
                reason = f"The 24-hour window closed {timesince(closes, now)} ago"
            raise SendRefused("window_closed", f"{reason}; send an approved template instead.")
    else:
        raise ValueError(f"unknown send kind {kind!r}")
    return GateDecision(kind=kind, window_open=open_, window_closes_at=closes)


def _check_template(conversation: Conversation, template: Template | None, state) -> None:
    if template is None:
        raise SendRefused("template_missing", "Choose a template to send.")
    if (
        template.tenant_id != conversation.tenant_id
        or template.waba_id != conversation.number.waba_id
    ):
        raise SendRefused(
            "template_foreign",
            f"The template {template.name} does not belong to this number's WhatsApp account.",
        )
    if template.status != TemplateStatus.APPROVED:
        raise SendRefused(
            "template_not_approved",
            f"The template {template.name} ({template.language}) is "
            f"{template.status.lower().replace('_', ' ')} at Meta; only approved templates can "
            "be sent.",
        )
    if template.is_marketing:
        if state.marketing_opted_out:
            raise SendRefused(
                "marketing_opted_out",
                f"{conversation.contact.display_name} opted out of marketing messages; send a "
                "utility template or reply inside the 24-hour window instead.",
            )
        if not state.marketing_opted_in:
            raise SendRefused(
                "marketing_no_opt_in",
                f"There is no recorded marketing opt-in for {conversation.contact.display_name}; "
                "marketing templates need one.",
            )


def send_gate(
    conversation: Conversation,
    *,
    kind: str,
    path: str,
    actor: Actor,
    template: Template | None = None,
    now: datetime | None = None,
) -> GateDecision:
    """Check a send, audit a refusal and re-raise it. Send paths call it before opening their
    own transaction, so the refusal stays on record."""
    try:
        return check_send(conversation, kind=kind, template=template, now=now)
    except SendRefused as refusal:
        record(
            "send.refused",
            conversation,
            actor=actor,
            data={
                "reason": refusal.code,
                "path": path,
                "kind": kind,
                "template_id": str(template.pk) if template else None,
            },
        )
        raise
