"""The conversation list: ordering, badges, filters, search, keyset pagination, polling,
the errors panel, the simulate-customer form, and tenant isolation."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from apps.conversations.inbox.listing import PAGE_SIZE, decode_cursor, encode_cursor
from apps.conversations.models import MetaErrorReport
from apps.tenants.scoping import tenant_scope
from apps.tenants.services import NumberCredentials, connect_number
from apps.whatsapp.simulator import SimNumber
from apps.whatsapp.testing import running_simulator, running_webhook_receiver
from tests.conftest import logged_in_client

from .factories import BASE_TIME, make_conversation

INBOX = "/inbox/"
ROWS = "/inbox/list/"


def row_ids(html: str) -> list[str]:
    return re.findall(r'data-conversation-id="([0-9a-f-]+)"', html)


def next_link(html: str) -> str | None:
    match = re.search(r'class="pager-next" href="([^"]+)"', html)
    return match.group(1).replace("&amp;", "&") if match else None


def second_number(world, pnid="100000000011"):
    return connect_number(
        world.tenant,
        phone_number_id=pnid,
        waba_id="200000000001",
        display_phone_number="+1 555 0011",
        app_id=world.app_id,
        credentials=NumberCredentials("EAA-second-token", "unused-secret", "unused-verify"),
        actor="test",
    )


def test_it_redirects_anonymous_visitors_to_login(db):
    for url in (INBOX, ROWS, "/inbox/errors/"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_it_asks_htmx_to_reload_the_login_page_when_a_poll_has_no_session(db):
    response = Client().get(ROWS, HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    assert response["HX-Redirect"] == reverse("login")


def test_it_lists_newest_first_with_ties_broken_by_id(acme, alice_client):
    old = make_conversation(acme, name="Old", last_message_at=BASE_TIME)
    new = make_conversation(acme, name="New", last_message_at=BASE_TIME + timedelta(hours=1))
    tie_a = make_conversation(acme, name="TieA", last_message_at=BASE_TIME + timedelta(minutes=5))
    tie_b = make_conversation(acme, name="TieB", last_message_at=BASE_TIME + timedelta(minutes=5))
    ties = sorted([tie_a, tie_b], key=lambda c: c.pk, reverse=True)
    response = alice_client.get(INBOX)
    assert response.status_code == 200
    assert row_ids(response.content.decode()) == [str(c.pk) for c in [new, *ties, old]]


def test_it_shows_the_unread_badge_preview_phone_and_time(acme, alice_client):
    make_conversation(
        acme, name="Dana Levi", wa_id="15551234567", unread_count=3, preview="Is my order shipped?"
    )
    make_conversation(acme, name="Quiet Quentin", unread_count=0)
    html = alice_client.get(INBOX).content.decode()
    assert 'class="badge" title="3 unread">3<' in html
    assert html.count('class="badge"') == 1
    assert "Dana Levi" in html and "+15551234567" in html
    assert "Is my order shipped?" in html
    assert 'datetime="2026-01-01T09:00:00+00:00"' in html


def test_it_shows_open_conversations_by_default_and_all_or_closed_on_request(acme, alice_client):
    opened = make_conversation(acme, name="Opened")
    closed = make_conversation(acme, name="Closed", status="closed")
    assert row_ids(alice_client.get(INBOX).content.decode()) == [str(opened.pk)]
    assert row_ids(alice_client.get(INBOX, {"status": "closed"}).content.decode()) == [
        str(closed.pk)
    ]
    assert set(row_ids(alice_client.get(INBOX, {"status": "all"}).content.decode())) == {
        str(opened.pk),
        str(closed.pk),
    }
    # Nonsense falls back to the default instead of erroring.
    assert row_ids(alice_client.get(INBOX, {"status": "x"}).content.decode()) == [str(opened.pk)]


def test_it_filters_by_the_tenants_number(acme, bravo, alice_client):
    other = second_number(acme)
    on_main = make_conversation(acme, name="Main")
    on_other = make_conversation(acme, name="Other", number=other)
    html = alice_client.get(INBOX).content.decode()
    assert set(row_ids(html)) == {str(on_main.pk), str(on_other.pk)}
    assert "+1 555 0011" in html  # the number select lists the tenant's numbers
    assert bravo.number.display_phone_number not in html
    filtered = alice_client.get(INBOX, {"number": str(other.pk)}).content.decode()
    assert row_ids(filtered) == [str(on_other.pk)]
    # Another tenant's number id is not a filter of this tenant: ignored, not an oracle.
    foreign = alice_client.get(INBOX, {"number": str(bravo.number.pk)}).content.decode()
    assert set(row_ids(foreign)) == {str(on_main.pk), str(on_other.pk)}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("dana", {"Dana Levi"}),
        ("LEVI", {"Dana Levi"}),
        ("1555123", {"Dana Levi"}),
        ("+1 555 123", {"Dana Levi"}),
        ("+49 (151) 2345-678", {"Jonas"}),
        ("  jonas  ", {"Jonas"}),
        ("nobody", set()),
    ],
)
def test_it_searches_by_name_or_number(acme, alice_client, query, expected):
    make_conversation(acme, name="Dana Levi", wa_id="15551234567")
    make_conversation(acme, name="Jonas", wa_id="491512345678")
    html = alice_client.get(INBOX, {"q": query}).content.decode()
    found = {name for name in ("Dana Levi", "Jonas") if f'conv-name">{name}<' in html}
    assert found == expected


def test_it_pages_by_keyset_without_gaps_or_duplicates_across_equal_timestamps(acme, alice_client):
    # 3 pages; a whole block shares one timestamp across the page boundaries.
    conversations = [
        make_conversation(
            acme,
            name=f"C{i}",
            last_message_at=BASE_TIME + timedelta(minutes=0 if 30 <= i < 90 else i),
        )
        for i in range(120)
    ]
    expected = [
        str(c.pk)
        for c in sorted(conversations, key=lambda c: (c.last_message_at, c.pk), reverse=True)
    ]
    seen, url, pages = [], INBOX, 0
    while url:
        html = alice_client.get(url).content.decode()
        ids = row_ids(html)
        assert len(ids) <= PAGE_SIZE
        seen.extend(ids)
        url = next_link(html)
        pages += 1
    assert pages == 3
    assert seen == expected


def test_it_keeps_filters_in_the_next_page_and_the_polling_url(acme, alice_client):
    for i in range(PAGE_SIZE + 1):
        make_conversation(acme, name=f"Dana {i}", last_message_at=BASE_TIME + timedelta(i))
    html = alice_client.get(INBOX, {"q": "dana", "status": "all"}).content.decode()
    link = next_link(html)
    assert "q=dana" in link and "status=all" in link and "cursor=" in link
    assert re.search(r'hx-get="/inbox/list/\?status=all&amp;q=dana" hx-trigger="every 5s"', html)
    page2 = alice_client.get(link).content.decode()
    assert len(row_ids(page2)) == 1
    assert re.search(r'hx-get="/inbox/list/\?status=all&amp;q=dana&amp;cursor=[\w-]+"', page2)


def test_it_treats_the_cursor_as_opaque_and_ignores_a_forged_one(acme, alice_client):
    conversation = make_conversation(acme)
    cursor = encode_cursor(conversation.last_message_at, conversation.pk)
    assert str(conversation.pk) not in cursor and "2026" not in cursor
    assert decode_cursor(cursor) == (conversation.last_message_at, conversation.pk)
    for forged in ("not-base64!", "W10", "x" * 500, "WyJ4IiwgIjEiXQ"):
        assert decode_cursor(forged) is None
        assert alice_client.get(INBOX, {"cursor": forged}).status_code == 200


def test_it_serves_the_rows_fragment_alone_for_polling(acme, alice_client):
    conversation = make_conversation(acme, name="Dana Levi", unread_count=1)
    response = alice_client.get(ROWS, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert row_ids(html) == [str(conversation.pk)]
    assert "<html" not in html and "conversation-rows" not in html


def test_it_lists_a_page_of_50_in_a_fixed_number_of_queries(acme, agnes, django_assert_num_queries):
    for i in range(PAGE_SIZE + 5):
        make_conversation(acme, name=f"C{i}", last_message_at=BASE_TIME + timedelta(minutes=i))
    client = logged_in_client(agnes)
    client.get(INBOX)  # warm caches (content types, session)
    # session, user, memberships (middleware), the numbers, one page of conversations with
    # contact and number joined: nothing per row.
    with django_assert_num_queries(5):
        response = client.get(INBOX)
    assert len(row_ids(response.content.decode())) == PAGE_SIZE
    with django_assert_num_queries(5):
        client.get(ROWS)


def test_it_never_lists_another_tenants_conversations(acme, bravo, alice_client, bob_client):
    make_conversation(
        acme, name="Canary-Acme-Customer", wa_id="15550000001", preview="acme-preview-canary"
    )
    make_conversation(bravo, name="Bravo Customer", wa_id="15550000002")
    for url in (INBOX, ROWS, f"{INBOX}?status=all"):
        html = bob_client.get(url).content.decode()
        assert "Canary-Acme-Customer" not in html
        assert "acme-preview-canary" not in html
        assert "15550000001" not in html
    for query in ("Canary", "15550000001"):  # the search box echoes the query itself
        html = bob_client.get(INBOX, {"q": query}).content.decode()
        assert row_ids(html) == [] and "acme-preview-canary" not in html
    assert "Bravo Customer" in bob_client.get(INBOX).content.decode()
    assert "Bravo Customer" not in alice_client.get(INBOX).content.decode()


def _error_report(world, title, **fields):
    with tenant_scope(world.tenant):
        return MetaErrorReport.objects.create(
            tenant=world.tenant, number=world.number, fingerprint=title, title=title, **fields
        )


def test_it_shows_metas_error_reports_to_admins_only(acme, bravo, agnes, alice_client):
    _error_report(
        acme, "Rate limit hit <script>alert(1)</script>", code=130429, details="Too many messages"
    )
    _error_report(bravo, "Bravo-error-canary")
    html = alice_client.get(INBOX).content.decode()
    assert "Errors reported by Meta" in html
    assert "Rate limit hit &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "130429" in html and "Bravo-error-canary" not in html
    page = alice_client.get("/inbox/errors/")
    assert page.status_code == 200 and "Too many messages" in page.content.decode()

    agent = logged_in_client(agnes)
    agent_html = agent.get(INBOX).content.decode()
    assert "Errors reported by Meta" not in agent_html and "Rate limit hit" not in agent_html
    assert agent.get("/inbox/errors/").status_code == 403


def test_it_tells_admins_when_meta_reported_nothing(acme, alice_client):
    assert "Meta has reported no errors" in alice_client.get(INBOX).content.decode()


# ---- simulate customer (DEBUG demo) ------------------------------------------------------


def test_it_hides_the_simulator_form_without_debug_or_url(acme, alice_client, settings):
    settings.DEBUG = True
    settings.KLAROS_SIMULATOR_URL = ""
    assert "Simulate a customer" not in alice_client.get(INBOX).content.decode()
    assert alice_client.post("/inbox/simulate/", {}).status_code == 404
    settings.DEBUG = False
    settings.KLAROS_SIMULATOR_URL = "http://127.0.0.1:1"
    assert "Simulate a customer" not in alice_client.get(INBOX).content.decode()
    assert alice_client.post("/inbox/simulate/", {}).status_code == 404


def _acme_sim_number(world) -> SimNumber:
    return SimNumber(
        phone_number_id=world.number.phone_number_id,
        waba_id="200000000001",
        token=world.credentials.access_token,
        app_secret=world.credentials.app_secret,
        display_phone_number="15550001",
    )


def test_it_makes_the_simulated_customer_write_through_the_real_simulator(
    acme, alice_client, settings
):
    secret = acme.credentials.app_secret
    with (
        running_webhook_receiver([secret]) as hooks,
        running_simulator(hooks.url, numbers=[_acme_sim_number(acme)]) as sim,
    ):
        settings.DEBUG = True
        settings.KLAROS_SIMULATOR_URL = sim.url
        html = alice_client.get(INBOX).content.decode()
        assert "Simulate a customer" in html
        response = alice_client.post(
            "/inbox/simulate/",
            {
                "number": str(acme.number.pk),
                "phone": "+1 555 765 4321",
                "name": "Sim Sam",
                "text": "Hello from the simulator",
            },
            follow=True,
        )
        posts = hooks.wait_for(lambda posts: len(posts) >= 1)
    assert response.status_code == 200
    assert "The simulated customer +15557654321 wrote to" in response.content.decode()
    body = posts[0].body.decode()
    assert posts[0].signature_valid
    assert '"body":"Hello from the simulator"' in body
    assert '"from":"15557654321"' in body and acme.number.phone_number_id in body


def test_it_reports_simulator_errors_plainly(acme, alice_client, settings):
    settings.DEBUG = True
    # Nothing listens on this port: the error is shown, not raised.
    settings.KLAROS_SIMULATOR_URL = "http://127.0.0.1:9"
    response = alice_client.post(
        "/inbox/simulate/",
        {"number": str(acme.number.pk), "phone": "15551234567", "name": "", "text": "hi"},
        follow=True,
    )
    assert "did not answer" in response.content.decode()
    with running_simulator(None, numbers=[]) as sim:  # the simulator does not know the number
        settings.KLAROS_SIMULATOR_URL = sim.url
        response = alice_client.post(
            "/inbox/simulate/",
            {"number": str(acme.number.pk), "phone": "15551234567", "name": "", "text": "hi"},
            follow=True,
        )
    assert "refused the message (HTTP 400)" in response.content.decode()
    assert "unknown phone_number_id" in response.content.decode()


def test_it_refuses_another_tenants_number_in_the_simulator_form(
    acme, bravo, alice_client, settings
):
    settings.DEBUG = True
    settings.KLAROS_SIMULATOR_URL = "http://127.0.0.1:9"
    response = alice_client.post(
        "/inbox/simulate/",
        {"number": str(bravo.number.pk), "phone": "15551234567", "text": "hi"},
        follow=True,
    )
    html = response.content.decode()
    assert "Simulated message not sent" in html and "did not answer" not in html
