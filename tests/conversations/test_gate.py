"""The send gate on every send path (agent reply, template, opt-out confirmation, and the
dispatcher's re-check right before the Graph call): each rule refuses with a readable reason,
an audit event and zero Graph calls, witnessed by the simulator's request log (DESIGN.md
section 6, test plan E1-E4)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.consent.models import ConsentKind, ConsentScope, ConsentSource
from apps.consent.services import record_consent
from apps.conversations.models import Conversation, Template
from apps.conversations.outbound.dispatcher import dispatch_outbox
from apps.conversations.outbound.gate import SendRefused, check_send
from apps.conversations.outbound.outbox import (
    queue_opt_out_confirmation,
    queue_template,
    queue_text_reply,
)
from apps.tenants.models import CredentialStatus, WhatsAppNumber
from apps.tenants.scoping import tenant_scope

from .payload_builders import deliver, text_body
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    make_template,
    outbound_messages,
    reload,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

PATHS = ("agent_reply", "template", "opt_out_confirmation")
AUDIT_PATH = {
    "agent_reply": "agent_reply",
    "template": "agent_template",
    "opt_out_confirmation": "opt_out_confirmation",
}


def readable(refusal: SendRefused) -> str:
    return refusal.message.replace("\xa0", " ")  # timesince() joins with no-break spaces


def fresh(conversation: Conversation) -> Conversation:
    with tenant_scope(conversation.tenant_id):
        return Conversation.objects.select_related("number", "contact").get(pk=conversation.pk)


def consent(conversation, kind, scope, source=ConsentSource.AGENT, minutes_ago=0):
    with tenant_scope(conversation.tenant_id):
        record_consent(
            conversation.contact,
            kind=kind,
            scope=scope,
            source=source,
            actor="agent",
            occurred_at=timezone.now() - timedelta(minutes=minutes_ago),
        )


def send(path, conversation, template, world):
    """Try one send path; returns the queued message, or raises SendRefused."""
    conversation = fresh(conversation)
    with tenant_scope(world.tenant):
        if path == "agent_reply":
            return queue_text_reply(conversation, "Hello there", actor=world.owner)
        if path == "template":
            params = ["A-1"] if template is not None and "{{1}}" in str(template.components) else []
            return queue_template(conversation, template, params, actor=world.owner)
        message = queue_opt_out_confirmation(conversation, uuid.uuid4())
        if message is None:  # this path reports a refusal by returning None (it is automatic)
            [refusal] = [
                e
                for e in audit_events(world, "send.refused")
                if e.data["path"] == "opt_out_confirmation"
            ]
            raise SendRefused(refusal.data["reason"], "(refused, see the audit event)")
        return message


# Each rule: how to set it up, and per path the refusal code (None: allowed) and the phrase a
# person reads.
def setup_suppressed(world, conversation, sim):
    consent(conversation, ConsentKind.OPT_OUT, ConsentScope.ALL, ConsentSource.KEYWORD)
    return make_template(world, sim=sim)


def setup_window_closed(world, conversation, sim):
    with tenant_scope(world.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(
            last_inbound_at=timezone.now() - timedelta(hours=25)
        )
    return make_template(world, sim=sim)


def setup_never_wrote(world, conversation, sim):
    with tenant_scope(world.tenant):
        Conversation.objects.filter(pk=conversation.pk).update(last_inbound_at=None)
    return make_template(world, sim=sim)


def setup_credentials_broken(world, conversation, sim):
    with tenant_scope(world.tenant):
        WhatsAppNumber.objects.filter(pk=world.number.pk).update(
            credential_status=CredentialStatus.BROKEN
        )
    return make_template(world, sim=sim)


def setup_marketing_no_opt_in(world, conversation, sim):
    return make_template(world, "promo", category="MARKETING", body="Sale!", sim=sim)


def setup_marketing_opted_out(world, conversation, sim):
    consent(conversation, ConsentKind.OPT_IN, ConsentScope.MARKETING, ConsentSource.FORM, 10)
    consent(
        conversation, ConsentKind.OPT_OUT, ConsentScope.MARKETING, ConsentSource.META_PREFERENCE, 5
    )
    return make_template(world, "promo", category="MARKETING", body="Sale!", sim=sim)


def setup_paused(world, conversation, sim):
    return make_template(world, status="PAUSED", sim=sim)


def setup_rejected(world, conversation, sim):
    return make_template(world, status="REJECTED", sim=sim)


def setup_pending(world, conversation, sim):
    return make_template(world, status="PENDING", sim=sim)


def setup_unknown(world, conversation, sim):
    return None


def setup_other_waba(world, conversation, sim):
    # A template of the same tenant, but of another WhatsApp Business Account.
    return make_template(world, waba_id="999999999999", sim=None)


RULES = {
    "suppressed": (
        setup_suppressed,
        {
            "agent_reply": "suppressed",
            "template": "suppressed",
            "opt_out_confirmation": None,
        },
        "opted out of all messages",
    ),
    "window_closed": (
        setup_window_closed,
        {
            "agent_reply": "window_closed",
            "template": None,
            "opt_out_confirmation": "window_closed",
        },
        "The 24-hour window closed 1 hour ago; send an approved template instead.",
    ),
    "never_wrote": (
        setup_never_wrote,
        {
            "agent_reply": "window_closed",
            "template": None,
            "opt_out_confirmation": "window_closed",
        },
        "has not written to this number yet",
    ),
    "credentials_broken": (
        setup_credentials_broken,
        {
            "agent_reply": "credentials_broken",
            "template": "credentials_broken",
            "opt_out_confirmation": "credentials_broken",
        },
        "rejected the access token",
    ),
    "marketing_no_opt_in": (
        setup_marketing_no_opt_in,
        {
            "agent_reply": None,
            "template": "marketing_no_opt_in",
            "opt_out_confirmation": None,
        },
        "no recorded marketing opt-in",
    ),
    "marketing_opted_out": (
        setup_marketing_opted_out,
        {
            "agent_reply": None,
            "template": "marketing_opted_out",
            "opt_out_confirmation": None,
        },
        "opted out of marketing messages",
    ),
    "template_paused": (
        setup_paused,
        {
            "agent_reply": None,
            "template": "template_not_approved",
            "opt_out_confirmation": None,
        },
        "is paused at Meta",
    ),
    "template_rejected": (
        setup_rejected,
        {
            "agent_reply": None,
            "template": "template_not_approved",
            "opt_out_confirmation": None,
        },
        "is rejected at Meta",
    ),
    "template_pending": (
        setup_pending,
        {
            "agent_reply": None,
            "template": "template_not_approved",
            "opt_out_confirmation": None,
        },
        "only approved templates",
    ),
    "template_unknown": (
        setup_unknown,
        {
            "agent_reply": None,
            "template": "template_missing",
            "opt_out_confirmation": None,
        },
        "Choose a template",
    ),
    "template_other_waba": (
        setup_other_waba,
        {
            "agent_reply": None,
            "template": "template_foreign",
            "opt_out_confirmation": None,
        },
        "does not belong to this number's WhatsApp account",
    ),
}

CASES = [(rule, path) for rule in RULES for path in PATHS]


@pytest.mark.parametrize(("rule", "path"), CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_it_applies_each_gate_rule_on_each_send_path(sim, acme, rule, path):
    setup, expected, phrase = RULES[rule]
    conversation = make_conversation(acme)
    template = setup(acme, conversation, sim)
    code = expected[path]
    if code is None:
        message = send(path, conversation, template, acme)
        assert reload(message).status == "queued"
        assert [e.object_id for e in audit_events(acme, "send.queued")] == [str(message.pk)]
        assert dispatch_outbox(time_budget=5) == 1
        assert len(graph_sends(sim)) == 1
        assert reload(message).status == "accepted"
        return
    with pytest.raises(SendRefused) as refused:
        send(path, conversation, template, acme)
    assert refused.value.code == code
    if path != "opt_out_confirmation":
        assert phrase in readable(refused.value)
        assert str(refused.value) == refused.value.message
    [audit] = audit_events(acme, "send.refused")
    assert audit.data["reason"] == code
    assert audit.data["path"] == AUDIT_PATH[path]
    assert audit.object_id == str(conversation.pk)
    assert outbound_messages(acme) == []
    assert audit_events(acme, "send.queued") == []
    dispatch_outbox(time_budget=2)
    assert graph_sends(sim) == []


# --- The dispatcher's re-check -------------------------------------------------------------------


def opt_out_all(world, conversation):
    consent(conversation, ConsentKind.OPT_OUT, ConsentScope.ALL, ConsentSource.KEYWORD)


def close_window(world, conversation):
    setup_window_closed(world, conversation, None)


def break_credentials(world, conversation):
    setup_credentials_broken(world, conversation, None)


def opt_out_marketing(world, conversation):
    consent(
        conversation, ConsentKind.OPT_OUT, ConsentScope.MARKETING, ConsentSource.META_PREFERENCE
    )


def pause_template(world, conversation):
    with tenant_scope(world.tenant):
        Template.objects.update(status="PAUSED")


DISPATCH_CASES = [
    ("agent_reply", opt_out_all, "suppressed"),
    ("agent_reply", close_window, "window_closed"),
    ("agent_reply", break_credentials, "credentials_broken"),
    ("template", opt_out_all, "suppressed"),
    ("template", opt_out_marketing, "marketing_opted_out"),
    ("template", pause_template, "template_not_approved"),
    ("template", break_credentials, "credentials_broken"),
    ("opt_out_confirmation", close_window, "window_closed"),
    ("opt_out_confirmation", break_credentials, "credentials_broken"),
]


@pytest.mark.parametrize(
    ("path", "change", "code"),
    DISPATCH_CASES,
    ids=[f"{p}-{c.__name__}" for p, c, _ in DISPATCH_CASES],
)
def test_it_refuses_at_dispatch_what_became_forbidden_after_queueing(sim, acme, path, change, code):
    conversation = make_conversation(acme)
    template = make_template(acme, "promo", category="MARKETING", body="Sale {{1}}", sim=sim)
    consent(conversation, ConsentKind.OPT_IN, ConsentScope.MARKETING, ConsentSource.FORM, 10)
    message = send(path, conversation, template, acme)
    change(acme, conversation)
    assert dispatch_outbox(time_budget=2) == 0
    message = reload(message)
    assert message.status == "failed"
    assert message.error_title == "Refused by the send gate"
    assert message.error_code is None
    assert message.error_details  # the readable reason
    assert graph_sends(sim) == []
    [refusal] = audit_events(acme, "send.refused")
    assert (refusal.data["reason"], refusal.data["path"]) == (code, "dispatch")
    assert [e.object_id for e in audit_events(acme, "send.refused_at_dispatch")] == [
        str(message.pk)
    ]


def test_it_still_sends_a_queued_opt_out_confirmation_after_the_opt_out(sim, acme):
    conversation = make_conversation(acme)
    message = send("opt_out_confirmation", conversation, None, acme)
    opt_out_all(acme, conversation)
    assert dispatch_outbox(time_budget=5) == 1
    assert reload(message).status == "accepted"
    assert len(graph_sends(sim)) == 1


def test_it_lets_the_opt_out_confirmation_through_but_nothing_else(sim, acme):
    conversation = make_conversation(acme)
    opt_out_all(acme, conversation)
    assert send("opt_out_confirmation", conversation, None, acme) is not None
    with pytest.raises(SendRefused):
        send("agent_reply", conversation, None, acme)


# --- The window, by the customer's own message timestamps ----------------------------------------


def write_at(client, world, hours_ago, text="Hello"):
    ts = int((timezone.now() - timedelta(hours=hours_ago)).timestamp())
    body, _ = text_body(world, text, ts=ts)
    deliver(client, world, body)
    with tenant_scope(world.tenant):
        return Conversation.objects.select_related("number", "contact").get()


def test_it_measures_the_window_from_the_messages_own_timestamp(sim, acme, client):
    # Written 25 hours ago, delivered now (Meta retried it): the window is not opened.
    conversation = write_at(client, acme, 25)
    with tenant_scope(acme.tenant), pytest.raises(SendRefused) as refused:
        queue_text_reply(conversation, "Sorry for the wait", actor=acme.owner)
    assert refused.value.code == "window_closed"
    assert "24-hour window closed 1 hour ago" in readable(refused.value)
    template = make_template(acme, sim=sim)
    with tenant_scope(acme.tenant):
        queue_template(conversation, template, ["A-1"], actor=acme.owner)
    dispatch_outbox(time_budget=5)
    assert [s["json"]["type"] for s in graph_sends(sim)] == ["template"]


def test_it_keeps_the_window_of_the_newest_message_when_an_old_one_arrives_late(sim, acme, client):
    write_at(client, acme, 1, "Newer")
    conversation = write_at(client, acme, 30, "Older, delivered late")
    with tenant_scope(acme.tenant):
        queue_text_reply(conversation, "Sure", actor=acme.owner)
    assert dispatch_outbox(time_budget=5) == 1


def test_it_opens_the_window_for_23_hours_and_closes_it_at_24(sim, acme):
    conversation = make_conversation(acme, last_inbound_at=timezone.now() - timedelta(hours=23))
    now = timezone.now()
    with tenant_scope(acme.tenant):
        conversation = fresh(conversation)
        decision = check_send(conversation, kind="free_form", now=now)
        assert decision.window_open
        with pytest.raises(SendRefused):
            check_send(conversation, kind="free_form", now=now + timedelta(hours=1, seconds=1))


def test_it_refuses_bravos_template_in_acmes_conversation(sim, acme, bravo):
    conversation = make_conversation(acme)
    template = make_template(bravo, sim=sim)
    with pytest.raises(SendRefused) as refused:
        send("template", conversation, template, acme)
    assert refused.value.code == "template_foreign"
    dispatch_outbox(time_budget=2)
    assert graph_sends(sim) == []
