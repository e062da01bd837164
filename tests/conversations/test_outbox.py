"""The outbox: a reply is queued with its audit event and no Graph call; the dispatcher sends
with the number's token and the message id as biz_opaque_callback_data, records the wamid,
follows status webhooks, retries what Meta says to retry, fails visibly what it says not to,
marks a number broken on 190, throttles per number, and reconciles uncertain outcomes from
status webhooks instead of sending twice (DESIGN.md section 6, test plan R1-R3)."""

from __future__ import annotations

import itertools
import socket
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.conversations.inbound.journal import drain_journal
from apps.conversations.models import Message, StatusEvent
from apps.conversations.outbound import dispatcher, outbox, settle
from apps.conversations.outbound.dispatcher import (
    NumberThrottle,
    claim_batch,
    dispatch_one,
    dispatch_outbox,
)
from apps.conversations.outbound.gate import SendRefused
from apps.conversations.outbound.outbox import queue_template, queue_text_reply
from apps.conversations.outbound.settle import MAX_ATTEMPTS
from apps.tenants.models import CredentialStatus, WhatsAppNumber
from apps.tenants.scoping import tenant_scope
from apps.whatsapp.graph import explain_error_code
from apps.whatsapp.simulator import Fault
from tests.clock import call_at_a_stopped_instant

from .payload_builders import WEBHOOK_URL
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    deliver_sim_webhooks,
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    make_template,
    outbound_messages,
    reload,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def reply(world, text="Your parcel left the warehouse", conversation=None):
    conversation = conversation or make_conversation(world)
    with tenant_scope(world.tenant):
        return queue_text_reply(conversation, text, actor=world.owner)


def set_message(message, **fields):
    with tenant_scope(message.tenant_id):
        Message.objects.filter(pk=message.pk).update(**fields)


# --- Queueing ------------------------------------------------------------------------------------


def test_it_queues_a_reply_with_its_audit_event_and_makes_no_graph_call(
    sim, acme, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        message = reply(acme)
    assert (message.status, message.direction, message.wamid) == ("queued", "out", None)
    assert message.sent_by == acme.owner
    [audit] = audit_events(acme, "send.queued")
    assert audit.object_id == str(message.pk)
    assert audit.data["path"] == "agent_reply"
    assert callbacks == [outbox.DISPATCH.enqueue]  # the worker is woken after commit
    assert sim.requests() == []


def test_it_keeps_the_message_and_its_audit_event_in_one_transaction(sim, acme, monkeypatch):
    conversation = make_conversation(acme)
    real_record = outbox.record

    def failing_record(action, *args, **kwargs):
        if action == "send.queued":
            raise RuntimeError("audit log unavailable")
        return real_record(action, *args, **kwargs)

    monkeypatch.setattr(outbox, "record", failing_record)
    with pytest.raises(RuntimeError):
        reply(acme, conversation=conversation)
    assert outbound_messages(acme) == []


def test_it_refuses_empty_and_overlong_replies_before_the_gate(sim, acme):
    conversation = make_conversation(acme)
    with tenant_scope(acme.tenant):
        with pytest.raises(outbox.SendError):
            queue_text_reply(conversation, "   ", actor=acme.owner)
        with pytest.raises(outbox.SendError):
            queue_text_reply(conversation, "x" * 4097, actor=acme.owner)
    assert outbound_messages(acme) == []


def test_it_runs_the_dispatcher_after_commit_when_tasks_run_inline(
    sim, acme, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        message = reply(acme)
    assert reload(message).status == "accepted"
    assert len(graph_sends(sim)) == 1


# --- Dispatch ------------------------------------------------------------------------------------


def test_it_sends_with_the_numbers_token_and_the_message_id_as_callback_data(sim, acme, bravo):
    conversation = make_conversation(acme, wa_id="15550009999")
    with tenant_scope(acme.tenant):
        quoted = Message.objects.create(
            tenant=acme.tenant,
            conversation=conversation,
            direction="in",
            wamid="wamid.Q1",
            type="text",
            content={"body": "Where is it?"},
            text="Where is it?",
            status="received",
            sent_at=timezone.now(),
        )
        message = queue_text_reply(conversation, "On its way", actor=acme.owner, quote=quoted)
    other = reply(bravo)
    assert dispatch_outbox(time_budget=5) == 2

    [request] = graph_sends(sim, acme)
    # The simulator authenticates per number: 200 for acme's number proves acme's decrypted
    # token was the bearer (bravo's token or the ciphertext would get a 190).
    assert (request["auth"], request["status"]) == ("ok", 200)
    assert request["path"] == f"/v25.0/{acme.number.phone_number_id}/messages"
    assert request["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+15550009999",
        "type": "text",
        "text": {"body": "On its way", "preview_url": False},
        "context": {"message_id": "wamid.Q1"},
        "biz_opaque_callback_data": str(message.pk),
    }
    wamid = request["response"]["messages"][0]["id"]
    message = reload(message)
    assert (message.status, message.wamid, message.attempts) == ("accepted", wamid, 1)
    [accepted] = audit_events(acme, "send.accepted")
    assert (accepted.object_id, accepted.data["wamid"]) == (str(message.pk), wamid)
    [bravo_request] = graph_sends(sim, bravo)
    assert bravo_request["json"]["biz_opaque_callback_data"] == str(other.pk)
    assert reload(other).status == "accepted"


def test_it_sends_a_template_with_its_variables(sim, acme):
    conversation = make_conversation(acme)
    template = make_template(acme, sim=sim)
    with tenant_scope(acme.tenant):
        message = queue_template(conversation, template, ["A-77"], actor=acme.owner)
    assert message.text == "Your order A-77 has shipped."
    dispatch_outbox(time_budget=5)
    [request] = graph_sends(sim)
    assert request["json"]["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-77"}]}],
    }
    assert reload(message).status == "accepted"


def post_sim_webhook(record):
    """Post one recorded simulator webhook to Klaros's endpoint (its own signature) and drain."""
    response = Client().post(
        WEBHOOK_URL,
        data=record["body"].encode("ascii"),
        content_type="application/json",
        headers={"X-Hub-Signature-256": record["signature"]},
    )
    assert response.status_code == 200
    drain_journal()


def test_it_moves_a_message_through_sent_delivered_and_read_from_status_webhooks(sim, acme):
    message = reply(acme)
    dispatch_outbox(time_budget=5)
    assert sim.wait_idle(10)
    wamid = reload(message).wamid
    webhooks = sim.webhooks("statuses")
    assert [w["statuses"] for w in webhooks] == [
        [[wamid, name]] for name in ("sent", "delivered", "read")
    ]
    seen = []
    for record in webhooks:
        post_sim_webhook(record)
        seen.append(reload(message).status)
    assert seen == ["sent", "delivered", "read"]
    assert reload(message).pricing is not None  # charges come from the pricing object
    with tenant_scope(acme.tenant):
        assert set(StatusEvent.objects.values_list("status", flat=True)) == {
            "sent",
            "delivered",
            "read",
        }


def test_it_never_moves_a_status_backwards(sim, acme):
    message = reply(acme)
    dispatch_outbox(time_budget=5)
    assert sim.wait_idle(10)
    for record in reversed(sim.webhooks("statuses")):  # read, delivered, sent
        post_sim_webhook(record)
        assert reload(message).status == "read"


# --- Retries -------------------------------------------------------------------------------------


def dispatch_with_fast_forward(message, rounds=10):
    """Dispatch; whenever a retry is scheduled, note its gap and make it due now (a fake clock
    for the backoff, so the test does not sleep through it). Returns the gaps in seconds."""
    gaps = []
    for _ in range(rounds):
        before = timezone.now()
        dispatch_outbox(time_budget=0.3)
        current = reload(message)
        if current.status != "queued":
            return gaps
        gaps.append((current.next_attempt_at - before).total_seconds())
        set_message(message, next_attempt_at=timezone.now() - timedelta(seconds=1))
    raise AssertionError("the message never settled")


@pytest.mark.parametrize(
    "fault",
    [
        {"code": 130429},
        {"code": 131000},
        {"code": 131016},
        {"code": 131056},
        {"http_status": 503},
        {"http_status": 500},
        {"http_status": 502, "non_json": True},
    ],
    ids=["130429", "131000", "131016", "131056", "503", "500", "502-html"],
)
def test_it_retries_retryable_errors_with_growing_jittered_gaps(sim, acme, fault, monkeypatch):
    # Each gap is measured from the instant its retry was scheduled, not from before the
    # dispatch (that would add however long the machine took): the outbox's clock is stopped
    # at a known instant while it schedules the retry.
    backoffs = []
    real_retry_later = settle.retry_later

    def retry_later_at_a_known_instant(message, reason):
        _, instant = call_at_a_stopped_instant(
            monkeypatch, settle, real_retry_later, message, reason
        )
        backoffs.append((reload(message).next_attempt_at - instant).total_seconds())

    # Graph errors reach it through settle.handle_graph_error, transport errors from the
    # dispatcher itself: both names are replaced.
    monkeypatch.setattr(settle, "retry_later", retry_later_at_a_known_instant)
    monkeypatch.setattr(dispatcher, "retry_later", retry_later_at_a_known_instant)
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, count=3, **fault))
    gaps = dispatch_with_fast_forward(message)
    message = reload(message)
    assert (message.status, message.attempts) == ("accepted", 4)
    assert len(graph_sends(sim)) == 4
    assert [g > 0 for g in gaps] == [True] * 3
    assert len(backoffs) == 3
    for attempt, backoff in enumerate(backoffs, start=1):
        assert 0.8 * 2**attempt <= backoff <= 1.3 * 2**attempt, backoffs
    assert backoffs[0] < backoffs[1] < backoffs[2]
    assert not any(b == 2**a for a, b in enumerate(backoffs, start=1))  # jittered, not exact
    assert message.error_code is None
    assert len(audit_events(acme, "send.accepted")) == 1


def test_it_gives_up_on_a_retryable_error_after_the_attempt_limit(sim, acme):
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, count=50, code=131000))
    dispatch_with_fast_forward(message)
    message = reload(message)
    assert (message.status, message.attempts, message.error_code) == (
        "failed",
        MAX_ATTEMPTS,
        131000,
    )
    assert len(graph_sends(sim)) == MAX_ATTEMPTS
    assert message.error_details == explain_error_code(131000)


def test_it_retries_when_meta_cannot_be_reached(sim, acme, settings):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings.WHATSAPP_GRAPH_URL = f"http://127.0.0.1:{closed_port}/v25.0"
    message = reply(acme)
    dispatch_outbox(time_budget=0.3)
    message = reload(message)
    assert (message.status, message.attempts) == ("queued", 1)
    assert message.next_attempt_at > timezone.now()
    assert "Retrying" in message.error_title
    settings.WHATSAPP_GRAPH_URL = sim.graph_url()
    set_message(message, next_attempt_at=timezone.now())
    dispatch_outbox(time_budget=2)
    assert reload(message).status == "accepted"
    assert len(graph_sends(sim)) == 1


# --- Permanent failures --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [131047, 131026, 132001, 131050, 133010, 131009, 100])
def test_it_fails_permanent_errors_visibly_without_retrying(sim, acme, code):
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, code=code))
    dispatch_with_fast_forward(message)
    message = reload(message)
    assert (message.status, message.error_code, message.attempts) == ("failed", code, 1)
    assert message.error_title  # Meta's title
    assert message.error_details == explain_error_code(code)
    assert len(graph_sends(sim)) == 1
    [failed] = audit_events(acme, "send.failed")
    assert (failed.object_id, failed.data["code"]) == (str(message.pk), code)
    dispatch_outbox(time_budget=0.3)
    assert len(graph_sends(sim)) == 1


def test_it_marks_the_number_broken_on_190_and_refuses_later_sends(sim, acme, bravo):
    conversation = make_conversation(acme)
    first = reply(acme, conversation=conversation)
    second = reply(acme, "And another thing", conversation=conversation)
    bravos = reply(bravo)
    sim.add_fault(Fault(acme.number.phone_number_id, code=190))
    dispatch_outbox(time_budget=2)

    first = reload(first)
    assert (first.status, first.error_code) == ("failed", 190)
    assert "Reconnect the number" in first.error_details
    with tenant_scope(acme.tenant):
        number = WhatsAppNumber.objects.get(pk=acme.number.pk)
    assert number.credential_status == CredentialStatus.BROKEN
    assert "190" in number.credential_error
    [alert] = audit_events(acme, "number.credentials_broken")
    assert alert.object_id == str(acme.number.pk)
    # The rest of the batch is refused by the gate before any Graph call...
    second = reload(second)
    assert (second.status, second.error_title) == ("failed", "Refused by the send gate")
    assert len(graph_sends(sim, acme)) == 1
    # ...and so is anything queued later, while bravo's number is unaffected.
    with tenant_scope(acme.tenant), pytest.raises(SendRefused) as refused:
        conversation.refresh_from_db()
        queue_text_reply(conversation, "Hello?", actor=acme.owner)
    assert refused.value.code == "credentials_broken"
    assert reload(bravos).status == "accepted"
    assert len(graph_sends(sim, acme)) == 1


# --- Throttle ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_it_spaces_sends_of_one_number_at_the_configured_rate(monkeypatch, settings):
    settings.KLAROS_SEND_RATE_PER_NUMBER = 80
    clock = FakeClock()
    monkeypatch.setattr(dispatcher, "time", clock)
    throttle = NumberThrottle()
    sends = []
    for _ in range(5):
        throttle.wait("number-a")
        sends.append(clock.now)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sends)]
    assert gaps == [0.0125] * 4  # 1/80 s


def test_it_throttles_each_number_independently(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(dispatcher, "time", clock)
    throttle = NumberThrottle(rate=10)
    throttle.wait("a")
    throttle.wait("b")  # another number: no wait
    assert clock.slept == []
    throttle.wait("a")
    assert clock.slept == [0.1]
    clock.now += 5  # idle for a while: no debt, no burst credit beyond one slot
    throttle.wait("a")
    assert clock.slept == [0.1]


def test_it_never_exceeds_the_rate_against_the_simulator(sim, acme, settings):
    from datetime import datetime

    settings.KLAROS_SEND_RATE_PER_NUMBER = 20
    conversation = make_conversation(acme)
    for index in range(6):
        reply(acme, f"message {index}", conversation=conversation)
    assert dispatch_outbox(time_budget=10) == 6
    times = [datetime.fromisoformat(r["time"]) for r in graph_sends(sim, acme)]
    span = (times[-1] - times[0]).total_seconds()
    assert span >= 5 / 20 * 0.9  # a lower bound: sleeping can only make it longer


# --- Unknown outcomes and reconciliation ---------------------------------------------------------


def test_it_does_not_resend_an_unknown_outcome_and_reconciles_it_from_status_webhooks(sim, acme):
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, drop_connection=True))
    dispatch_outbox(time_budget=0.5)
    message = reload(message)
    assert (message.status, message.wamid) == ("sending", None)
    assert message.next_attempt_at > message.lease_until > timezone.now()
    dispatch_outbox(time_budget=0.5)
    assert len(graph_sends(sim)) == 1  # not resent

    deliver_sim_webhooks(sim)  # Meta's statuses carry our message id
    [sent] = sim.sent_messages()
    message = reload(message)
    assert (message.wamid, message.status) == (sent["wamid"], "read")
    assert message.lease_until is None and message.next_attempt_at is None
    set_message(message)  # nothing due
    dispatch_outbox(time_budget=0.5)
    assert len(graph_sends(sim)) == 1


def test_it_waits_out_the_grace_period_after_an_expired_lease_before_resending(sim, acme):
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, drop_connection=True))
    with sim.webhooks_held():
        dispatch_outbox(time_budget=0.5)
        # The lease expired (the worker died), but the grace period has not: no resend yet.
        set_message(message, lease_until=timezone.now() - timedelta(seconds=1))
        dispatch_outbox(time_budget=0.5)
        assert len(graph_sends(sim)) == 1
        assert reload(message).status == "sending"
    deliver_sim_webhooks(sim)
    assert reload(message).status == "read"
    assert len(graph_sends(sim)) == 1


def test_it_reconciles_from_a_recorded_status_before_resending(sim, acme):
    message = reply(acme)
    set_message(
        message, status="sending", status_rank=5, lease_until=timezone.now() - timedelta(seconds=1)
    )
    with tenant_scope(acme.tenant):
        # Statuses Meta reported for our message id while we did not know its wamid; one of
        # them (delivered) does not echo the callback data.
        StatusEvent.objects.create(
            tenant=acme.tenant,
            wamid="wamid.RECON1",
            status="sent",
            occurred_at=timezone.now(),
            biz_opaque_callback_data=str(message.pk),
        )
        StatusEvent.objects.create(
            tenant=acme.tenant,
            wamid="wamid.RECON1",
            status="delivered",
            occurred_at=timezone.now(),
        )
    dispatch_outbox(time_budget=0.5)
    message = reload(message)
    assert (message.wamid, message.status) == ("wamid.RECON1", "delivered")
    assert graph_sends(sim) == []
    [reconciled] = audit_events(acme, "send.reconciled")
    assert reconciled.data["wamid"] == "wamid.RECON1"


def test_it_resends_once_when_no_status_arrived_within_the_grace_period(sim, acme):
    message = reply(acme)
    past = timezone.now() - timedelta(seconds=1)
    # A worker died before reaching Meta: no status webhook will ever come.
    set_message(message, status="sending", status_rank=5, lease_until=past, next_attempt_at=past)
    dispatch_outbox(time_budget=2)
    assert reload(message).status == "accepted"
    assert len(graph_sends(sim)) == 1


def test_it_does_not_send_a_row_whose_lease_another_dispatcher_took(sim, acme):
    message = reply(acme)
    [claimed] = claim_batch()
    # Our lease ran out while the batch was slow; another dispatcher claimed the row.
    set_message(message, lease_until=timezone.now() + timedelta(seconds=30))
    with tenant_scope(acme.tenant):
        assert dispatch_one(claimed, NumberThrottle(), {}) == 0
    assert graph_sends(sim) == []


def test_it_applies_statuses_that_arrived_before_the_send_was_recorded(sim, acme):
    message = reply(acme)
    sim.add_fault(Fault(acme.number.phone_number_id, drop_connection=True))
    dispatch_outbox(time_budget=0.5)
    assert sim.wait_idle(10)
    records = sim.webhooks("statuses")
    # "read" first (out of order), before Klaros knows the wamid.
    for record in [records[-1], *records[:-1]]:
        post_sim_webhook(record)
    message = reload(message)
    assert message.status == "read" and message.wamid
    assert (
        uuid.UUID(
            records[0]["json"]["entry"][0]["changes"][0]["value"]["statuses"][0][
                "biz_opaque_callback_data"
            ]
        )
        == message.pk
    )
