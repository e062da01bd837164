"""Logging in at `/accounts/login/` with the email as username, landing on the inbox."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from apps.audit.models import AuditEvent
from apps.tenants.scoping import unscoped
from tests.conftest import PASSWORD

LOGIN_URL = "/accounts/login/"


def audit_events(action: str) -> list[AuditEvent]:
    with unscoped("test"):
        return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_it_logs_an_agent_in_by_email_and_lands_on_the_inbox(agnes):
    client = Client()

    response = client.post(LOGIN_URL, {"username": "agnes@acme.test", "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == "/inbox/"
    inbox = client.get("/inbox/")
    assert inbox.status_code == 200
    assert inbox.wsgi_request.user == agnes
    assert b"Acme" in inbox.content


def test_it_matches_the_email_case_insensitively(agnes):
    client = Client()

    response = client.post(LOGIN_URL, {"username": "  AGNES@Acme.TEST ", "password": PASSWORD})

    assert response.status_code == 302
    assert client.get("/inbox/").wsgi_request.user == agnes


def test_it_refuses_a_wrong_password_with_an_error(agnes):
    client = Client()

    response = client.post(LOGIN_URL, {"username": "agnes@acme.test", "password": "wrong-one"})

    assert response.status_code == 200
    assert b"email and password do not match an account" in response.content
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_it_redirects_an_anonymous_visitor_of_the_inbox_to_the_login_page():
    response = Client().get("/inbox/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/inbox/"


@pytest.mark.django_db
def test_it_serves_the_styled_login_page():
    response = Client().get(LOGIN_URL)

    assert response.status_code == 200
    assert b"klaros/klaros.css" in response.content
    assert b'name="csrfmiddlewaretoken"' in response.content


@pytest.mark.parametrize(
    "next_url",
    ["//evil.com", "https://evil.com/", "///evil.com", "/\\evil.com", "http:evil.com"],
)
def test_it_never_redirects_off_site_after_login(agnes, next_url):
    client = Client()

    page = client.get(LOGIN_URL, {"next": next_url})
    response = client.post(
        LOGIN_URL, {"username": "agnes@acme.test", "password": PASSWORD, "next": next_url}
    )

    assert b"evil.com" not in page.content
    assert response.status_code == 302
    assert response["Location"] == "/inbox/"


def test_it_follows_an_on_site_next_url(agnes):
    response = Client().post(
        LOGIN_URL,
        {"username": "agnes@acme.test", "password": PASSWORD, "next": "/accounts/password/change/"},
    )

    assert response["Location"] == "/accounts/password/change/"


def test_it_sends_an_already_logged_in_member_on_site(alice_client):
    response = alice_client.get(LOGIN_URL, {"next": "//evil.com"})

    assert response.status_code == 302
    assert response["Location"] == "/inbox/"


def test_it_enforces_csrf_on_the_login_post(agnes):
    client = Client(enforce_csrf_checks=True)

    forged = client.post(LOGIN_URL, {"username": "agnes@acme.test", "password": PASSWORD})

    assert forged.status_code == 403
    assert "_auth_user_id" not in client.session

    client.get(LOGIN_URL)
    token = client.cookies["csrftoken"].value
    genuine = client.post(
        LOGIN_URL,
        {"username": "agnes@acme.test", "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert genuine.status_code == 302


def test_it_refuses_a_cross_origin_login_post_even_with_a_token(agnes):
    client = Client(enforce_csrf_checks=True)
    client.get(LOGIN_URL)
    token = client.cookies["csrftoken"].value

    response = client.post(
        LOGIN_URL,
        {"username": "agnes@acme.test", "password": PASSWORD, "csrfmiddlewaretoken": token},
        secure=True,
        HTTP_ORIGIN="https://evil.com",
    )

    assert response.status_code == 403


def test_it_audits_a_login_by_account_id_without_the_email(agnes):
    Client().post(LOGIN_URL, {"username": "agnes@acme.test", "password": PASSWORD})

    [event] = audit_events("auth.login")
    assert event.actor_id == str(agnes.pk)
    assert event.object_id == str(agnes.pk)
    assert "agnes" not in json.dumps(event.data)
    assert "@" not in event.canonical().decode()


def test_it_audits_failed_logins_without_the_typed_email(agnes):
    client = Client()
    client.post(LOGIN_URL, {"username": "agnes@acme.test", "password": "wrong-password-1"})
    client.post(LOGIN_URL, {"username": "nobody@else.test", "password": "wrong-password-2"})

    known, unknown = audit_events("auth.login_failed")
    assert known.object_id == str(agnes.pk)
    assert known.data == {"known_account": True}
    assert unknown.object_id == ""
    assert unknown.data == {"known_account": False}
    for event in (known, unknown):
        text = event.canonical().decode()
        assert "@" not in text
        assert "wrong-password" not in text


@pytest.mark.django_db
def test_it_shows_no_workspace_yet_to_a_user_without_membership():
    get_user_model().objects.create_user("lonely@nowhere.test", PASSWORD)
    client = Client()

    client.post(LOGIN_URL, {"username": "lonely@nowhere.test", "password": PASSWORD})
    response = client.get("/inbox/")

    assert response.status_code == 200
    assert b"No workspace yet" in response.content


def test_it_shows_the_current_tenant_to_a_member(alice_client):
    response = alice_client.get("/inbox/")

    assert b'class="tenant-name">Acme<' in response.content
    assert b"No workspace yet" not in response.content
