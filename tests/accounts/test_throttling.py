"""Which client address and which account a failed login counts against."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.test import RequestFactory

from apps.accounts.throttling import client_ip_behind_proxies, normalised_login_email

BASE_DIR = Path(__file__).resolve().parent.parent.parent
PROXY = "10.0.0.2"


def request_from(xff: str | None, remote_addr: str = PROXY):
    extra = {"REMOTE_ADDR": remote_addr}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return RequestFactory().post("/accounts/login/", **extra)


@pytest.mark.parametrize(
    ("proxies", "xff", "client"),
    [
        (0, "6.6.6.6", PROXY),  # no proxy: the header is client-written, ignore it
        (0, None, PROXY),
        (1, "203.0.113.9", "203.0.113.9"),  # the usual one-proxy header
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # spoofed prefix ignored
        (1, "1.1.1.1, 2.2.2.2,203.0.113.9", "203.0.113.9"),
        (1, "2001:db8::1", "2001:db8::1"),
        (2, "6.6.6.6, 203.0.113.9, 10.0.0.1", "203.0.113.9"),  # two proxies
        (2, "203.0.113.9", PROXY),  # did not come through both proxies
        (1, None, PROXY),  # no header: a direct connection
        (1, "not-an-address", PROXY),
    ],
)
def test_it_takes_the_client_address_the_trusted_proxies_saw(settings, proxies, xff, client):
    settings.KLAROS_TRUSTED_PROXY_COUNT = proxies

    assert client_ip_behind_proxies(request_from(xff)) == client


@pytest.mark.parametrize("typed", ["alice@acme.test", "ALICE@Acme.Test", "  alice@acme.test "])
def test_it_counts_failures_against_the_normalised_email(typed):
    request = request_from(None)

    assert normalised_login_email(request, {"username": typed}) == "alice@acme.test"


def test_it_reads_the_email_from_the_form_when_axes_gives_no_credentials():
    request = RequestFactory().post("/accounts/login/", {"username": "Alice@ACME.test"})

    assert normalised_login_email(request, None) == "alice@acme.test"


AXES_PROBE = textwrap.dedent(
    """
    import django
    django.setup()
    from axes.helpers import get_client_ip_address
    from django.test import RequestFactory
    request = RequestFactory().post(
        "/accounts/login/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9"
    )
    print("CLIENT", get_client_ip_address(request))
    """
)


@pytest.mark.parametrize(("proxies", "client"), [("1", "203.0.113.9"), ("0", "10.0.0.2")])
def test_axes_resolves_the_address_from_the_environment_setting(tmp_path, proxies, client):
    """The real chain: environment -> settings at import -> what django-axes keys on."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "klaros.settings",
        "KLAROS_ENV_FILE": "",
        "KLAROS_VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "True",
        "KLAROS_TRUSTED_PROXY_COUNT": proxies,
    }

    result = subprocess.run(
        [sys.executable, "-c", AXES_PROBE],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert f"CLIENT {client}" in result.stdout
