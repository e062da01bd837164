"""The concurrent dispatcher: many Graph calls in flight from one process, while the database
side (claim, gate, lease, result, audit) stays on the main thread. Every message is sent
exactly once, in order within its conversation; the per-number rate limiter never lets more
than its rate start in any window; a gate refusal in the middle of a concurrent batch makes no
Graph call; a 190 stops the number's calls that have not started; unknown outcomes wait for
the grace period; leases stay valid while a call is slow (DESIGN.md section 6, B7)."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.conversations.models import Conversation, Message, OutboxDrainFlag
from apps.conversations.outbound import dispatcher
from apps.conversations.outbound.dispatcher import NumberThrottle, claim_batch, dispatch_outbox
from apps.conversations.outbound.outbox import queue_text_reply
from apps.tenants.models import CredentialStatus, WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.simulator import Fault
from tests.conftest import make_tenant

from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    deliver_sim_webhooks,
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    reload,
    sim_fixture,
    sim_number,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


@pytest.fixture
def worlds(acme, bravo, sim):
    """Five tenants, each with its own number known to the simulator."""
    extra = []
    for index in range(3):
        world = make_tenant(
            f"extra{index}",
            f"Extra {index}",
            pnid=f"10000000010{index}",
            waba=f"20000000010{index}",
            app_id=f"30000000010{index}",
            owner_email=f"owner@extra{index}.test",
        )
        sim.add_number(sim_number(world))
        extra.append(world)
    return [acme, bravo, *extra]


def queue(world, conversation, text):
    with tenant_scope(world.tenant):
        return queue_text_reply(conversation, text, actor=world.owner)


def sends_per_message(sim) -> Counter:
    return Counter(r["json"]["biz_opaque_callback_data"] for r in graph_sends(sim))


def test_it_sends_many_messages_across_numbers_concurrently_each_exactly_once(
    sim, worlds, settings
):
    settings.KLAROS_SEND_CONCURRENCY = 16
    # Every call takes 0.2 s at "Meta": one at a time, 60 calls would take 12 s.
    for world in worlds:
        sim.add_fault(Fault(world.number.phone_number_id, count=1000, delay=0.2))
    by_conversation = defaultdict(list)
    for world in worlds:
        for c in range(4):
            conversation = make_conversation(world)
            for m in range(3):
                message = queue(world, conversation, f"{world.tenant.slug} c{c} m{m}")
                by_conversation[conversation.pk].append(message)
    messages = [m for ms in by_conversation.values() for m in ms]

    started = time.monotonic()
    assert dispatch_outbox(time_budget=30) == len(messages) == 60
    elapsed = time.monotonic() - started  # for the message only: a busy machine is slower

    # One at a time, "Meta" would never hold two calls at once; the pool holds at most 16.
    held = sim.sends_in_flight()["max"]
    assert 1 < held <= 16, f"{held} call(s) in flight at most, 60 calls took {elapsed:.1f} s"
    sends = sends_per_message(sim)
    assert set(sends) == {str(m.pk) for m in messages}
    assert max(sends.values()) == 1, sends  # exactly once each
    for message in messages:
        current = reload(message)
        assert (current.status, current.attempts) == ("accepted", 1)
        assert current.wamid
    for world in worlds:
        assert len(audit_events(world, "send.accepted")) == 12
    # A customer gets a conversation's messages in the order they were written.
    arrival = {r["json"]["biz_opaque_callback_data"]: r["id"] for r in graph_sends(sim)}
    for conversation_messages in by_conversation.values():
        order = [arrival[str(m.pk)] for m in conversation_messages]
        assert order == sorted(order)
    with unscoped("test witness"):
        assert not Message.objects.filter(status__in=["queued", "sending"]).exists()


# --- The rate limiter (fake clock) ---------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 5000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds


def max_in_any_window(starts, window):
    """The most starts inside any half-open window (t - window, t] (t a start: the worst case)."""
    starts = sorted(starts)
    best, low = 0, 0
    for high, t in enumerate(starts):
        while starts[low] <= t - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def test_the_rate_limiter_never_starts_more_than_its_rate_in_any_window(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(dispatcher, "time", clock)
    rng = random.Random(7)
    throttle = NumberThrottle(rate=80)
    starts = defaultdict(list)
    # Three numbers; slots are reserved in bursts (as the dispatcher hands out work) and each
    # caller wakes up late by a random amount (a busy machine), in a random order.
    for _ in range(60):
        reserved = []
        for _ in range(rng.randint(1, 40)):
            number = rng.choice("abc")
            reserved.append((number, throttle.reserve(number)))
        rng.shuffle(reserved)
        for number, slot in reserved:
            clock.now = max(clock.now, slot) + rng.choice([0.0, 0.0, 0.001, 0.02, 0.3])
            starts[number].append(throttle.admit(number, slot))
        clock.now += rng.choice([0.0, 0.01, 1.5])
    for number, times in starts.items():
        assert len(times) > 200
        assert max_in_any_window(times, 1.0) <= 80, number


def test_the_rate_limiter_sustains_its_rate_and_spaces_one_number(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(dispatcher, "time", clock)
    throttle = NumberThrottle(rate=80)
    times = [throttle.wait("a") for _ in range(800)]
    assert max_in_any_window(times, 1.0) == 80
    assert times[-1] - times[0] == pytest.approx(799 / 80, abs=1e-3)  # 80/s sustained
    assert min(b - a for a, b in itertools.pairwise(times)) == pytest.approx(1 / 80)  # no burst


def test_the_rate_limiter_holds_with_real_threads():
    throttle = NumberThrottle(rate=20, window=0.25)
    starts, lock = [], threading.Lock()

    def caller():
        for _ in range(8):
            started = throttle.wait("n")
            with lock:
                starts.append(started)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 80
    assert max_in_any_window(starts, 0.25) <= 20


# --- Refusals, broken tokens, unknown outcomes ---------------------------------------------------


def test_a_refusal_in_the_middle_of_a_concurrent_batch_makes_no_graph_call(sim, worlds, settings):
    settings.KLAROS_SEND_CONCURRENCY = 8
    messages = []
    for world in worlds:
        for index in range(3):
            messages.append(queue(world, make_conversation(world), f"hello {index}"))
    refused = messages[7]
    # After it was queued, the customer's window closed (its message was older than we knew).
    with unscoped("test"):
        Conversation.objects.filter(pk=refused.conversation_id).update(
            last_inbound_at=timezone.now() - timedelta(hours=30)
        )
    assert dispatch_outbox(time_budget=20) == len(messages) - 1
    assert sim.requests(biz_opaque_callback_data=str(refused.pk)) == []
    current = reload(refused)
    assert (current.status, current.error_title, current.attempts) == (
        "failed",
        "Refused by the send gate",
        0,
    )
    owner = next(w for w in worlds if w.tenant.pk == refused.tenant_id)
    [audit] = audit_events(owner, "send.refused_at_dispatch")
    assert audit.object_id == str(refused.pk)
    others = [m for m in messages if m.pk != refused.pk]
    assert all(reload(m).status == "accepted" for m in others)
    assert max(sends_per_message(sim).values()) == 1


def test_a_190_in_the_middle_of_a_batch_stops_further_sends_of_that_number(sim, worlds, settings):
    settings.KLAROS_SEND_CONCURRENCY = 16
    settings.KLAROS_SEND_RATE_PER_NUMBER = 10  # 0.1 s apart: few of acme's calls can start early
    acme, bravo = worlds[0], worlds[1]
    acmes = [queue(acme, make_conversation(acme), f"acme {i}") for i in range(20)]
    bravos = [queue(bravo, make_conversation(bravo), f"bravo {i}") for i in range(6)]
    # The token is revoked at Meta: every call for acme's number answers 190.
    sim.add_fault(Fault(acme.number.phone_number_id, count=1000, code=190))
    dispatch_outbox(time_budget=20)

    called = sends_per_message(sim)
    acme_calls = [m for m in acmes if str(m.pk) in called]
    # Calls that had started before the first 190 came back fail with it; none start after.
    assert 1 <= len(acme_calls) <= 4, len(acme_calls)
    for message in acmes:
        current = reload(message)
        assert current.status == "failed"
        if str(message.pk) in called:
            assert current.error_code == 190
        else:
            assert (current.error_title, current.attempts) == ("Refused by the send gate", 0)
    with tenant_scope(acme.tenant):
        number = WhatsAppNumber.objects.get(pk=acme.number.pk)
    assert number.credential_status == CredentialStatus.BROKEN
    assert len(audit_events(acme, "number.credentials_broken")) == 1  # one alert
    assert all(reload(m).status == "accepted" for m in bravos)
    assert max(called.values()) == 1


def test_unknown_outcomes_are_not_resent_before_the_grace_period(sim, worlds, settings):
    settings.KLAROS_SEND_CONCURRENCY = 8
    acme = worlds[0]
    messages = [queue(world, make_conversation(world), "hi") for world in worlds for _ in range(2)]
    # Meta processes acme's first two calls but the connections drop before the answers.
    sim.add_fault(Fault(acme.number.phone_number_id, count=2, drop_connection=True))
    with sim.webhooks_held():
        dispatch_outbox(time_budget=2)
        unknown = [m for m in messages if reload(m).status == "sending"]
        assert len(unknown) == 2
        for message in unknown:
            assert reload(message).next_attempt_at > timezone.now()
        # Even after the lease ran out (a dead worker), nothing is resent within the grace.
        with unscoped("test"):
            Message.objects.filter(pk__in=[m.pk for m in unknown]).update(
                lease_until=timezone.now() - timedelta(seconds=1)
            )
        dispatch_outbox(time_budget=1)
        assert all(reload(m).status == "sending" for m in unknown)
    sends = sends_per_message(sim)
    assert all(sends[str(m.pk)] == 1 for m in messages)
    deliver_sim_webhooks(sim)  # Meta's statuses carry our message ids: reconciled
    assert all(reload(m).wamid for m in unknown)
    dispatch_outbox(time_budget=1)
    assert max(sends_per_message(sim).values()) == 1


# --- Leases and the time budget ------------------------------------------------------------------


def test_it_keeps_the_lease_of_a_slow_call_so_no_other_dispatcher_can_take_it(
    sim, acme, settings, monkeypatch
):
    settings.KLAROS_OUTBOX_LEASE_SECONDS = 1
    message = queue(acme, make_conversation(acme), "slow")
    sim.add_fault(Fault(acme.number.phone_number_id, delay=2.5))  # longer than the lease
    real_renew = dispatcher._Dispatcher._renew_leases
    stolen = []

    def renew_then_try_to_steal(self):
        real_renew(self)
        stolen.extend(claim_batch())  # what a second dispatcher would do now

    monkeypatch.setattr(dispatcher._Dispatcher, "_renew_leases", renew_then_try_to_steal)
    assert dispatch_outbox(time_budget=10) == 1
    assert stolen == []
    assert len(graph_sends(sim)) == 1
    assert (reload(message).status, reload(message).attempts) == ("accepted", 1)


def test_it_gives_back_what_it_did_not_hand_out_when_the_budget_ends(sim, acme, settings):
    settings.KLAROS_SEND_RATE_PER_NUMBER = 4
    messages = [queue(acme, make_conversation(acme), f"m{i}") for i in range(12)]
    OutboxDrainFlag.objects.filter(pk=1).update(scheduled=False)
    sent = dispatch_outbox(time_budget=0.6)
    assert 1 <= sent < len(messages)
    statuses = Counter(reload(m).status for m in messages)
    assert statuses == {"accepted": sent, "queued": len(messages) - sent}
    for message in messages:
        current = reload(message)
        if current.status == "queued":  # as if never claimed: due now, no attempt counted
            assert (current.attempts, current.lease_until, current.next_attempt_at) == (
                0,
                None,
                None,
            )
    assert OutboxDrainFlag.objects.get(pk=1).scheduled  # a fresh dispatcher continues
    dispatch_outbox(time_budget=10)
    assert all(reload(m).status == "accepted" for m in messages)
    assert max(sends_per_message(sim).values()) == 1
