"""django-axes lockout: per account and per client address, robust to X-Forwarded-For rotation
(security test plan G4)."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from tests.conftest import PASSWORD

LOGIN_URL = "/accounts/login/"
PROXY = "10.0.0.2"


@pytest.fixture
def behind_one_proxy(settings):
    settings.KLAROS_TRUSTED_PROXY_COUNT = 1
    return settings


def attempt(client: Client, email: str, password: str, *, client_ip: str, spoofed: str = ""):
    xff = f"{spoofed}, {client_ip}" if spoofed else client_ip
    return client.post(
        LOGIN_URL,
        {"username": email, "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=xff,
    )


def test_it_locks_an_account_after_the_failure_limit(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    client = Client()

    statuses = [
        attempt(client, "alice@acme.test", f"wrong-{i}", client_ip="203.0.113.9").status_code
        for i in range(limit)
    ]
    locked = attempt(client, "alice@acme.test", PASSWORD, client_ip="203.0.113.9")

    assert statuses == [200] * (limit - 1) + [429]
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session


def test_it_still_locks_when_every_attempt_rotates_x_forwarded_for(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT

    for i in range(limit):
        attempt(
            Client(),
            "alice@acme.test",
            f"wrong-{i}",
            client_ip=f"198.51.100.{i + 1}",  # even the proxy-seen address changes
            spoofed=f"192.0.2.{i + 1}",
        )
    response = attempt(Client(), "alice@acme.test", PASSWORD, client_ip="198.51.100.200")

    assert response.status_code == 429


def test_it_still_locks_when_every_attempt_changes_the_email_case(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    variants = ["alice@acme.test", "ALICE@acme.test", "Alice@Acme.test", "aLiCe@ACME.TEST"]

    for i in range(limit):
        attempt(
            Client(), variants[i % len(variants)], f"wrong-{i}", client_ip=f"198.51.100.{i + 1}"
        )
    response = attempt(Client(), "alice@acme.test", PASSWORD, client_ip="198.51.100.200")

    assert response.status_code == 429


def test_it_locks_a_client_address_guessing_many_accounts(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT

    for i in range(limit):
        attempt(
            Client(),
            f"guess{i}@acme.test",
            "wrong",
            client_ip="203.0.113.9",
            spoofed=f"192.0.2.{i}",
        )

    from_attacker = attempt(Client(), "alice@acme.test", PASSWORD, client_ip="203.0.113.9")
    from_elsewhere = attempt(Client(), "alice@acme.test", PASSWORD, client_ip="198.51.100.7")

    assert from_attacker.status_code == 429
    assert from_elsewhere.status_code == 302


def test_spoofed_addresses_do_not_lock_out_the_real_client(acme, behind_one_proxy):
    """The attacker's spoofed X-Forwarded-For prefix names the victim's address; only the
    address the proxy saw is counted, so the victim can still log in."""
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    victim_ip = "198.51.100.7"

    for i in range(limit):
        attempt(
            Client(), f"guess{i}@acme.test", "wrong", client_ip="203.0.113.9", spoofed=victim_ip
        )

    assert attempt(Client(), "alice@acme.test", PASSWORD, client_ip=victim_ip).status_code == 302


def test_it_shows_the_styled_lockout_page(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    for i in range(limit - 1):
        attempt(Client(), "alice@acme.test", f"wrong-{i}", client_ip="203.0.113.9")

    response = attempt(Client(), "alice@acme.test", "wrong-last", client_ip="203.0.113.9")

    assert response.status_code == 429
    assert "registration/locked_out.html" in [t.name for t in response.templates]
    body = response.content.decode()
    assert "Too many failed logins" in body
    assert "klaros/klaros.css" in body
    assert "Content-Security-Policy" in response.headers


def test_a_successful_login_below_the_limit_resets_the_account_counter(acme, behind_one_proxy):
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    for i in range(limit - 1):
        attempt(Client(), "alice@acme.test", f"wrong-{i}", client_ip="203.0.113.9")
    assert (
        attempt(Client(), "alice@acme.test", PASSWORD, client_ip="203.0.113.9").status_code == 302
    )

    response = attempt(Client(), "alice@acme.test", "wrong-again", client_ip="203.0.113.9")

    assert response.status_code == 200


def real_http_attempt(base_url: str, email: str, password: str, xff: str) -> int:
    """One login over real HTTP: fetch the form (CSRF cookie and token), then post it."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect())
    headers = {"X-Forwarded-For": xff}
    # base_url is the live server's own http:// address, never user input.
    form_request = urllib.request.Request(base_url + LOGIN_URL, headers=headers)  # noqa: S310
    page = opener.open(form_request, timeout=30)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.read()).group(1)
    body = urllib.parse.urlencode(
        {"username": email, "password": password, "csrfmiddlewaretoken": token.decode()}
    ).encode()
    try:
        post = urllib.request.Request(base_url + LOGIN_URL, data=body, headers=headers)  # noqa: S310
        return opener.open(post, timeout=30).status
    except urllib.error.HTTPError as error:
        return error.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_parallel_bad_logins_rotating_x_forwarded_for_end_in_a_lockout(
    acme, live_server, behind_one_proxy
):
    """G4: 20 parallel bad logins over HTTP, each from a different forwarded address.

    Truly parallel on PostgreSQL. The live server's in-memory SQLite test database is one
    connection shared by every server thread (Django's test harness, not how Klaros runs on
    an SQLite file), so there the attempts go one at a time.
    """
    limit = behind_one_proxy.AXES_FAILURE_LIMIT
    workers = 1 if connection.vendor == "sqlite" else 10

    with ThreadPoolExecutor(max_workers=workers) as pool:
        statuses = list(
            pool.map(
                lambda i: real_http_attempt(
                    live_server.url, "alice@acme.test", f"wrong-{i}", f"192.0.2.{i}, 198.51.100.{i}"
                ),
                range(20),
            )
        )
    final = real_http_attempt(live_server.url, "alice@acme.test", PASSWORD, "198.51.100.250")

    assert statuses.count(429) >= 20 - limit
    assert final == 429
