"""The batched journal drain (`ingest.ingest_batch`) against the one-event-at-a-time path.

The batched drain must end in exactly the database state of processing the same journal rows
one by one: several tenants, duplicates inside the batch, statuses before and after the status
that attaches their wamid, out-of-order statuses, consent keywords, 131050, user_preferences,
template reviews, quarantine, and poisoned rows (which fail alone). Each scenario is run both ways
on the same starting state (each run rolled back) and the canonical dumps are compared. Then:
the number of statements per batch is bounded and does not grow with the batch, and a replay
changes nothing.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.consent.models import ConsentEvent, KeywordRule
from apps.conversations.inbound import journal as journal_module
from apps.conversations.inbound.journal import drain_batch
from apps.conversations.models import (
    STATUS_RANK,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    MetaErrorReport,
    StatusEvent,
    Template,
    WebhookEvent,
    WebhookState,
)
from apps.media.models import MediaObject
from apps.tenants.scoping import tenant_scope, unscoped

from .payload_builders import (
    PRICING_MARKETING,
    PRICING_SERVICE,
    contact,
    encode,
    entry,
    every_inbound_type,
    inbound,
    messages_change,
    meta_error,
    notification,
    status,
    text,
)

NOW = int(time.time()) - 3600  # inside the 24-hour window, so a STOP is confirmed


class _Rollback(Exception):
    pass


# --- Canonical dump ---------------------------------------------------------------------------


def _when(value: datetime | None, started: datetime):
    if value is None:
        return None
    return "NOW" if value >= started else value.isoformat()


def _fields(obj, skip: set[str], started: datetime) -> tuple:
    """Every column of a row but `skip` (pks, wall-clock stamps, foreign keys mapped by the
    caller), times and JSON made comparable between two runs."""
    values = []
    for f in type(obj)._meta.concrete_fields:
        if f.attname in skip:
            continue
        value = getattr(obj, f.attname)
        if isinstance(value, datetime):
            value = _when(value, started)
        elif isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        values.append((f.attname, value))
    return tuple(values)


def canonical_dump(started: datetime, bodies: dict[int, int]) -> dict:
    """Every row ingest writes, keyed by natural keys (UUIDs and wall-clock times differ
    between two runs): `bodies` maps journal row id → position in the journal."""
    with unscoped("test: canonical dump"):
        contacts = {c.pk: (str(c.tenant_id), c.wa_id, c.user_id) for c in Contact.objects.all()}
        conversations = {
            c.pk: (c.number.phone_number_id, contacts[c.contact_id])
            for c in Conversation.objects.select_related("number")
        }
        messages = {m.pk: m for m in Message.objects.all()}

        def message_key(m: Message):
            return m.wamid or f"no-wamid:{m.text}:{m.direction}"

        dump = {
            "contacts": sorted(
                repr((key, c.profile_name, c.username))
                for c in Contact.objects.all()
                for key in [contacts[c.pk]]
            ),
            "conversations": sorted(
                repr(
                    (
                        conversations[c.pk],
                        c.status,
                        _when(c.last_inbound_at, started),
                        _when(c.last_message_at, started),
                        c.last_message_preview,
                        c.unread_count,
                    )
                )
                for c in Conversation.objects.all()
            ),
            "messages": sorted(
                repr(
                    (
                        str(m.tenant_id),
                        message_key(m),
                        m.direction,
                        conversations[m.conversation_id],
                        m.type,
                        json.dumps(m.content, sort_keys=True),
                        m.text,
                        m.status,
                        m.status_rank,
                        _when(m.sent_at, started),
                        m.context_wamid,
                        m.forwarded,
                        m.error_code,
                        m.error_title,
                        m.error_details,
                        json.dumps(m.pricing, sort_keys=True),
                        json.dumps(m.referral, sort_keys=True),
                        m.idempotency_key.split(":")[0],
                        m.send_path,
                    )
                )
                for m in messages.values()
            ),
            # Every other column of inbound rows too (defaults included).
            "inbound_columns": sorted(
                repr((message_key(m), _fields(m, {"id", "conversation_id", "created_at"}, started)))
                for m in messages.values()
                if m.direction == Direction.INBOUND
            ),
            "media": sorted(
                repr(
                    (
                        message_key(messages[o.message_id]) if o.message_id else None,
                        _fields(o, {"id", "message_id", "created_at"}, started),
                    )
                )
                for o in MediaObject.objects.all()
            ),
            "status_events": sorted(
                repr(
                    (
                        str(s.tenant_id),
                        s.wamid,
                        s.status,
                        s.occurred_at.isoformat(),
                        s.recipient_id,
                        json.dumps(s.pricing, sort_keys=True),
                        json.dumps(s.errors, sort_keys=True),
                        s.biz_opaque_callback_data,
                    )
                )
                for s in StatusEvent.objects.all()
            ),
            "error_reports": sorted(
                repr((str(r.tenant_id), r.fingerprint, r.code, r.title, r.details))
                + f"@{bodies.get(r.webhook_event_id)}"
                for r in MetaErrorReport.objects.all()
            ),
            "consent": sorted(
                repr(
                    (
                        contacts[e.contact_id],
                        e.kind,
                        e.scope,
                        e.source,
                        _when(e.occurred_at, started),
                        e.dedupe_key.split(":")[0],
                        json.dumps(
                            {k: v for k, v in e.evidence.items() if k != "message_id"},
                            sort_keys=True,
                        ),
                    )
                )
                for e in ConsentEvent.objects.all()
            ),
            "templates": sorted(
                repr((t.name, t.language, t.status, t.status_reason, t.category))
                for t in Template.objects.all()
            ),
            "audit": sorted(
                AuditEvent.objects.filter(created_at__gte=started).values_list("action", flat=True)
            ),
        }
    dump["journal"] = [
        (
            bodies[e.pk],
            e.state,
            e.attempts,
            e.reason,
            json.dumps(e.counts, sort_keys=True),
            e.next_attempt_at is not None,
        )
        for e in WebhookEvent.objects.order_by("id")
    ]
    return dump


def drain(mode: str, journal: list[tuple[object, bytes]], batch_size: int = 200) -> dict:
    """Journal the bodies, drain them `mode` ("batched" or "one_by_one"), dump, roll back."""
    started = timezone.now()
    try:
        with transaction.atomic():
            rows = WebhookEvent.objects.bulk_create(
                [WebhookEvent(app=app, body=body) for app, body in journal]
            )
            if mode == "batched":
                while drain_batch(batch_size):
                    pass
            else:
                while drain_batch(1, batched=False):
                    pass
            ids = list(WebhookEvent.objects.order_by("id").values_list("id", flat=True))
            assert len(ids) == len(rows)
            raise _Rollback(canonical_dump(started, {pk: i for i, pk in enumerate(ids)}))
    except _Rollback as done:
        return done.args[0]


def assert_same(journal, batch_size: int = 200) -> dict:
    one_by_one = drain("one_by_one", journal)
    batched = drain("batched", journal, batch_size)
    for table in one_by_one:
        assert batched[table] == one_by_one[table], table
    return batched


# --- Worlds -----------------------------------------------------------------------------------


def outbound(world, *, wamid: str | None, status: str = MessageStatus.ACCEPTED, wa_id: str):
    with tenant_scope(world.tenant):
        customer = Contact.objects.create(tenant=world.tenant, wa_id=wa_id, profile_name="Out")
        conversation = Conversation.objects.create(
            tenant=world.tenant, number=world.number, contact=customer
        )
        return Message.objects.create(
            tenant=world.tenant,
            conversation=conversation,
            direction=Direction.OUTBOUND,
            wamid=wamid,
            type="text",
            content={"body": "hello"},
            text="hello",
            status=status,
            status_rank=STATUS_RANK[MessageStatus(status)],
            sent_at=timezone.now(),
        )


def app_of(world):
    return world.number.app


def body(*changes, waba: str = "200000000001") -> bytes:
    return encode(notification(entry(*changes, waba_id=waba)))


@pytest.fixture
def mixed(acme, bravo):
    """A journal touching every ingest rule, for two tenants."""
    a, b = app_of(acme), app_of(bravo)
    known = outbound(acme, wamid="wamid.OUT.KNOWN", wa_id="15550009001")
    waiting = outbound(acme, wamid=None, status=MessageStatus.SENDING, wa_id="15550009002")
    refused = outbound(acme, wamid="wamid.OUT.REFUSED", wa_id="15550009003")
    bravo_out = outbound(bravo, wamid="wamid.OUT.BRAVO", wa_id="15550009004")
    with tenant_scope(acme.tenant):
        KeywordRule.objects.create(tenant=acme.tenant, word="PARAR", kind="opt_out")
        Template.objects.create(
            tenant=acme.tenant, waba_id="200000000001", name="order_update",
            language="en_US", status="APPROVED", category="UTILITY",
        )  # fmt: skip
    # An existing conversation whose last message is newer than what arrives now.
    with tenant_scope(acme.tenant):
        old = Contact.objects.create(tenant=acme.tenant, wa_id="15550001000", profile_name="Old")
        Conversation.objects.create(
            tenant=acme.tenant, number=acme.number, contact=old, unread_count=3,
            last_message_at=datetime.fromtimestamp(NOW + 10_000, tz=UTC),
            last_inbound_at=datetime.fromtimestamp(NOW - 50, tz=UTC),
            last_message_preview="newest already",
        )  # fmt: skip

    dana1 = text("hi", from_="15550001111", ts=NOW, wamid="wamid.IN.1")
    dana2 = text("second", from_="15550001111", ts=NOW + 5, wamid="wamid.IN.2")
    dana_early = text("earlier", from_="15550001111", ts=NOW - 30, wamid="wamid.IN.3")
    journal = [
        # acme: two messages, one contact
        (a, body(messages_change(acme, contacts=[contact("15550001111", "Dana")],
                                 messages=[dana1, dana2]))),
        # acme: statuses out of order, pricing twice (first wins), an unknown status value
        (a, body(messages_change(acme, statuses=[
            status("wamid.OUT.KNOWN", "read", ts=NOW + 30),
            status("wamid.OUT.KNOWN", "sent", ts=NOW + 10, pricing=PRICING_SERVICE),
            status("wamid.OUT.KNOWN", "deleted", ts=NOW + 31),
        ]))),
        # a statuses before the one that attaches its wamid by callback data
        (a, body(messages_change(acme, statuses=[status("wamid.OUT.LATE", "read")]))),
        # bravo in the middle: a new contact, a duplicate of its own message in the same body
        (b, body(messages_change(bravo, contacts=[contact("15550002222", "Bo")], messages=[
            text("bravo one", from_="15550002222", ts=NOW, wamid="wamid.IN.B1"),
            text("bravo one", from_="15550002222", ts=NOW, wamid="wamid.IN.B1"),
            text("bravo two, same second", from_="15550002222", ts=NOW, wamid="wamid.IN.B2"),
        ]), waba="200000000002")),
        # unparseable: fails alone
        (a, b'{"object":"whatsapp_business_account","entry":"nope"}'),
        (a, body(messages_change(acme, statuses=[
            {**status("wamid.OUT.LATE", "sent", pricing=PRICING_MARKETING),
             "biz_opaque_callback_data": str(waiting.pk)},
            status("wamid.OUT.KNOWN", "delivered", ts=NOW + 20, pricing=PRICING_MARKETING),
        ]))),
        (a, body(messages_change(acme, statuses=[status("wamid.OUT.LATE", "delivered")]))),
        # a duplicate delivery (another event) with a new profile name, and an earlier message
        (a, body(messages_change(acme, contacts=[contact("15550001111", "Dana Levi")],
                                 messages=[dana1, dana_early]))),
        # a keyword (the tenant's own word), then a normal message in the same conversation
        (a, body(messages_change(acme, contacts=[contact("15550003333", "Sam")], messages=[
            text("Parar!", from_="15550003333", ts=NOW + 1, wamid="wamid.IN.STOP"),
            text("why", from_="15550003333", ts=NOW + 2, wamid="wamid.IN.WHY"),
        ]))),
        # an older conversation gets an older message: preview kept, unread + 1
        (a, body(messages_change(acme, contacts=[contact("15550001000", "Old")], messages=[
            text("late", from_="15550001000", ts=NOW, wamid="wamid.IN.OLD"),
        ]))),
        # a failure with 131050 and a later failure error: the last error wins
        (a, body(messages_change(acme, statuses=[
            status("wamid.OUT.REFUSED", "failed", errors=[meta_error(131050, "Stopped", "x")]),
        ], errors=[meta_error(131042, "Payment", "billing")]))),
        (a, body(messages_change(acme, statuses=[
            status("wamid.OUT.REFUSED", "failed", errors=[meta_error(131026, "Undelivered", "y")]),
            status("wamid.OUT.REFUSED", "sent", ts=NOW - 5),
        ]))),
        # bravo statuses, one for a wamid of acme's (never crosses tenants)
        (b, body(messages_change(bravo, statuses=[
            status("wamid.OUT.BRAVO", "delivered"),
            status("wamid.OUT.KNOWN", "read"),
        ]), waba="200000000002")),
        # a change for a number that is not connected, and one of another app's number
        (a, body(messages_change("100000000999", messages=[text("lost", wamid="wamid.Q1")]))),
        (a, body(messages_change(bravo, messages=[text("cross", wamid="wamid.Q2")]),
                 waba="200000000002")),
        # a contact known by user_id only, then by both ids
        (a, body(messages_change(acme, contacts=[
            {"profile": {"name": "Uma"}, "user_id": "US.uma"}], messages=[
            {**text("user id", ts=NOW, wamid="wamid.IN.U1", from_=None), "from_user_id": "US.uma"}
        ]))),
        (a, body(messages_change(acme, contacts=[contact("15550004444", "Uma", user_id="US.uma")],
                                 messages=[text("both ids", from_="15550004444", ts=NOW + 1,
                                                wamid="wamid.IN.U2")]))),
    ]  # fmt: skip
    for i, (app, raw) in enumerate(journal):  # a body without "from" key for the user-id one
        journal[i] = (app, raw.replace(b'"from":null,', b""))
    return {"journal": journal, "known": known, "refused": refused, "bravo_out": bravo_out}


@pytest.fixture
def fallbacks(monkeypatch) -> list[str]:
    """Warnings of batched passes that were rolled back and redone one event at a time."""
    seen: list[str] = []
    real = journal_module.logger.warning

    def spy(message, *args, **kwargs):
        if "one by one" in message:
            seen.append(message % args)
        return real(message, *args, **kwargs)

    monkeypatch.setattr(journal_module.logger, "warning", spy)
    return seen


def test_a_mixed_batch_ends_exactly_as_one_by_one(mixed, fallbacks):
    dump = assert_same(mixed["journal"])
    assert fallbacks == []  # the batched pass held
    states = [row[1] for row in dump["journal"]]
    assert states.count(WebhookState.FAILED) == 1  # the unparseable row only
    assert states.count(WebhookState.QUARANTINED) == 2
    # The read reported before the wamid was attached found no message, as one by one.
    assert any("wamid.OUT.LATE" in m and "'delivered'" in m for m in dump["messages"])
    assert any("opt_out" in c for c in dump["consent"])  # PARAR and 131050


def test_rare_events_are_processed_in_journal_order_between_batched_runs(mixed, acme, fallbacks):
    a = app_of(acme)
    journal = list(mixed["journal"])
    preferences = {
        "field": "user_preferences",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000001", "phone_number_id": "100000000001"},
            "contacts": [contact("15550001111", "Dana P")],
            "user_preferences": [
                {"wa_id": "15550001111", "detail": "stop", "category": "marketing_messages",
                 "value": "stop", "timestamp": NOW + 3},
            ],
        },
    }  # fmt: skip
    review = {
        "field": "message_template_status_update",
        "value": {
            "event": "PAUSED", "message_template_id": 1, "message_template_name": "order_update",
            "message_template_language": "en_US", "reason": "LOW_QUALITY",
        },
    }  # fmt: skip
    journal.insert(3, (a, body(preferences)))
    journal.insert(8, (a, body(review)))
    dump = assert_same(journal)
    assert fallbacks == []
    assert any("PAUSED" in t for t in dump["templates"])
    assert any("meta_preference" in c for c in dump["consent"])


def test_a_poison_event_found_only_while_writing_fails_alone(mixed, acme, fallbacks):
    # No sender at all: upsert_contact raises, the batched pass is rolled back and the run is
    # processed one by one, where only this row fails.
    a = app_of(acme)
    poison = {**text("nobody", wamid="wamid.IN.NOBODY"), "from": None}
    journal = list(mixed["journal"])
    journal.insert(5, (a, body(messages_change(acme, messages=[poison]))))
    dump = assert_same(journal)
    assert len(fallbacks) == 1 and "names no sender" in fallbacks[0]
    failed = [row for row in dump["journal"] if row[1] == WebhookState.FAILED]
    assert [row[0] for row in failed] == [4, 5]
    assert "names no sender" in failed[0][3] or "names no sender" in failed[1][3]


def test_every_inbound_type_and_media_end_exactly_as_one_by_one(acme, bravo, fallbacks):
    # Each message type (media registered for download, context, referral, errors), content
    # that is awkward to encode (quotes, backslashes, non-ASCII, floats, nesting), a media
    # message delivered twice and one without a media id, across two tenants.
    a, b = app_of(acme), app_of(bravo)
    messages = [message for _name, message, _expected in every_inbound_type()]
    for i, message in enumerate(messages):
        message["from"] = f"155500020{i % 3:02d}"
    awkward = text(
        'a "quoted" \\ back\\slash, tab\t, ünïcödé \U0001f600 and \u2028',
        from_="15550002100",
        wamid="wamid.IN.AWKWARD",
        referral={"source_id": "1", "nested": {"list": [1, 2.5, None, True, "x"]}},
    )
    no_id = inbound("image", {"mime_type": "image/png", "caption": "no id"}, from_="15550002101")
    media = [m for m in messages if m["type"] in ("image", "document")]
    ann = [contact("15550002000", "Ann")]
    journal = [
        (a, body(messages_change(acme, contacts=ann, messages=messages[:8]))),
        (b, body(messages_change(bravo, messages=[dict(m) for m in media]), waba="200000000002")),
        (a, body(messages_change(acme, messages=[*messages[8:], awkward, no_id]))),
        (a, body(messages_change(acme, messages=media))),  # delivered again
    ]  # fmt: skip
    dump = assert_same(journal)
    assert fallbacks == []
    # acme's six media messages once each, bravo's two; none for the image without a media id
    assert len(dump["media"]) == 6 + 2
    assert any("AWKWARD" in m and "ünïcödé" in m for m in dump["inbound_columns"])


def test_small_batches_end_like_one_big_batch(mixed):
    assert_same(mixed["journal"], batch_size=3)


def test_a_replay_of_the_journal_changes_nothing(mixed):
    # Without the `read` that came before its wamid was attached: that one finds its message
    # on a replay (one by one too) and moves it forward, which is right but not "nothing".
    journal = [item for i, item in enumerate(mixed["journal"]) if i != 2]
    started = timezone.now()
    WebhookEvent.objects.bulk_create([WebhookEvent(app=app, body=raw) for app, raw in journal])
    drain_batch(200)
    ids = {
        pk: i
        for i, pk in enumerate(WebhookEvent.objects.order_by("id").values_list("id", flat=True))
    }
    first = canonical_dump(started, ids)
    WebhookEvent.objects.exclude(state=WebhookState.FAILED).update(state=WebhookState.PENDING)
    drain_batch(200)
    second = canonical_dump(started, ids)
    for table in first:
        if table not in ("journal", "audit"):
            assert second[table] == first[table], table
    counts = [json.loads(row[4]) for row in second["journal"] if row[1] != WebhookState.FAILED]
    assert not any(c.get("messages_new") for c in counts)
    assert sum(c.get("messages_duplicate", 0) for c in counts) == sum(
        c.get("messages", 0) for c in counts
    )


def test_a_late_copy_of_a_message_does_not_bring_back_an_older_profile_name(acme):
    """Dana renames herself between two messages; Meta then delivers the first message again,
    with the name it had then. Both paths keep the newer name (and store nothing new)."""
    a = app_of(acme)
    first = text("hi", from_="15550001111", ts=NOW, wamid="wamid.IN.NAME1")
    later = text("again", from_="15550001111", ts=NOW + 60, wamid="wamid.IN.NAME2")
    journal = [
        (a, body(messages_change(acme, contacts=[contact("15550001111", "Dana")],
                                 messages=[first]))),
        (a, body(messages_change(acme, contacts=[contact("15550001111", "Dana Levi")],
                                 messages=[later]))),
        (a, body(messages_change(acme, contacts=[contact("15550001111", "Dana")],
                                 messages=[first]))),
    ]  # fmt: skip
    dump = assert_same(journal)
    assert len(dump["contacts"]) == 1 and "'Dana Levi'" in dump["contacts"][0]
    assert len(dump["messages"]) == 2
    # The same with each body in a batch of its own: the copy finds its message stored.
    dump = assert_same(journal, batch_size=1)
    assert "'Dana Levi'" in dump["contacts"][0]


# --- Statement budget -------------------------------------------------------------------------


def status_journal(acme, bravo, bodies: int, per_body: int = 5):
    journal = []
    seq = 0
    for i in range(bodies):
        world = (acme, bravo)[i % 2]
        items = []
        for _ in range(per_body):
            value = ("sent", "delivered", "read")[seq % 3]
            items.append(
                status(f"wamid.BUDGET{seq // 3:06d}", value, ts=NOW + seq,
                       pricing=PRICING_SERVICE if value == "sent" else None)
            )  # fmt: skip
            seq += 1
        journal.append((app_of(world), body(messages_change(world, statuses=items))))
    return journal


def inbound_journal(acme, bodies: int, senders: int = 10, start: int = 0):
    return [
        (
            app_of(acme),
            body(
                messages_change(
                    acme,
                    contacts=[contact(f"1555100{i % senders:04d}", f"C{i % senders}")],
                    messages=[
                        text(
                            f"m{i}",
                            from_=f"1555100{i % senders:04d}",
                            ts=NOW + i,
                            wamid=f"wamid.BUDGETIN{start + i:06d}",
                        )
                    ],
                )
            ),
        )
        for i in range(bodies)
    ]


def journal_rows(journal):
    WebhookEvent.objects.bulk_create([WebhookEvent(app=app, body=raw) for app, raw in journal])


def test_fifty_statuses_across_two_tenants_take_a_bounded_number_of_statements(
    acme, bravo, django_assert_max_num_queries
):
    journal_rows(status_journal(acme, bravo, bodies=10))
    with django_assert_max_num_queries(40):
        assert drain_batch(200) == 10
    assert not WebhookEvent.objects.exclude(state=WebhookState.PROCESSED).exists()
    with unscoped("test"):
        assert StatusEvent.objects.count() == 50


def _statements(callable_) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        callable_()
    return len(captured)


def test_statements_per_batch_do_not_grow_with_the_batch(acme, bravo):
    from apps.conversations.inbound.ingest import NumberDirectory

    directory = NumberDirectory()
    directory.get(acme.number.phone_number_id)
    directory.get(bravo.number.phone_number_id)
    journal_rows(status_journal(acme, bravo, bodies=4, per_body=3))
    small = _statements(lambda: drain_batch(200, directory))
    journal_rows(status_journal(acme, bravo, bodies=40, per_body=3))
    large = _statements(lambda: drain_batch(200, directory))
    assert large == small

    journal_rows(inbound_journal(acme, bodies=10, senders=10))  # 10 new contacts
    small = _statements(lambda: drain_batch(200, directory))
    journal_rows(inbound_journal(acme, bodies=40, senders=10, start=1000))  # same contacts
    large = _statements(lambda: drain_batch(200, directory))
    assert large <= small
    with tenant_scope(acme.tenant):
        assert sorted(Conversation.objects.values_list("unread_count", flat=True)) == [5] * 10


def test_the_one_by_one_path_is_still_there_for_the_baseline(acme):
    journal_rows(inbound_journal(acme, bodies=3, senders=1))
    assert drain_batch(200, batched=False) == 3
    with tenant_scope(acme.tenant):
        assert Conversation.objects.get().unread_count == 3


def test_the_contact_lookup_of_a_batch_can_use_the_partial_unique_indexes(acme):
    """The batch reads every contact it names with `wa_id IN (...)`. The unique index on wa_id
    is partial (`NOT (wa_id = '')`); the query must repeat that condition or PostgreSQL cannot
    use the index for a long list and scans the whole tenant (26 ms against 1 ms at 200,000
    contacts)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    # More than 100 numbers: PostgreSQL proves the index condition from a shorter IN list by
    # itself (it expands arrays of up to 100 constants), not from a longer one.
    journal_rows(inbound_journal(acme, bodies=150, senders=150))
    with CaptureQueriesContext(connection) as captured:
        drain_batch(200)
    lookups = [
        q["sql"]
        for q in captured
        if q["sql"].startswith("SELECT") and 'FROM "conversations_contact"' in q["sql"]
    ]
    assert lookups
    with connection.cursor() as cursor:
        # A tenant with 20,000 more contacts, so that the planner's choice is not a toss-up:
        # filtering the tenant's rows through its plain index would cost far more than
        # fetching 150 rows through the unique index, if that index can be used at all.
        cursor.execute(
            "INSERT INTO conversations_contact"
            " (id, tenant_id, wa_id, user_id, profile_name, username, created_at, updated_at)"
            " SELECT gen_random_uuid(), %s, '1999' || lpad(g::text, 7, '0'), '', '', '',"
            " now(), now() FROM generate_series(1, 20000) AS g",
            [acme.tenant.pk],
        )
        cursor.execute("ANALYZE conversations_contact")
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in lookups:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "contact_unique_wa_id" in plan or "contact_unique_user_id" in plan, plan
