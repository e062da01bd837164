"""The outbox dispatcher: the worker that sends queued messages. It claims rows with a lease,
re-checks the send gate right before each Graph call, throttles per number, and records what
Meta answered.

A worker killed mid-send leaves the row `sending`; once its lease has expired the row is first
reconciled from status webhooks carrying `biz_opaque_callback_data` (= the message id), and only
resent when none arrived within the grace period, so the common case never sends twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.audit.services import record
from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.graph import GraphClient, GraphError, GraphTransportError, SendResult

from ..models import STATUS_RANK, Direction, Message, MessageStatus, StatusEvent
from .gate import FREE_FORM, OPT_OUT_CONFIRMATION, TEMPLATE, SendRefused, send_gate
from .media import attach_media_or_settle
from .outbox import DISPATCH, is_opt_out_confirmation, request_dispatch
from .settle import fail_send, handle_graph_error, retry_later
from .statuses import apply_pending_statuses

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
# After a lease expires with the outcome unknown, wait this long for a status webhook to
# reconcile the message before sending it again.
RECONCILE_GRACE = timedelta(seconds=60)


def _lease() -> timedelta:
    """How long a claimed row is ours (KLAROS_OUTBOX_LEASE_SECONDS overrides, for tests that
    kill workers)."""
    return timedelta(seconds=getattr(settings, "KLAROS_OUTBOX_LEASE_SECONDS", LEASE.seconds))


def _reconcile_grace() -> timedelta:
    return timedelta(
        seconds=getattr(settings, "KLAROS_OUTBOX_RECONCILE_GRACE_SECONDS", RECONCILE_GRACE.seconds)
    )


# # One dispatcher process sends with many HTTP calls in flight (Little's law: 80 mps at ~300 ms
# per call is ~24 calls in flight per number). The main thread does all database work on its
# one connection: claim, reconcile, the gate re-check, the lease check, recording the result
# and its audit event. Only the Graph call itself runs in a bounded thread pool
# (KLAROS_SEND_CONCURRENCY threads), each thread with its own GraphClient per number. Results
# come back to the main thread, which records them and keeps the pool fed.
#
# Order and safety, as in the sequential dispatcher this replaced:
# - one conversation has at most one message in flight, so a customer gets messages in order;
# - the gate is re-checked for each message right before it is handed to a thread; a thread
#   only waits for its number's rate slot, and at most DISPATCH_LOOKAHEAD seconds of slots are
#   handed out ahead per number, so the check is at most that old when the call starts;
# - the lease of every row the dispatcher holds (claimed, waiting or in flight) is renewed
#   every third of the lease, so it stays valid however long a call takes, and runs out a
#   lease after the dispatcher dies: recovery (reconcile, then resend after the grace) is
#   unchanged;
# - a 190 stops the calls of that number that have not started yet; they go back through the
#   gate, which refuses them once the broken credentials are recorded.

DEFAULT_SEND_CONCURRENCY = 64
# How far ahead (seconds of a number's rate) messages are handed to threads.
DISPATCH_LOOKAHEAD = 0.25
# Extra length of the rate window used by the dispatcher (KLAROS_SEND_RATE_MARGIN_SECONDS): the
# limit holds for our call starts, and Meta counts arrivals, which jitter (80/s becomes 78.4/s).
RATE_WINDOW_MARGIN = 0.02
CLAIM_LIMIT = 200
# Accepted sends recorded per transaction (one commit); small, because the tenant's audit chain
# head stays locked until the commit.
ACCEPTED_PER_TRANSACTION = 16
# How old the credential status the gate sees may be (other processes can change it; a 190
# seen by this dispatcher applies at once).
NUMBER_STATE_TTL = 0.1


def _send_concurrency() -> int:
    return max(1, int(getattr(settings, "KLAROS_SEND_CONCURRENCY", DEFAULT_SEND_CONCURRENCY)))


class NumberThrottle:
    """Per-number rate limiter (80/s by default, Meta's floor), safe to share between threads.

    Two rules, both per number:
    - pacing, a token bucket with a burst of 1: starts are at least `window / rate` apart
      (`reserve` hands out the slots in order, `admit` sleeps until one);
    - a sliding window over the actual starts: never more than `rate` in any `window` seconds
      (a start that would break it sleeps until the oldest start leaves the window).
    `wait` is both, for one caller. Starts are recorded when `admit` returns.
    """

    def __init__(self, rate: float | None = None, window: float = 1.0) -> None:
        self.rate = float(rate or settings.KLAROS_SEND_RATE_PER_NUMBER)
        self.window = float(window)
        self.interval = self.window / self.rate
        self.limit = max(1, int(self.rate))
        self.next_slot: dict[Any, float] = defaultdict(float)
        self._starts: dict[Any, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def reserve(self, number_id: Any) -> float:
        """The next start slot of this number (monotonic seconds); never blocks."""
        with self._lock:
            now = time.monotonic()
            slot = max(self.next_slot[number_id], now)
            self.next_slot[number_id] = slot + self.interval
            return slot

    def backlog(self, number_id: Any) -> float:
        """Seconds of slots already handed out ahead of now."""
        with self._lock:
            return max(0.0, self.next_slot[number_id] - time.monotonic())

    def admit(self, number_id: Any, slot: float) -> float:
        """Sleep until `slot`, then until the sliding window has room; record the start."""
        now = time.monotonic()
        if slot > now:
            time.sleep(slot - now)
        while True:
            with self._lock:
                now = time.monotonic()
                starts = self._starts[number_id]
                while starts and starts[0] <= now - self.window:
                    starts.popleft()
                if len(starts) < self.limit:
                    starts.append(now)
                    return now
                pause = starts[0] + self.window - now
            time.sleep(max(pause, 1e-6))

    def wait(self, number_id: Any) -> float:
        return self.admit(number_id, self.reserve(number_id))


def _due() -> Q:
    now = timezone.now()
    queued = Q(status=MessageStatus.QUEUED) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    stale = Q(status=MessageStatus.SENDING, lease_until__lt=now)
    return Q(direction=Direction.OUTBOUND) & (queued | stale)


def claim_batch(
    limit: int = 50, *, exclude_numbers: Any = (), exclude_conversations: Any = ()
) -> list[Message]:
    """Claim due outbox rows (queued, or sending with an expired lease) with a fresh lease.
    The concurrent dispatcher leaves out numbers that already have enough work waiting and
    conversations it already holds a message of, so one busy number or one long thread does
    not fill its hands while other numbers wait."""
    now = timezone.now()
    lease = _lease()
    with unscoped("outbox dispatch claims across tenants"), transaction.atomic():
        queryset = Message.objects.filter(_due()).order_by("sent_at", "id")
        if exclude_numbers:
            queryset = queryset.exclude(conversation__number_id__in=list(exclude_numbers))
        if exclude_conversations:
            queryset = queryset.exclude(conversation_id__in=list(exclude_conversations))
        if connection.features.has_select_for_update_skip_locked:
            # Lock only the message rows (the number filter joins the conversation).
            queryset = queryset.select_for_update(skip_locked=True, of=("self",))
        # Pick and lock the ids first (a narrow top-N sort, however deep the backlog), then
        # load those rows with what the dispatcher needs.
        pks = list(queryset.values_list("pk", flat=True)[:limit])
        rows = Message.objects.filter(pk__in=pks).select_related(
            "conversation__number", "conversation__contact", "template"
        )
        order = {pk: index for index, pk in enumerate(pks)}
        claimed = sorted(rows, key=lambda m: order[m.pk])
        fresh = [m.pk for m in claimed if m.status == MessageStatus.QUEUED]
        stale = [m.pk for m in claimed if m.status == MessageStatus.SENDING]
        for message in claimed:
            message._previous_status = message.status
            message._lease_expired_at = message.lease_until
            if message.status == MessageStatus.QUEUED:
                message.next_attempt_at = None
            message.status = MessageStatus.SENDING
            message.lease_until = now + lease
        if fresh:
            Message.objects.filter(pk__in=fresh).update(
                status=MessageStatus.SENDING,
                status_rank=STATUS_RANK[MessageStatus.SENDING],
                lease_until=now + lease,
                next_attempt_at=None,
            )
        if stale:
            # Keep next_attempt_at: for a row whose outcome is unknown it says when a resend
            # becomes acceptable.
            Message.objects.filter(pk__in=stale).update(lease_until=now + lease)
    return claimed


def _soonest_retry() -> float | None:
    """Seconds until the next queued retry, if any."""
    with unscoped("outbox dispatch looks for retries across tenants"):
        soonest = (
            Message.objects.filter(
                direction=Direction.OUTBOUND,
                status__in=[MessageStatus.QUEUED, MessageStatus.SENDING],
            )
            .exclude(next_attempt_at__isnull=True)
            .order_by("next_attempt_at")
            .values_list("next_attempt_at", flat=True)
            .first()
        )
    if soonest is None:
        return None
    return max(0.0, (soonest - timezone.now()).total_seconds())


def dispatch_outbox(time_budget: float = 50.0, throttle: NumberThrottle | None = None) -> int:
    """Send due outbox messages until none are left or the time budget is spent. Retries due
    within the budget are waited for here; later ones are picked up by the periodic sweep.
    Calls in flight when the budget runs out are finished and recorded before returning."""
    DISPATCH.clear()
    margin = float(getattr(settings, "KLAROS_SEND_RATE_MARGIN_SECONDS", RATE_WINDOW_MARGIN))
    throttle = throttle or NumberThrottle(window=1.0 + margin)
    dispatcher = _Dispatcher(throttle, _send_concurrency())
    timed_out = dispatcher.run(time_budget)
    if timed_out:
        with transaction.atomic():
            request_dispatch()  # more work left: continue in a fresh task
    return dispatcher.sent


def sweep_outbox() -> int:
    """Periodic safety net: schedule a dispatcher when due rows exist but none is queued."""
    with unscoped("outbox sweep"):
        has_work = Message.objects.filter(_due()).exists()
    if not has_work:
        return 0
    stale = timezone.now() - timedelta(minutes=5)
    with transaction.atomic():
        DISPATCH.reset_if_stale(stale)
        request_dispatch()
    return 1


def _reconciled(message: Message) -> bool:
    """A status webhook carrying our message id arrived: Meta has it; take its wamid."""
    event = (
        StatusEvent.objects.filter(biz_opaque_callback_data=str(message.pk))
        .order_by("occurred_at")
        .first()
    )
    if event is None:
        return False
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            wamid=event.wamid,
            status=MessageStatus.ACCEPTED,
            status_rank=STATUS_RANK[MessageStatus.ACCEPTED],
            lease_until=None,
            next_attempt_at=None,
        )
        message.wamid = event.wamid
        apply_pending_statuses(message)
        record("send.reconciled", message, actor="system:outbox", data={"wamid": event.wamid})
    return True


@dataclass
class _Attempt:
    """One Graph call about to be made: everything a thread needs, no database access."""

    message: Message
    number: WhatsAppNumber
    base_url: str
    token: str
    payload: dict[str, Any]
    slot: float = 0.0


@dataclass
class _Outcome:
    result: SendResult | None = None
    error: GraphError | None = None
    transport: GraphTransportError | None = None
    aborted: bool = False  # not called: the number's token was found broken meanwhile
    crash: BaseException | None = None


def dispatch_one(message: Message, throttle: NumberThrottle, clients: dict) -> int:
    """Send one claimed message from the calling thread (reconcile, gate, lease, call, record).
    The concurrent dispatcher runs the same three steps, the call in a pool thread."""
    attempt = _prepare_attempt(message, lease_until=timezone.now() + _lease())
    if attempt is None:
        return 0

    def client_for(attempt: _Attempt) -> GraphClient:
        key = attempt.number.pk
        if key not in clients:
            clients[key] = GraphClient(attempt.base_url, attempt.token)
        return clients[key]

    attempt.slot = throttle.reserve(attempt.number.pk)
    return _record_outcome(attempt, _perform(attempt, throttle, client_for, None))


def _prepare_attempt(message: Message, *, lease_until) -> _Attempt | None:
    """The database side before a call (main thread, tenant scope): reconcile an unknown
    outcome, re-check the gate, take the attempt if the lease is still ours. None: no call."""
    attempt = _checked_attempt(message)
    if attempt is None:
        return None
    # Only send while the lease is still ours: a slow batch may have outlived it, and another
    # dispatcher may have claimed the row since (it would send it too).
    still_ours = Message.objects.filter(
        pk=message.pk, status=MessageStatus.SENDING, lease_until=message.lease_until
    ).update(attempts=message.attempts + 1, lease_until=lease_until)
    if not still_ours:
        return None
    message.lease_until = lease_until
    message.attempts += 1
    return attempt


def _checked_attempt(
    message: Message, *, token: str | None = None, number_state: tuple | None = None
) -> _Attempt | None:
    """Reconcile an unknown outcome and re-check the gate (main thread, tenant scope); the
    attempt to make, or None. `number_state` is the number's (credential_status,
    credential_error) just read by the caller; otherwise they are read here."""
    if message._previous_status == MessageStatus.SENDING:
        # A previous attempt died (or timed out) with the outcome unknown: Meta may have the
        # message. Reconcile from status webhooks first; resend only after the grace period.
        if _reconciled(message):
            return None
        now = timezone.now()
        resend_after = message.next_attempt_at or (
            (message._lease_expired_at or now) + _reconcile_grace()
        )
        if now < resend_after:
            _release(
                message, keep_sending=True, lease_until=resend_after, next_attempt_at=resend_after
            )
            return None
    conversation = message.conversation
    number = conversation.number
    # The number was loaded when the batch was claimed; a 190 on an earlier message has marked
    # it broken since, and the gate must see that.
    if number_state is None:
        number.refresh_from_db(fields=["credential_status", "credential_error"])
    else:
        number.credential_status, number.credential_error = number_state
    kind = (
        TEMPLATE
        if message.type == "template"
        else OPT_OUT_CONFIRMATION
        if is_opt_out_confirmation(message)
        else FREE_FORM
    )
    try:
        send_gate(
            conversation,
            kind=kind,
            template=message.template,
            path="dispatch",
            actor="system:outbox",
        )
    except SendRefused as refusal:
        fail_send(
            message,
            code=None,
            title="Refused by the send gate",
            details=refusal.message,
            audit="send.refused_at_dispatch",
        )
        return None
    payload = build_payload(message)
    # After the gate: upload the attachment to Meta (or mint its one-use link) only for a
    # send the gate allows. Main thread: it reads and writes the media row. False: the
    # message was failed or queued for a retry (media.attach_media_or_settle).
    if "_media_object_id" in message.content and not attach_media_or_settle(message, payload):
        return None
    return _Attempt(
        message=message,
        number=number,
        base_url=settings.WHATSAPP_GRAPH_URL,
        token=token if token is not None else number.access_token.reveal(),
        payload=payload,
    )


def _extend_leases(messages: list[Message], lease_until, *, reason: str, **changes) -> set[Any]:
    """Move the lease of every row whose lease is still the one it was claimed or renewed
    with to `lease_until` (and apply `changes`), with one conditional UPDATE per current lease
    value. Returns the pks whose lease is now `lease_until`: the rows still ours."""
    groups: dict[Any, list[Message]] = defaultdict(list)
    for message in messages:
        groups[message.lease_until].append(message)
    ours: set[Any] = set()
    with unscoped(reason):
        for current, group in groups.items():
            pks = [m.pk for m in group]
            count = Message.objects.filter(
                pk__in=pks, status=MessageStatus.SENDING, lease_until=current
            ).update(lease_until=lease_until, **changes)
            if count == len(pks):
                ours.update(pks)
            elif count:
                ours.update(
                    Message.objects.filter(pk__in=pks, lease_until=lease_until).values_list(
                        "pk", flat=True
                    )
                )
    return ours


def _take_attempts(messages: list[Message], lease_until) -> set[Any]:
    """The lease check of `_prepare_attempt` for many messages at once: bump `attempts` and the
    lease of the rows whose lease is still ours. Returns their pks."""
    taken = _extend_leases(
        messages,
        lease_until,
        reason="outbox dispatch takes its attempts",
        attempts=F("attempts") + 1,
    )
    for message in messages:
        if message.pk in taken:
            message.lease_until = lease_until
            message.attempts += 1
    return taken


def _perform(attempt: _Attempt, throttle: NumberThrottle, client_for, broken) -> _Outcome:
    """The Graph call (any thread; no database access). `broken` is the dispatcher's set of
    numbers whose token Meta just rejected: their calls that have not started are dropped."""
    number_id = attempt.number.pk
    throttle.admit(number_id, attempt.slot)
    if broken is not None and number_id in broken:
        return _Outcome(aborted=True)
    try:
        client = client_for(attempt)
        result = client.send_message(attempt.number.phone_number_id, attempt.payload)
    except GraphError as error:
        if broken is not None and error.token_invalid:
            broken.add(number_id)
        return _Outcome(error=error)
    except GraphTransportError as error:
        return _Outcome(transport=error)
    except Exception as error:  # re-raised by the main thread
        return _Outcome(crash=error)
    return _Outcome(result=result)


def _record_outcome(attempt: _Attempt, outcome: _Outcome) -> int:
    """The database side after a call (main thread, tenant scope)."""
    message, number = attempt.message, attempt.number
    if outcome.crash is not None:
        raise outcome.crash
    if outcome.error is not None:
        return handle_graph_error(message, number, outcome.error)
    if outcome.transport is not None:
        if outcome.transport.outcome_unknown:
            # Meta may have the message: keep it `sending` so the next pass reconciles it from
            # a status webhook before considering a resend.
            now = timezone.now()
            _release(
                message,
                keep_sending=True,
                lease_until=now + _lease(),
                next_attempt_at=now + _lease() + _reconcile_grace(),
            )
        else:
            retry_later(message, str(outcome.transport))
        return 0
    assert outcome.result is not None
    with transaction.atomic():
        updated = _mark_accepted(message, outcome.result)
        _audit_accepted(message, updated)
    return 1


def _mark_accepted(message: Message, result: SendResult, *, has_statuses: bool = True) -> bool:
    updated = Message.objects.filter(pk=message.pk, wamid__isnull=True).update(
        wamid=result.wamid,
        status=MessageStatus.ACCEPTED,
        status_rank=STATUS_RANK[MessageStatus.ACCEPTED],
        lease_until=None,
        next_attempt_at=None,
        error_code=None,
        error_title="",
        error_details="",
    )
    message.wamid = result.wamid
    if has_statuses:
        apply_pending_statuses(message)
    return bool(updated)


def _audit_accepted(message: Message, updated: bool) -> None:
    record(
        "send.accepted",
        message,
        actor="system:outbox",
        data={"wamid": message.wamid, "attempts": message.attempts, "reconciled": not updated},
    )


class _Dispatcher:
    """One run of the concurrent dispatcher (see the comment at the top of this section)."""

    def __init__(self, throttle: NumberThrottle, concurrency: int) -> None:
        self.throttle = throttle
        self.concurrency = concurrency
        self.max_held = 2 * concurrency  # claimed rows: in flight plus waiting their turn
        # Claimed rows waiting per number before the number is left out of claims (~0.5 s).
        self.per_number_waiting = max(4, math.ceil(throttle.rate / throttle.window / 2))
        self.pending: deque[Message] = deque()  # claimed, in claim order, not handed out yet
        self.inflight: dict[Future, _Attempt] = {}
        self.busy: set[Any] = set()  # conversations with a message in flight
        self.broken: set[Any] = set()  # numbers whose token Meta rejected (threads add)
        self.broken_recorded: set[Any] = set()  # ...and whose 190 the main thread recorded
        self.tokens: dict[Any, str] = {}
        self._states: dict[Any, tuple] = {}
        self._states_read_at = 0.0
        self.sent = 0
        self._local = threading.local()
        self._clients: list[GraphClient] = []
        self._clients_lock = threading.Lock()

    # -- threads --

    def _client_for(self, attempt: _Attempt) -> GraphClient:
        """One GraphClient per (thread, number): requests.Session is not thread-safe."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        key = (attempt.number.pk, attempt.base_url, attempt.token)
        client = clients.get(key)
        if client is None:
            client = clients[key] = GraphClient(attempt.base_url, attempt.token)
            with self._clients_lock:
                self._clients.append(client)
        return client

    # -- main thread --

    def run(self, time_budget: float) -> bool:
        """Dispatch until idle or out of time; True when the budget ran out."""
        deadline = time.monotonic() + time_budget
        renew_every = max(0.2, _lease().total_seconds() / 3)
        next_renewal = time.monotonic() + renew_every
        next_claim = 0.0  # when to ask the database again after it had nothing more
        timed_out = False
        crash: BaseException | None = None
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                claimed = 0
                room = self.max_held - len(self.inflight) - len(self.pending)
                idle = not self.inflight and not self.pending
                if (
                    room > 0
                    and (idle or now >= next_claim)
                    # A claim sorts the whole due backlog: claim in big steps, not per result.
                    and (idle or room >= min(CLAIM_LIMIT, max(1, self.max_held // 2)))
                ):
                    limit = min(room, CLAIM_LIMIT)
                    waiting = Counter(m.conversation.number_id for m in self.pending)
                    batch = claim_batch(
                        limit,
                        exclude_numbers=[
                            n for n, c in waiting.items() if c >= self.per_number_waiting
                        ],
                        exclude_conversations=self.busy | {m.conversation_id for m in self.pending},
                    )
                    claimed = len(batch)
                    self.pending.extend(batch)
                    # Nothing more due right now: look again in a moment, not on every result.
                    next_claim = 0.0 if claimed == limit else now + 0.1
                self._fill(pool)
                if not self.inflight and not self.pending:
                    if claimed:
                        continue  # all settled without a call (refused, reconciled...)
                    wait = _soonest_retry()
                    if wait is None or wait > deadline - time.monotonic():
                        break
                    time.sleep(min(wait + 0.05, 5.0))
                    continue
                timeout = min(next_renewal, deadline) - time.monotonic()
                if self.pending:
                    timeout = min(timeout, 0.01)  # waiting for a rate slot or a conversation
                if self.inflight:
                    done, _ = wait_futures(
                        list(self.inflight), timeout=max(0.0, timeout), return_when=FIRST_COMPLETED
                    )
                    crash = self._collect(done, pool)
                    if crash is not None:
                        break
                elif timeout > 0:
                    time.sleep(timeout)
                if time.monotonic() >= next_renewal:
                    self._renew_leases()
                    next_renewal = time.monotonic() + renew_every
        finally:
            # Out of time or crashed: give back what was not handed out, finish what is in
            # flight and record it, then let the threads go.
            try:
                if self.pending:
                    self._unclaim(list(self.pending))
                    self.pending.clear()
                while self.inflight:
                    done, _ = wait_futures(
                        list(self.inflight), timeout=renew_every, return_when=FIRST_COMPLETED
                    )
                    crash = self._collect(done) or crash
                    if self.pending:  # aborted calls (190) came back: the gate refuses them
                        self._fill(pool, finishing=True)
                    self._renew_leases()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                for client in self._clients:
                    client.close()
        if crash is not None:
            raise crash
        return timed_out

    def _number_state(self, number_id: Any) -> tuple:
        """A number's (credential_status, credential_error) for the gate, read from the
        database at most every NUMBER_STATE_TTL seconds for all numbers this run sends from.
        A 190 this dispatcher records is seen at once (`_collect` clears the cache)."""
        now = time.monotonic()
        if number_id not in self._states or now - self._states_read_at > NUMBER_STATE_TTL:
            wanted = set(self._states) | {number_id}
            with unscoped("outbox dispatch reads its numbers"):
                rows = WhatsAppNumber.objects.filter(pk__in=list(wanted)).values_list(
                    "pk", "credential_status", "credential_error"
                )
                self._states = {pk: (status, error) for pk, status, error in rows}
            self._states_read_at = now
        return self._states.get(number_id) or ("", "")

    def _fill(self, pool: ThreadPoolExecutor, *, finishing: bool = False) -> None:
        """Hand pending messages to threads while there is room, in claim order, one per
        conversation, at most DISPATCH_LOOKAHEAD ahead of each number's rate."""
        if not self.pending:
            return
        waiting: deque[Message] = deque()
        held_back: set[Any] = set(self.busy)  # conversations that must wait (order)
        ready: list[tuple[Message, _Attempt]] = []
        handed: Counter = Counter()  # per number, this round
        while self.pending:
            message = self.pending.popleft()
            number_id = message.conversation.number_id
            ahead = self.throttle.backlog(number_id) + handed[number_id] * self.throttle.interval
            if (
                len(self.inflight) + len(ready) >= self.concurrency
                or message.conversation_id in held_back
                or (number_id in self.broken and number_id not in self.broken_recorded)
                or (finishing and number_id not in self.broken)
                or (not finishing and ahead > DISPATCH_LOOKAHEAD)
            ):
                held_back.add(message.conversation_id)
                waiting.append(message)
                continue
            with tenant_scope(message.tenant_id):
                attempt = _checked_attempt(
                    message,
                    token=self.tokens.get(number_id),
                    number_state=self._number_state(number_id),
                )
            if attempt is None:
                continue
            self.tokens[number_id] = attempt.token
            ready.append((message, attempt))
            handed[number_id] += 1
            held_back.add(message.conversation_id)
        self.pending = waiting
        if ready:
            # Only send while the lease is still ours: a slow round may have outlived it, and
            # another dispatcher may have claimed the row since (it would send it too).
            taken = _take_attempts([m for m, _ in ready], timezone.now() + _lease())
            for message, attempt in ready:
                if message.pk not in taken:
                    continue
                attempt.slot = self.throttle.reserve(message.conversation.number_id)
                future = pool.submit(
                    _perform, attempt, self.throttle, self._client_for, self.broken
                )
                self.inflight[future] = attempt
                self.busy.add(message.conversation_id)
        if finishing and self.pending:
            self._unclaim(list(self.pending))
            self.pending.clear()

    def _collect(self, done, pool: ThreadPoolExecutor | None = None) -> BaseException | None:
        """Record finished calls (main thread). Returns an unexpected error, if any."""
        crash = None
        aborted: list[_Attempt] = []
        accepted: list[tuple[_Attempt, _Outcome]] = []
        others: list[tuple[_Attempt, _Outcome]] = []
        for future in done:
            attempt = self.inflight.pop(future)
            outcome = future.result()
            self.busy.discard(attempt.message.conversation_id)
            if outcome.aborted:
                aborted.append(attempt)
            elif outcome.result is not None:
                accepted.append((attempt, outcome))
            else:
                others.append((attempt, outcome))
        # 190s first, so the calls they stopped are refused by the gate when they come back.
        others.sort(key=lambda item: not (item[1].error and item[1].error.token_invalid))
        for attempt, outcome in others:
            try:
                with tenant_scope(attempt.message.tenant_id):
                    _record_outcome(attempt, outcome)
            except Exception as error:  # the first one is re-raised by run()
                crash = crash or error
                continue
            if outcome.error is not None and outcome.error.token_invalid:
                self.broken_recorded.add(attempt.number.pk)
                self._states = {}  # the gate must see the broken token now
        for start in range(0, len(accepted), ACCEPTED_PER_TRANSACTION):
            try:
                self._record_accepted(accepted[start : start + ACCEPTED_PER_TRANSACTION])
            except Exception as error:  # the first one is re-raised by run()
                crash = crash or error
            if (
                pool is not None
                and self.pending
                and start + ACCEPTED_PER_TRANSACTION < len(accepted)
            ):
                self._fill(pool)  # keep the numbers fed while a long list is recorded
        for attempt in reversed(aborted):
            # Never called: take the attempt back; the message goes through the gate again.
            message = attempt.message
            with unscoped("outbox dispatch gives back an attempt it did not make"):
                Message.objects.filter(
                    pk=message.pk, status=MessageStatus.SENDING, lease_until=message.lease_until
                ).update(attempts=message.attempts - 1)
            message.attempts -= 1
            self.pending.appendleft(message)
        return crash

    def _record_accepted(self, items: list[tuple[_Attempt, _Outcome]]) -> None:
        """Record accepted sends in one transaction (one commit for several messages): first
        the rows, then their audit events, so the tenant's audit chain head is locked only for
        the second half. Each message still commits together with its audit event."""
        # Which of the new wamids already have statuses (Meta's webhook can beat our record):
        # one query per tenant instead of one per message.
        wamids: dict[Any, list[str]] = defaultdict(list)
        for attempt, outcome in items:
            wamids[attempt.message.tenant_id].append(outcome.result.wamid)
        early: set[str] = set()
        for tenant_id, values in wamids.items():
            with tenant_scope(tenant_id):
                early.update(
                    StatusEvent.objects.filter(wamid__in=values).values_list("wamid", flat=True)
                )
        with transaction.atomic():
            marked = []
            for attempt, outcome in items:
                with tenant_scope(attempt.message.tenant_id):
                    marked.append(
                        _mark_accepted(
                            attempt.message,
                            outcome.result,
                            has_statuses=outcome.result.wamid in early,
                        )
                    )
            for (attempt, _), updated in zip(items, marked, strict=True):
                with tenant_scope(attempt.message.tenant_id):
                    _audit_accepted(attempt.message, updated)
        self.sent += len(items)

    def _held(self) -> list[Message]:
        return [*self.pending, *(a.message for a in self.inflight.values())]

    def _renew_leases(self) -> None:
        """Extend the lease of every row this dispatcher holds, so that a slow call or a long
        wait for a rate slot never lets another dispatcher take (and send) it."""
        held = self._held()
        if not held:
            return
        lease_until = timezone.now() + _lease()
        ours = _extend_leases(held, lease_until, reason="outbox dispatch renews its leases")
        for message in held:
            if message.pk in ours:
                message.lease_until = lease_until
        lost = {m.pk for m in held} - ours
        if lost:
            # Not ours any more (settled meanwhile, or taken after a stall): never hand it out.
            self.pending = deque(m for m in self.pending if m.pk not in lost)

    def _unclaim(self, messages: list[Message]) -> None:
        """Give claimed rows that were never handed out back as they were before the claim."""
        with unscoped("outbox dispatch gives back unsent claims"):
            for message in messages:
                mine = Message.objects.filter(
                    pk=message.pk, status=MessageStatus.SENDING, lease_until=message.lease_until
                )
                if message._previous_status == MessageStatus.QUEUED:
                    mine.update(
                        status=MessageStatus.QUEUED,
                        status_rank=STATUS_RANK[MessageStatus.QUEUED],
                        lease_until=None,
                    )
                else:
                    mine.update(lease_until=message._lease_expired_at)


def build_payload(message: Message) -> dict[str, Any]:
    contact = message.conversation.contact
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if contact.wa_id:
        payload["to"] = f"+{contact.wa_id}"
    else:
        payload["recipient"] = contact.user_id
    content = {k: v for k, v in message.content.items() if not k.startswith("_")}
    payload["type"] = message.type
    payload[message.type] = content
    if message.context_wamid:
        payload["context"] = {"message_id": message.context_wamid}
    payload["biz_opaque_callback_data"] = str(message.pk)
    return payload


def _release(message: Message, *, keep_sending: bool, lease_until, next_attempt_at) -> None:
    Message.objects.filter(pk=message.pk).update(
        status=MessageStatus.SENDING if keep_sending else MessageStatus.QUEUED,
        lease_until=lease_until,
        next_attempt_at=next_attempt_at,
    )
