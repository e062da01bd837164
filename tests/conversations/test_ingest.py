"""From a verified body to inbox rows: routing by number and app, every message type, statuses
that only move forward, idempotency under duplicates and replay (DESIGN.md §5, plan B4/B5/C3)."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import Client
from django.urls import NoReverseMatch, Resolver404, resolve

from apps.conversations.inbound.journal import drain_journal
from apps.conversations.models import (
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    MetaErrorReport,
    StatusEvent,
    WebhookEvent,
    WebhookState,
)
from apps.conversations.outbound.statuses import apply_pending_statuses
from apps.tenants.scoping import tenant_scope, unscoped
from apps.tenants.services import NumberCredentials, connect_number

from .payload_builders import (
    BASE_TS,
    CUSTOMER,
    PRICING_MARKETING,
    PRICING_SERVICE,
    contact,
    deliver,
    encode,
    entry,
    every_inbound_type,
    inbound_change,
    messages_change,
    meta_error,
    new_wamid,
    notification,
    post_signed,
    status,
    status_body,
    text,
    text_body,
)

INBOX_MODELS = (Contact, Conversation, Message, StatusEvent, MetaErrorReport)


def counts(tenant=None) -> dict[str, int]:
    scope = tenant_scope(tenant) if tenant else unscoped("test: count every tenant's rows")
    with scope:
        return {model.__name__: model.objects.count() for model in INBOX_MODELS}


def nothing_stored(tenant=None) -> bool:
    return not any(counts(tenant).values())


def only_message(world) -> Message:
    with tenant_scope(world.tenant):
        return Message.objects.select_related("conversation__contact").get()


def outbound(world, wamid: str | None = None, *, to: str = CUSTOMER) -> Message:
    """An outbound message Klaros already sent (status accepted), as the send pipeline leaves it."""
    with tenant_scope(world.tenant):
        person, _ = Contact.objects.get_or_create(wa_id=to, defaults={"tenant": world.tenant})
        conversation, _ = Conversation.objects.get_or_create(
            number=world.number, contact=person, defaults={"tenant": world.tenant}
        )
        return Message.objects.create(
            conversation=conversation,
            direction=Direction.OUTBOUND,
            wamid=wamid or new_wamid("OUT"),
            type="text",
            content={"body": "Your order shipped"},
            text="Your order shipped",
            status=MessageStatus.ACCEPTED,
            status_rank=10,
            sent_at=datetime.now(tz=UTC),
        )


def reload(message: Message) -> Message:
    with tenant_scope(message.tenant_id):
        return Message.objects.get(pk=message.pk)


def connect_extra_number(world, pnid: str, *, app_of):
    """Connect another number to `world`'s tenant under the Meta app of `app_of`."""
    return connect_number(
        world.tenant,
        phone_number_id=pnid,
        waba_id=f"2{pnid[1:]}",
        display_phone_number=f"+1 555 {pnid[-4:]}",
        app_id=app_of.app_id,
        credentials=NumberCredentials(
            access_token=f"EAA-extra-{pnid}",
            app_secret=app_of.credentials.app_secret,
            verify_token=app_of.credentials.verify_token,
        ),
        actor="test",
    )


# --- Routing and isolation --------------------------------------------------------------------


def test_it_quarantines_a_change_for_acmes_number_signed_with_bravos_secret(client, acme, bravo):
    payload, _ = text_body(acme, "Transfer the money", name="Acme CEO")
    deliver(client, bravo, payload)  # bravo's secret verifies; the number is acme's
    event = WebhookEvent.objects.get()
    assert event.state == WebhookState.QUARANTINED
    assert "another Meta app" in event.reason
    assert nothing_stored()


def test_it_quarantines_an_unknown_phone_number_id_with_the_reason(client, acme):
    payload, _ = text_body("100000000099")
    deliver(client, acme, payload)
    event = WebhookEvent.objects.get()
    assert event.state == WebhookState.QUARANTINED
    assert "100000000099 is not connected" in event.reason
    assert event.processed_at is not None
    assert nothing_stored()


def test_it_routes_only_the_verified_apps_changes_in_a_mixed_body(client, acme, bravo):
    """One body, two changes: the one for the signing app's number lands, the other is
    quarantined; the event records both outcomes."""
    own, foreign = text("mine"), text("not mine", from_="15550009999")
    payload = notification(entry(inbound_change(acme, own), inbound_change(bravo, foreign)))
    deliver(client, acme, payload)
    event = WebhookEvent.objects.get()
    assert event.state == WebhookState.QUARANTINED
    assert "changes[1]" in event.reason
    assert only_message(acme).wamid == own["id"]
    assert nothing_stored(bravo.tenant)


def test_it_lands_every_entry_change_message_and_status_of_a_batch_for_both_tenants(
    client, acme, bravo
):
    # One Meta app (acme's) serving three numbers in two tenants: one signed body names them all.
    acme_second = connect_extra_number(acme, "100000000003", app_of=acme)
    bravo_shared = connect_extra_number(bravo, "100000000004", app_of=acme)
    sent_a = outbound(acme)
    sent_b = outbound(bravo, to="15557770001")
    sent_b.conversation.number = bravo_shared
    with tenant_scope(bravo.tenant):
        sent_b.conversation.save()

    a1, a2 = text("a1", from_="15551110001"), text("a2", from_="15551110002")
    a3 = text("a3 second number", from_="15551110001")
    b1, b2 = text("b1", from_="15557770001"), text("b2", from_="15557770002")
    payload = notification(
        entry(
            inbound_change(acme, a1, a2),
            messages_change(acme, statuses=[status(sent_a.wamid, "delivered")]),
            waba_id="200000000001",
        ),
        entry(
            inbound_change(acme_second, a3),
            messages_change(
                bravo_shared,
                contacts=[contact("15557770001"), contact("15557770002")],
                messages=[b1, b2],
                statuses=[status(sent_b.wamid, "sent"), status(sent_b.wamid, "read")],
                errors=[meta_error(130429, "Rate limit hit", "Too many messages")],
            ),
            waba_id="200000000004",
        ),
    )
    deliver(client, acme, payload)

    event = WebhookEvent.objects.get()
    assert event.state == WebhookState.PROCESSED, event.reason
    assert event.counts["messages_new"] == 5
    assert event.counts["statuses"] == 3
    assert event.counts["errors"] == 1
    with tenant_scope(acme.tenant):
        assert set(Message.objects.filter(direction="in").values_list("wamid", flat=True)) == {
            a1["id"],
            a2["id"],
            a3["id"],
        }
        assert Conversation.objects.filter(number=acme_second).count() == 1
        assert MetaErrorReport.objects.count() == 0
    with tenant_scope(bravo.tenant):
        assert set(Message.objects.filter(direction="in").values_list("wamid", flat=True)) == {
            b1["id"],
            b2["id"],
        }
        assert MetaErrorReport.objects.get().number == bravo_shared
    assert reload(sent_a).status == MessageStatus.DELIVERED
    assert reload(sent_b).status == MessageStatus.READ


def test_it_never_applies_a_status_to_another_tenants_message(client, acme, bravo):
    sent = outbound(acme)
    deliver(client, bravo, status_body(bravo, status(sent.wamid, "read")))
    assert reload(sent).status == MessageStatus.ACCEPTED
    with tenant_scope(bravo.tenant):
        assert StatusEvent.objects.get().wamid == sent.wamid  # kept, for bravo only
    assert counts(acme.tenant)["StatusEvent"] == 0


# --- Every inbound type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "message", "expected"),
    every_inbound_type(),
    ids=[label for label, _, _ in every_inbound_type()],
)
def test_it_stores_every_inbound_type_with_content_preview_and_media(
    client, acme, label, message, expected
):
    deliver(client, acme, notification(entry(inbound_change(acme, message))))
    assert WebhookEvent.objects.get().state == WebhookState.PROCESSED
    stored = only_message(acme)
    assert stored.direction == Direction.INBOUND
    assert stored.status == MessageStatus.RECEIVED
    assert stored.type == expected["type"]
    assert stored.wamid == message["id"]
    assert stored.sent_at == datetime.fromtimestamp(BASE_TS, tz=UTC)
    assert expected["preview"] in stored.text
    assert stored.conversation.last_message_preview == stored.text[:200]
    raw_content = message.get(message["type"])
    if message["type"] == "contacts":
        assert stored.content["contacts"] == raw_content
    elif raw_content is not None:
        for key, value in raw_content.items():
            assert stored.content[key] == value
    if "media" in expected:
        media_id, mime = expected["media"]
        assert stored.is_media
        assert stored.content["id"] == media_id
        assert stored.content["mime_type"] == mime
        assert stored.content["sha256"] == raw_content["sha256"]
        if "caption" in raw_content:
            assert stored.content["caption"] == raw_content["caption"]
    if "context" in expected:
        assert stored.context_wamid == expected["context"]
    assert stored.forwarded is expected.get("forwarded", False)
    assert stored.frequently_forwarded is expected.get("frequently_forwarded", False)
    if "referral" in expected:
        assert stored.referral["source_id"] == expected["referral"]
    if "error_code" in expected:
        assert stored.error_code == expected["error_code"]
        assert stored.error_details
        assert stored.content["_errors"][0]["code"] == expected["error_code"]


def test_it_identifies_a_contact_by_user_id_when_the_phone_number_is_hidden(client, acme):
    hidden = text("no phone", from_="")
    hidden.pop("from")
    hidden["from_user_id"] = "US.13491208655302741918"
    change = messages_change(
        acme,
        contacts=[{"profile": {"name": "Hidden"}, "user_id": "US.13491208655302741918"}],
        messages=[hidden],
    )
    deliver(client, acme, notification(entry(change)))
    later = text("now with phone", from_="15559990000")
    later["from_user_id"] = "US.13491208655302741918"
    change = messages_change(
        acme,
        contacts=[contact("15559990000", "Hidden", user_id="US.13491208655302741918")],
        messages=[later],
    )
    deliver(client, acme, notification(entry(change)))
    with tenant_scope(acme.tenant):
        person = Contact.objects.get()
        assert (person.user_id, person.wa_id) == ("US.13491208655302741918", "15559990000")
        assert Conversation.objects.get().messages.count() == 2


def test_it_stores_script_in_text_and_profile_name_verbatim(client, acme):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    payload, _ = text_body(acme, evil, name=evil)
    deliver(client, acme, payload)
    stored = only_message(acme)
    assert stored.content["body"] == evil
    assert stored.text == " ".join(evil.split())
    assert stored.conversation.contact.profile_name == evil


def test_it_renders_script_escaped_in_the_conversation_page(client, acme):
    evil = "<script>alert('pwned')</script>"
    payload, _ = text_body(acme, evil, name=evil)
    deliver(client, acme, payload)
    stored = only_message(acme)
    url = f"/inbox/c/{stored.conversation_id}/"
    try:
        resolve(url)
    except (Resolver404, NoReverseMatch):
        pytest.skip("the conversation page (/inbox/c/<id>/) is not built yet (views engineer)")
    page = Client()
    page.force_login(acme.owner)
    response = page.get(url)
    assert response.status_code == 200
    assert b"<script>alert(" not in response.content
    assert b"&lt;script&gt;alert(" in response.content


# --- Statuses ---------------------------------------------------------------------------------


def test_it_ends_on_read_whatever_the_order_and_duplicates_of_statuses(client, acme):
    sent = outbound(acme)
    for value in ("read", "delivered", "sent", "read", "delivered", "sent"):
        deliver(client, acme, status_body(acme, status(sent.wamid, value)))
    assert reload(sent).status == MessageStatus.READ
    with tenant_scope(acme.tenant):
        assert sorted(StatusEvent.objects.values_list("status", flat=True)) == [
            "delivered",
            "read",
            "sent",
        ]


def test_it_applies_out_of_order_statuses_inside_one_body(client, acme):
    sent = outbound(acme)
    body = status_body(
        acme,
        status(sent.wamid, "read"),
        status(sent.wamid, "sent"),
        status(sent.wamid, "delivered"),
        status(sent.wamid, "read"),
    )
    deliver(client, acme, body)
    assert reload(sent).status == MessageStatus.READ


def test_it_marks_failed_after_sent_with_code_title_and_details(client, acme):
    sent = outbound(acme)
    deliver(client, acme, status_body(acme, status(sent.wamid, "sent")))
    error = meta_error(131049, "Not delivered for ecosystem", "Healthy ecosystem engagement")
    deliver(client, acme, status_body(acme, status(sent.wamid, "failed", errors=[error])))
    failed = reload(sent)
    assert failed.status == MessageStatus.FAILED
    assert (failed.error_code, failed.error_title, failed.error_details) == (
        131049,
        "Not delivered for ecosystem",
        "Healthy ecosystem engagement",
    )
    # A late `sent` duplicate does not hide the failure.
    deliver(client, acme, status_body(acme, status(sent.wamid, "sent", ts=BASE_TS + 500)))
    assert reload(sent).status == MessageStatus.FAILED


def test_it_records_a_failure_after_delivered_without_moving_the_status_back(client, acme):
    sent = outbound(acme)
    deliver(client, acme, status_body(acme, status(sent.wamid, "delivered")))
    error = meta_error(131026, "Message undeliverable", "Receiver is incapable")
    deliver(client, acme, status_body(acme, status(sent.wamid, "failed", errors=[error])))
    message = reload(sent)
    assert message.status == MessageStatus.DELIVERED
    assert message.error_code == 131026
    assert message.error_details == "Receiver is incapable"


def failure_events(message) -> list:
    from apps.audit.models import AuditEvent

    with unscoped("test reads the log"):
        return list(
            AuditEvent.objects.filter(action="send.failed", object_id=str(message.pk)).order_by(
                "seq"
            )
        )


def test_it_audits_metas_asynchronous_failure_once_however_often_it_arrives(client, acme):
    sent = outbound(acme)
    error = meta_error(131026, "Message undeliverable", "Receiver is incapable")
    for _ in range(3):
        deliver(client, acme, status_body(acme, status(sent.wamid, "failed", errors=[error])))
    [event] = failure_events(sent)
    assert (event.actor_type, event.data["code"]) == ("meta", 131026)
    assert event.data["reported_by"] == "status webhook"
    assert event.tenant_id == acme.tenant.pk


def test_the_one_by_one_status_path_audits_the_failure_once_too(acme):
    from apps.conversations.outbound.statuses import update_message_status

    sent = outbound(acme)
    with tenant_scope(acme.tenant):
        for _ in range(2):
            update_message_status(
                Message.objects.filter(pk=sent.pk),
                MessageStatus.FAILED,
                errors=[(131049, "Not delivered for ecosystem", "")],
                pricing=None,
            )
    [event] = failure_events(sent)
    assert event.data["code"] == 131049


def test_it_keeps_a_status_for_an_unknown_wamid_and_applies_it_when_the_message_appears(
    client, acme
):
    wamid = new_wamid("LATE")
    deliver(
        client,
        acme,
        status_body(
            acme, status(wamid, "delivered", pricing=PRICING_MARKETING), status(wamid, "sent")
        ),
    )
    assert WebhookEvent.objects.get().state == WebhookState.PROCESSED
    with tenant_scope(acme.tenant):
        assert StatusEvent.objects.filter(wamid=wamid).count() == 2
        assert Message.objects.count() == 0
    message = outbound(acme, wamid)
    with tenant_scope(acme.tenant):
        apply_pending_statuses(message)
    message = reload(message)
    assert message.status == MessageStatus.DELIVERED
    assert message.pricing == PRICING_MARKETING


def test_it_stores_pricing_once_per_message(client, acme):
    sent = outbound(acme)
    deliver(client, acme, status_body(acme, status(sent.wamid, "sent", pricing=PRICING_SERVICE)))
    deliver(
        client, acme, status_body(acme, status(sent.wamid, "delivered", pricing=PRICING_MARKETING))
    )
    message = reload(sent)
    assert message.pricing == PRICING_SERVICE
    assert message.status == MessageStatus.DELIVERED


def test_it_ignores_unknown_status_values_without_failing_the_body(client, acme):
    sent = outbound(acme)
    deliver(
        client,
        acme,
        status_body(acme, status(sent.wamid, "deleted"), status(sent.wamid, "delivered")),
    )
    assert WebhookEvent.objects.get().state == WebhookState.PROCESSED
    assert reload(sent).status == MessageStatus.DELIVERED


# --- Value-level errors -----------------------------------------------------------------------


def test_it_records_value_level_errors_once_per_body_even_on_replay(client, acme):
    change = messages_change(
        acme,
        errors=[
            meta_error(130429, "Rate limit hit", "Too many messages"),
            meta_error(131000, "Something went wrong", "Unsupported webhook payload"),
        ],
    )
    body = encode(notification(entry(change)))
    deliver(client, acme, body)
    deliver(client, acme, body)  # Meta's duplicate delivery of the same body
    WebhookEvent.objects.update(state=WebhookState.PENDING)
    drain_journal()
    with tenant_scope(acme.tenant):
        reports = list(MetaErrorReport.objects.order_by("code"))
    assert [(r.code, r.details) for r in reports] == [
        (130429, "Too many messages"),
        (131000, "Unsupported webhook payload"),
    ]
    # A new body reporting errors again is a new occurrence: both are recorded again.
    change["value"]["errors"][0]["error_data"]["details"] = "Too many messages again"
    deliver(client, acme, notification(entry(change)))
    assert counts(acme.tenant)["MetaErrorReport"] == 4


# --- Idempotency ------------------------------------------------------------------------------


def test_it_stores_one_message_for_the_same_body_posted_five_times(client, acme):
    payload, wamid = text_body(acme, "Hello once")
    body = encode(payload)
    for _ in range(5):
        response = post_signed(client, body, acme.credentials.app_secret)
        assert response.status_code == 200
    drain_journal()
    assert WebhookEvent.objects.filter(state=WebhookState.PROCESSED).count() == 5
    assert counts(acme.tenant) == {
        "Contact": 1,
        "Conversation": 1,
        "Message": 1,
        "StatusEvent": 0,
        "MetaErrorReport": 0,
    }
    message = only_message(acme)
    assert message.wamid == wamid
    assert message.conversation.unread_count == 1


@pytest.mark.django_db(transaction=True)
def test_it_stores_one_message_for_concurrent_duplicates(acme):
    payload, _ = text_body(acme, "Hello concurrently")
    body = encode(payload)
    sent = outbound(acme)
    statuses = encode(
        status_body(acme, status(sent.wamid, "delivered"), status(sent.wamid, "read"))
    )
    start = threading.Barrier(6)
    errors: list[BaseException] = []
    # Test SQLite is an in-memory shared-cache database whose table locks ignore the busy
    # timeout: there the threads take turns (production SQLite serialises writers anyway).
    # On PostgreSQL they really race.
    turns = threading.Lock() if connection.vendor == "sqlite" else contextlib.nullcontext()

    def post_and_drain(data: bytes):
        try:
            start.wait(timeout=10)
            with turns:
                response = post_signed(Client(), data, acme.credentials.app_secret)
            assert response.status_code == 200
            with turns:
                drain_journal()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=post_and_drain, args=(body if i % 2 else statuses,))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    drain_journal()
    assert WebhookEvent.objects.exclude(state=WebhookState.PROCESSED).count() == 0
    assert WebhookEvent.objects.count() == 6
    tally = counts(acme.tenant)
    assert tally["Message"] == 2  # the outbound one and one inbound
    assert tally["StatusEvent"] == 2
    assert only_message_in(acme).conversation.unread_count == 1
    assert reload(sent).status == MessageStatus.READ


def only_message_in(world) -> Message:
    with tenant_scope(world.tenant):
        return Message.objects.select_related("conversation").get(direction=Direction.INBOUND)


def _snapshot() -> dict:
    with unscoped("test: snapshot every tenant's rows"):
        return {
            model.__name__: sorted(
                (tuple(sorted(row.items())) for row in model.objects.values()), key=repr
            )
            for model in INBOX_MODELS
        }


def test_it_changes_nothing_when_the_whole_journal_is_replayed(client, acme, bravo):
    sent = outbound(acme)
    outbound(bravo, sent.wamid)  # same wamid in another tenant must stay apart
    for message in every_inbound_type():
        deliver(client, acme, notification(entry(inbound_change(acme, message[1]))))
    deliver(
        client,
        acme,
        status_body(
            acme,
            status(sent.wamid, "sent", pricing=PRICING_SERVICE),
            status(sent.wamid, "failed", errors=[meta_error(131026, "Undeliverable", "x")]),
            status(new_wamid("UNKNOWN"), "delivered"),
        ),
    )
    deliver(
        client,
        acme,
        notification(
            entry(messages_change(acme, errors=[meta_error(130429, "Rate limit hit", "slow down")]))
        ),
    )
    deliver(client, bravo, text_body(bravo, "bravo's")[0])
    before = _snapshot()
    assert sum(len(rows) for rows in before.values()) > 30

    WebhookEvent.objects.update(state=WebhookState.PENDING, processed_at=None)
    drain_journal()
    assert WebhookEvent.objects.exclude(state=WebhookState.PROCESSED).count() == 0
    assert _snapshot() == before
