"""Changing a password: strong validators, and every other session of the member ends
(Chatwoot CVE-2021-3740: a stolen session must not survive a password change)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.tenants.scoping import unscoped
from tests.conftest import PASSWORD

CHANGE_URL = "/accounts/password/change/"
NEW_PASSWORD = "tulip-orbit-canyon-velvet-77"


def logged_in_by_form(email: str, password: str = PASSWORD) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"username": email, "password": password})
    assert response.status_code == 302, "login failed"
    return client


def change(client: Client, old: str, new: str):
    return client.post(
        CHANGE_URL, {"old_password": old, "new_password1": new, "new_password2": new}
    )


@pytest.mark.django_db
def test_it_needs_a_login():
    response = Client().get(CHANGE_URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_changes_the_password(agnes):
    client = logged_in_by_form("agnes@acme.test")

    response = change(client, PASSWORD, NEW_PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == "/accounts/password/change/done/"
    agnes.refresh_from_db()
    assert agnes.check_password(NEW_PASSWORD)
    assert not agnes.check_password(PASSWORD)


def test_it_keeps_this_session_and_ends_the_members_other_sessions(agnes):
    this_browser = logged_in_by_form("agnes@acme.test")
    other_browser = logged_in_by_form("agnes@acme.test")
    assert other_browser.get("/inbox/").status_code == 200

    change(this_browser, PASSWORD, NEW_PASSWORD)

    assert this_browser.get("/inbox/").status_code == 200
    stale = other_browser.get("/inbox/")
    assert stale.status_code == 302
    assert stale["Location"].startswith("/accounts/login/")


def test_it_leaves_other_members_sessions_alone(agnes, alice_client):
    change(logged_in_by_form("agnes@acme.test"), PASSWORD, NEW_PASSWORD)

    assert alice_client.get("/inbox/").status_code == 200


def test_it_refuses_a_wrong_old_password(agnes):
    client = logged_in_by_form("agnes@acme.test")

    response = change(client, "not-the-old-password", NEW_PASSWORD)

    assert response.status_code == 200
    assert "old_password" in response.context["form"].errors
    agnes.refresh_from_db()
    assert agnes.check_password(PASSWORD)


@pytest.mark.parametrize(
    ("new_password", "code"),
    [
        ("Sh0rt-pass!", "password_too_short"),
        ("qwerty123456", "password_too_common"),
        ("48201938475629", "password_entirely_numeric"),
        ("agnes@acme.test", "password_too_similar"),
    ],
)
def test_it_enforces_the_strong_password_validators(agnes, new_password, code):
    client = logged_in_by_form("agnes@acme.test")

    response = change(client, PASSWORD, new_password)

    assert response.status_code == 200
    codes = [e.code for e in response.context["form"].errors.as_data()["new_password2"]]
    assert code in codes
    agnes.refresh_from_db()
    assert agnes.check_password(PASSWORD)


def test_it_asks_for_at_least_twelve_characters(agnes):
    client = logged_in_by_form("agnes@acme.test")

    response = change(client, PASSWORD, "abcdefghij-k")  # 12 characters, not common

    assert response.status_code == 302


def test_it_audits_the_change_without_the_password(agnes):
    change(logged_in_by_form("agnes@acme.test"), PASSWORD, NEW_PASSWORD)

    with unscoped("test"):
        [event] = AuditEvent.objects.filter(action="auth.password_changed")
    assert event.actor_id == str(agnes.pk)
    text = event.canonical().decode()
    assert NEW_PASSWORD not in text
    assert PASSWORD not in text
