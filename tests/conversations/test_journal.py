"""The webhook journal: coalesced drain tasks, failures retried and visible, quarantine and its
replay by function, command and admin action (DESIGN.md §5.3-5.4, plan B7/C3/R4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from apps.conversations.inbound import journal
from apps.conversations.inbound.journal import (
    drain_batch,
    drain_journal,
    replay_quarantined,
    sweep_journal,
)
from apps.conversations.models import (
    JournalDrainFlag,
    Message,
    MetaErrorReport,
    WebhookEvent,
    WebhookState,
)
from apps.conversations.tasks import drain_webhook_journal, sweep_pending_work
from apps.tenants.scoping import tenant_scope, unscoped
from tests.clock import call_at_a_stopped_instant
from tests.conftest import logged_in_client as logged_in

from .payload_builders import (
    contact,
    deliver,
    encode,
    entry,
    messages_change,
    notification,
    post_signed,
    text,
    text_body,
)

UNKNOWN_PNID = "100000000777"


def messages_of(world) -> list[str]:
    with tenant_scope(world.tenant):
        return sorted(Message.objects.values_list("text", flat=True))


def all_messages() -> int:
    with unscoped("test: count every tenant's messages"):
        return Message.objects.count()


def post(client, world, text_value: str, *, pnid=None) -> bytes:
    payload, _ = text_body(pnid or world, text_value)
    body = encode(payload)
    assert post_signed(client, body, world.credentials.app_secret).status_code == 200
    return body


# --- The drain task ---------------------------------------------------------------------------


def test_it_drains_through_the_task_enqueued_after_commit(
    client, acme, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        post(client, acme, "via the task")
    assert len(callbacks) == 1  # the drain, enqueued only once the row is committed
    assert messages_of(acme) == ["via the task"]
    assert WebhookEvent.objects.get().state == WebhookState.PROCESSED


@pytest.fixture
def queued_tasks(monkeypatch):
    """Put tasks on the real ORM broker instead of running them inline, as in production."""
    monkeypatch.setattr(Conf, "SYNC", False)
    return OrmQ.objects


def test_it_coalesces_a_burst_of_200_webhooks_into_few_drain_tasks(
    client, acme, queued_tasks, django_capture_on_commit_callbacks
):
    for i in range(200):
        with django_capture_on_commit_callbacks(execute=True):
            post(client, acme, f"burst {i}")
        if i == 99:  # the worker picks the task up mid-burst
            assert queued_tasks.count() == 1
            queued_tasks.all().delete()
            assert drain_webhook_journal() == 100
    assert queued_tasks.count() == 1  # 2 tasks for 200 webhooks
    assert drain_webhook_journal() == 100
    assert WebhookEvent.objects.filter(state=WebhookState.PROCESSED).count() == 200
    assert len(messages_of(acme)) == 200


def test_it_releases_the_flag_when_the_broker_is_down_and_the_sweep_reschedules(
    client, acme, monkeypatch, django_capture_on_commit_callbacks
):
    import django_q.tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(django_q.tasks, "async_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_signed(
            client, encode(text_body(acme, "kept")[0]), acme.credentials.app_secret
        )
    assert response.status_code == 200  # the row is committed; the task is a detail
    assert WebhookEvent.objects.get().state == WebhookState.PENDING
    assert JournalDrainFlag.objects.get().scheduled is False
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_journal() == 1
    assert messages_of(acme) == ["kept"]


def test_it_sweeps_a_stale_flag_left_by_a_lost_task(client, acme):
    post(client, acme, "lost task")  # the on_commit never ran: as if the task was lost
    flag = JournalDrainFlag.objects.get()
    assert flag.scheduled
    JournalDrainFlag.objects.update(scheduled_at=timezone.now() - timedelta(minutes=10))
    assert sweep_journal() == 1
    drain_journal()
    assert messages_of(acme) == ["lost task"]
    assert sweep_journal() == 0  # nothing left to do


def test_it_drains_in_batches_of_the_given_size(client, acme):
    for i in range(5):
        post(client, acme, f"m{i}")
    assert drain_batch(batch_size=2) == 2
    assert WebhookEvent.objects.filter(state=WebhookState.PENDING).count() == 3
    assert drain_journal(batch_size=2) == 3
    assert len(messages_of(acme)) == 5


# --- Failure and retry ------------------------------------------------------------------------


def test_it_marks_a_failing_event_failed_retries_it_later_and_processes_the_rest(
    client, acme, monkeypatch
):
    post(client, acme, "before")
    poison = post(client, acme, "poison")
    post(client, acme, "after")
    real_ingest = journal.ingest_event

    def flaky_ingest(event, directory=None):
        if bytes(event.body) == poison:
            raise RuntimeError("simulated fault in ingest")
        return real_ingest(event, directory)

    monkeypatch.setattr(journal, "ingest_event", flaky_ingest)
    assert drain_batch() == 3  # one batch: the fault does not stop its neighbours
    failed = WebhookEvent.objects.get(state=WebhookState.FAILED)
    assert bytes(failed.body) == poison
    assert failed.reason == "RuntimeError: simulated fault in ingest"
    assert failed.attempts == 1
    assert failed.next_attempt_at > timezone.now()
    assert messages_of(acme) == ["after", "before"]

    drain_journal()  # not due yet: left alone
    failed.refresh_from_db()
    assert (failed.state, failed.attempts) == (WebhookState.FAILED, 1)

    monkeypatch.undo()
    WebhookEvent.objects.filter(pk=failed.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    drain_journal()
    failed.refresh_from_db()
    assert (failed.state, failed.attempts, failed.reason) == (WebhookState.PROCESSED, 2, "")
    assert messages_of(acme) == ["after", "before", "poison"]


def test_it_backs_off_longer_after_each_failed_attempt(client, acme, monkeypatch):
    post(client, acme, "always failing")
    monkeypatch.setattr(journal, "ingest_event", lambda event, directory=None: 1 / 0)
    # Each gap runs from the instant the failure was recorded, not from after the drain (that
    # would take off however long the machine took): the journal's clock is stopped at a
    # known instant while it schedules the next attempt.
    failed_at = []
    real_mark_failed = journal._mark_failed

    def mark_failed_at_a_known_instant(event, exc):
        _, instant = call_at_a_stopped_instant(monkeypatch, journal, real_mark_failed, event, exc)
        failed_at.append(instant)

    monkeypatch.setattr(journal, "_mark_failed", mark_failed_at_a_known_instant)
    gaps = []
    for _ in range(4):
        WebhookEvent.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        drain_batch()
        event = WebhookEvent.objects.get()
        gaps.append((event.next_attempt_at - failed_at[-1]).total_seconds())
    assert len(failed_at) == 4
    assert event.attempts == 4
    assert event.state == WebhookState.FAILED
    assert gaps == sorted(gaps)
    assert gaps[-1] > gaps[0]


def test_it_rolls_back_a_half_ingested_event_so_the_retry_stores_each_message_once(
    client, acme, monkeypatch
):
    from apps.conversations.inbound import ingest

    first, second = text("first", from_="15550000001"), text("second", from_="15550000002")
    payload = notification(
        entry(
            messages_change(
                acme,
                contacts=[contact("15550000001"), contact("15550000002")],
                messages=[first, second],
            )
        )
    )
    real = ingest.ingest_inbound_message

    def fail_on_second(number, message, profile):
        if message.wamid == second["id"]:
            raise RuntimeError("crash between two messages")
        return real(number, message, profile)

    monkeypatch.setattr(ingest, "ingest_inbound_message", fail_on_second)
    deliver(client, acme, payload)
    assert WebhookEvent.objects.get().state == WebhookState.FAILED
    assert all_messages() == 0  # the first message's rows were rolled back with the savepoint
    monkeypatch.undo()
    WebhookEvent.objects.update(next_attempt_at=timezone.now())
    drain_journal()
    assert messages_of(acme) == ["first", "second"]


def test_it_marks_an_unparseable_body_failed_and_keeps_it(client, acme):
    body = b'{"object":"whatsapp_business_account","entry":"nope"}'
    deliver(client, acme, body)
    event = WebhookEvent.objects.get()
    assert event.state == WebhookState.FAILED
    assert "PayloadError" in event.reason
    assert bytes(event.body) == body


def test_it_shows_failed_events_with_their_reason_to_operators(client, acme, operator):
    deliver(client, acme, b'{"object":"page","entry":[]}')
    page = logged_in(operator).get("/admin/conversations/webhookevent/?state__exact=failed")
    assert page.status_code == 200
    assert b"PayloadError" in page.content


# --- Quarantine and replay --------------------------------------------------------------------


def _connect_unknown_number(acme):
    from apps.tenants.services import connect_number

    return connect_number(
        acme.tenant,
        phone_number_id=UNKNOWN_PNID,
        waba_id="200000000777",
        display_phone_number="+1 555 0777",
        app_id=acme.app_id,
        credentials=acme.credentials,
        actor="test",
    )


def _replay_by_command():
    call_command("replay_webhooks", "--now")


def _replay_by_admin_action(operator):
    ids = list(WebhookEvent.objects.values_list("pk", flat=True))
    response = logged_in(operator).post(
        "/admin/conversations/webhookevent/",
        {"action": "replay", "_selected_action": ids},
    )
    assert response.status_code == 302
    drain_journal()  # the action enqueues; the worker drains


@pytest.mark.parametrize("how", ["function", "command", "admin action"])
def test_it_delivers_a_quarantined_event_exactly_once_after_the_number_is_connected(
    client, acme, bravo, operator, how
):
    payload, wamid = text_body(UNKNOWN_PNID, "waiting in quarantine")
    body = encode(payload)
    deliver(client, acme, body)
    deliver(client, acme, body)  # Meta's duplicate: two quarantined rows, one message later
    assert WebhookEvent.objects.filter(state=WebhookState.QUARANTINED).count() == 2
    assert all_messages() == 0

    _connect_unknown_number(acme)
    replay = {
        "function": lambda: (replay_quarantined(), drain_journal()),
        "command": _replay_by_command,
        "admin action": lambda: _replay_by_admin_action(operator),
    }[how]
    replay()
    replay()  # a second replay finds nothing quarantined and changes nothing
    assert WebhookEvent.objects.filter(state=WebhookState.PROCESSED).count() == 2
    with tenant_scope(acme.tenant):
        assert list(Message.objects.values_list("wamid", flat=True)) == [wamid]
    assert messages_of(bravo) == []


def test_it_replays_only_quarantined_events(client, acme):
    deliver(client, acme, text_body(acme, "processed")[0])
    deliver(client, acme, text_body(UNKNOWN_PNID, "quarantined")[0])
    assert replay_quarantined() == 1
    states = sorted(WebhookEvent.objects.values_list("state", flat=True))
    assert states == [WebhookState.PENDING, WebhookState.PROCESSED]
    drain_journal()  # the number is still unknown: back to quarantine, not lost
    assert WebhookEvent.objects.filter(state=WebhookState.QUARANTINED).count() == 1


def test_it_does_not_replay_from_the_admin_for_a_non_operator(client, acme):
    deliver(client, acme, text_body(UNKNOWN_PNID, "quarantined")[0])
    response = logged_in(acme.owner).post(
        "/admin/conversations/webhookevent/",
        {"action": "replay", "_selected_action": [WebhookEvent.objects.get().pk]},
    )
    assert response.status_code in (302, 403, 404)
    assert WebhookEvent.objects.get().state == WebhookState.QUARANTINED


# --- An ending drain never strands a row (journal_webhook's flag read) ------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("hold_for", [0.05, 0.5], ids=["waits", "gives-up-waiting"])
def test_an_ending_drain_waits_for_an_insert_that_read_the_flag_before_it_was_cleared(
    acme, hold_for
):
    """On PostgreSQL the webhook reads the drain flag inside its INSERT. An INSERT that read
    "scheduled" just before the drain cleared the flag commits after it: the drain's final
    check waits for that INSERT (SHARE lock on the journal) and then sees its row, or, after
    the lock timeout, schedules another drain anyway."""
    import threading

    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite reads the flag after the commit, in a second statement")
    JournalDrainFlag.objects.update_or_create(pk=1, defaults={"scheduled": True})
    from apps.tenants.models import MetaApp

    app_pk = str(MetaApp.objects.get(app_id=acme.app_id).pk)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params) as webhook:  # a webhook's INSERT, in flight
        [(scheduled,)] = webhook.execute(
            "INSERT INTO conversations_webhookevent"
            " (app_id, body, received_at, state, attempts, reason, counts)"
            " VALUES (%s, %s, now(), 'pending', 0, '', '{}')"
            " RETURNING (SELECT scheduled FROM conversations_journaldrainflag WHERE id = 1)",
            [app_pk, b"{}"],
        ).fetchall()
        assert scheduled is True  # so this webhook will not schedule a drain

        journal.DRAIN.clear()  # the drain ends...
        outcome = {}

        def final_check():
            try:
                outcome["work_left"] = journal._work_left_after_clearing()
            finally:
                from django.db import connection as thread_connection

                thread_connection.close()

        checker = threading.Thread(target=final_check)
        checker.start()
        if hold_for:
            checker.join(timeout=hold_for)
        webhook.commit()
    checker.join(timeout=10)
    # Either the check waited for the INSERT and saw its row, or it gave up waiting (the
    # INSERT held the journal longer than the lock timeout) and assumed work was left: both
    # times the drain schedules another drain itself.
    assert outcome == {"work_left": True}


def test_a_webhook_schedules_a_drain_when_the_flag_row_does_not_exist_yet(
    client, acme, django_capture_on_commit_callbacks
):
    JournalDrainFlag.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        post(client, acme, "first ever")
    assert len(callbacks) == 1
    assert messages_of(acme) == ["first ever"]


# --- Claiming and retention -------------------------------------------------------------------


def _rows(world, states: list[str], *, received_days_ago: float = 0.0) -> list[WebhookEvent]:
    """Journal rows in the given states, received that many days ago."""
    rows = WebhookEvent.objects.bulk_create(
        [WebhookEvent(app=world.number.app, body=b"{}", state=state) for state in states]
    )
    WebhookEvent.objects.filter(pk__in=[row.pk for row in rows]).update(
        received_at=timezone.now() - timedelta(days=received_days_ago)
    )
    return rows


def test_a_claim_takes_due_retries_and_pending_rows_in_journal_order_but_no_retry_early(acme):
    now = timezone.now()
    due, pending, later, _done = _rows(
        acme, [WebhookState.FAILED, WebhookState.PENDING, WebhookState.FAILED, "processed"]
    )
    WebhookEvent.objects.filter(pk=due.pk).update(next_attempt_at=now - timedelta(seconds=1))
    WebhookEvent.objects.filter(pk=later.pk).update(next_attempt_at=now + timedelta(minutes=5))
    newer = _rows(acme, [WebhookState.PENDING])[0]
    with transaction.atomic():
        assert [e.pk for e in journal._claim(now, 10)] == [due.pk, pending.pk, newer.pk]
    with transaction.atomic():  # the limit holds across both kinds; retries come first
        assert [e.pk for e in journal._claim(now, 2)] == [due.pk, pending.pk]
    assert journal._has_claimable(now)
    WebhookEvent.objects.filter(pk__in=[due.pk, pending.pk, newer.pk]).update(
        state=WebhookState.PROCESSED
    )
    assert not journal._has_claimable(now)
    assert journal._claim(now, 10) == []


def test_a_claim_uses_the_partial_indexes_not_a_walk_past_processed_rows(acme):
    """Processed rows are kept for the retention period, so they are nearly the whole journal.
    A single OR query over pending and failed rows was planned as a walk over the primary key
    past every processed row: 47 ms per claim at 17,000 processed rows, growing without bound.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO conversations_webhookevent"
            " (app_id, body, received_at, state, attempts, reason, counts)"
            " SELECT %s, '\\x7b7d', now(), 'processed', 1, '', '{}'"
            " FROM generate_series(1, 20000)",
            [acme.number.app.pk],
        )
    _rows(acme, [WebhookState.PENDING] * 5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversations_webhookevent")
    now = timezone.now()
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        assert len(journal._claim(now, 200)) == 5
        assert journal._has_claimable(now)
    statements = [q["sql"] for q in captured if 'FROM "conversations_webhookevent"' in q["sql"]]
    # One claim statement (due retries and pending rows, each in a CTE), then the existence
    # checks of both kinds.
    assert len(statements) == 3 and statements[0].startswith("WITH due AS")
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
            [root] = cursor.fetchone()[0]
            nodes = list(_plan_nodes(root["Plan"]))
            indexes = {node.get("Index Name") for node in nodes}
            assert indexes & {"webhook_pending_idx", "webhook_retry_idx"}, root
            assert not [node for node in nodes if node["Node Type"] == "Seq Scan"], root
            assert sum(node.get("Rows Removed by Filter", 0) for node in nodes) == 0, root


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_sweep_deletes_processed_bodies_past_retention_and_keeps_the_rest(
    acme, settings, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.KLAROS_JOURNAL_RETENTION_DAYS = 7
    old_done = _rows(acme, [WebhookState.PROCESSED] * 5, received_days_ago=8)
    kept = _rows(
        acme,
        [WebhookState.PENDING, WebhookState.FAILED, WebhookState.QUARANTINED],
        received_days_ago=30,
    )
    recent = _rows(acme, [WebhookState.PROCESSED], received_days_ago=6)
    with tenant_scope(acme.tenant):
        report = MetaErrorReport.objects.create(
            tenant=acme.tenant,
            number=acme.number,
            fingerprint="f",
            title="kept without its body",
            webhook_event=old_done[0],
        )

    with CaptureQueriesContext(connection) as captured:
        assert journal.prune_journal(chunk=2) == 5  # three chunks, one transaction each
    assert not [q for q in captured if '"body"' in q["sql"]]  # bodies are never loaded
    left = set(WebhookEvent.objects.values_list("pk", flat=True))
    assert left == {row.pk for row in (*kept, *recent)}
    with tenant_scope(acme.tenant):
        report.refresh_from_db()
    assert report.webhook_event_id is None and report.title == "kept without its body"

    _rows(acme, [WebhookState.PROCESSED] * 2, received_days_ago=8)
    with django_capture_on_commit_callbacks(execute=False):
        sweep_pending_work()  # the minutely sweep prunes too
    assert set(WebhookEvent.objects.values_list("pk", flat=True)) == left


def test_pruning_stops_at_its_time_budget_and_the_next_sweep_goes_on(acme, settings):
    settings.KLAROS_JOURNAL_RETENTION_DAYS = 1
    _rows(acme, [WebhookState.PROCESSED] * 6, received_days_ago=2)
    assert journal.prune_journal(chunk=2, time_budget=0.0) == 0
    assert journal.prune_journal(chunk=2) == 6
    assert not WebhookEvent.objects.exists()


def test_the_webhook_sends_only_the_body_and_the_database_stamps_the_rest(client, acme):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    before = timezone.now()
    with CaptureQueriesContext(connection) as captured:
        body = post(client, acme, "stamped")
    [insert] = [
        q["sql"]
        for q in captured
        if q["sql"].startswith('INSERT INTO "conversations_webhookevent"')
    ]
    assert insert.startswith('INSERT INTO "conversations_webhookevent" ("app_id", "body")')
    event = WebhookEvent.objects.get()
    assert bytes(event.body) == body and event.app == acme.number.app
    assert before - timedelta(seconds=1) <= event.received_at <= timezone.now()
    fields = ("state", "attempts", "reason", "counts", "next_attempt_at", "processed_at")
    assert [getattr(event, name) for name in fields] == ["pending", 0, "", {}, None, None]
    assert drain_journal() == 1
    assert messages_of(acme) == ["stamped"]
