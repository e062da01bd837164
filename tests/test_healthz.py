"""`/healthz`: 200 `ok` while the database answers, 503 when it does not; never redirected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import OperationalError, connection
from django.test import Client

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_it_answers_ok_when_the_database_answers():
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response.content == b"ok\n"
    assert response["Content-Type"].startswith("text/plain")
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_it_answers_503_when_the_database_raises(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", unreachable)

    response = Client().get("/healthz")

    assert response.status_code == 503
    assert b"ok" not in response.content


@pytest.mark.django_db
def test_it_is_exempt_from_the_https_redirect(settings):
    settings.SECURE_SSL_REDIRECT = True

    assert Client().get("/healthz").status_code == 200
    assert Client().get("/accounts/login/").status_code == 301


@pytest.mark.django_db
def test_it_answers_get_only():
    assert Client().post("/healthz").status_code == 405


@pytest.mark.django_db
def test_it_needs_no_login():
    response = Client().get("/healthz", follow=False)

    assert response.status_code == 200


UNREACHABLE_PROBE = textwrap.dedent(
    """
    import django
    django.setup()
    from django.test import Client
    response = Client().get("/healthz")
    print("STATUS", response.status_code, response.content.decode().strip())
    """
)


def test_it_answers_503_against_a_closed_postgresql_port(tmp_path):
    """A real, unreachable PostgreSQL (nothing listens on port 1), not a monkeypatch."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "klaros.settings",
        "KLAROS_ENV_FILE": "",
        "KLAROS_VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "True",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/x",
        "PGCONNECT_TIMEOUT": "3",
    }

    result = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_PROBE],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "STATUS 503 database unreachable" in result.stdout
