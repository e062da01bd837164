"""create_tenant, create_member and connect_number: clear errors, no secrets in arguments."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from apps.tenants.models import Membership, Role, Tenant, WhatsAppNumber
from apps.tenants.scoping import unscoped

from .rawsql import read_raw

PASSWORD = "a-long-and-unusual-passphrase-77"
SECRETS = {
    "WHATSAPP_ACCESS_TOKEN": "EAA-command-canary-token",
    "WHATSAPP_APP_SECRET": "command-canary-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "command-canary-verify",
}
NUMBER_ARGS = [
    "--phone-number-id",
    "100000000077",
    "--waba-id",
    "200000000077",
    "--display-phone-number",
    "+1 555 0077",
    "--app-id",
    "300000000077",
]


def run(*args, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def secrets_env(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


# --- create_tenant ---------------------------------------------------------------------------


def test_it_creates_a_tenant(db):
    out = run("create_tenant", "globex", "--name", "Globex Corp")
    assert "Created tenant globex (Globex Corp)" in out
    assert Tenant.objects.get(slug="globex").name == "Globex Corp"


@pytest.mark.parametrize("slug", ["Globex", "-globex", "glo bex", "x" * 51, ""])
def test_it_refuses_a_bad_slug(db, slug):
    with pytest.raises(CommandError, match="slug"):
        run("create_tenant", slug, "--name", "Globex")
    assert not Tenant.objects.exists()


def test_it_refuses_a_duplicate_tenant(acme):
    with pytest.raises(CommandError, match=r"(?i)slug.*already exists"):
        run("create_tenant", "acme", "--name", "Acme again")
    assert Tenant.objects.filter(slug="acme").count() == 1


# --- create_member ---------------------------------------------------------------------------


def test_it_creates_a_member_with_a_password_from_stdin(acme, monkeypatch):
    out = run(
        "create_member",
        "acme",
        "Dora@Acme.test",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        monkeypatch=monkeypatch,
    )
    assert "dora@acme.test is now admin of acme" in out
    user = get_user_model().objects.get(email="dora@acme.test")
    assert user.check_password(PASSWORD)
    assert Membership.objects.get(user=user).role == Role.ADMIN


def test_it_adds_an_existing_user_to_another_tenant_without_a_password(acme, bravo, monkeypatch):
    out = run(
        "create_member",
        "bravo",
        "alice@acme.test",
        "--password-stdin",
        stdin="",
        monkeypatch=monkeypatch,
    )
    assert "alice@acme.test is now agent of bravo" in out
    assert Membership.objects.filter(user=acme.owner).count() == 2


def test_it_refuses_a_member_of_an_unknown_tenant(db, monkeypatch):
    with pytest.raises(CommandError, match="no tenant with slug 'nope'"):
        run(
            "create_member",
            "nope",
            "x@y.z",
            "--password-stdin",
            stdin=PASSWORD,
            monkeypatch=monkeypatch,
        )


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@b.test", "a b@c.test"])
def test_it_refuses_a_bad_email(acme, monkeypatch, email):
    with pytest.raises(CommandError, match="is not a valid email address"):
        run(
            "create_member",
            "acme",
            email,
            "--password-stdin",
            stdin=PASSWORD,
            monkeypatch=monkeypatch,
        )


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short1", "too short"), ("password1234", "too common"), ("84736251908374", "numeric")],
)
def test_it_refuses_a_weak_password(acme, monkeypatch, password, reason):
    with pytest.raises(CommandError, match=rf"weak password: .*{reason}"):
        run(
            "create_member",
            "acme",
            "dora@acme.test",
            "--password-stdin",
            stdin=password,
            monkeypatch=monkeypatch,
        )
    assert not get_user_model().objects.filter(email="dora@acme.test").exists()


def test_it_refuses_a_password_like_the_email(acme, monkeypatch):
    with pytest.raises(CommandError, match=r"weak password: .*too similar"):
        run(
            "create_member",
            "acme",
            "dorothea.vandersloot@acme.test",
            "--password-stdin",
            stdin="dorothea.vandersloot",
            monkeypatch=monkeypatch,
        )


def test_it_refuses_a_new_member_without_a_password(acme, monkeypatch):
    with pytest.raises(CommandError, match="a new member needs a password"):
        run(
            "create_member",
            "acme",
            "dora@acme.test",
            "--password-stdin",
            stdin="\n",
            monkeypatch=monkeypatch,
        )


def test_it_refuses_a_duplicate_member(acme, monkeypatch):
    with pytest.raises(
        CommandError, match=re.escape("alice@acme.test is already a member of acme")
    ):
        run(
            "create_member",
            "acme",
            "ALICE@acme.test",
            "--password-stdin",
            stdin="",
            monkeypatch=monkeypatch,
        )


def test_it_refuses_an_unknown_role(acme, monkeypatch):
    with pytest.raises(CommandError, match="invalid choice"):
        run(
            "create_member",
            "acme",
            "dora@acme.test",
            "--role",
            "root",
            "--password-stdin",
            stdin=PASSWORD,
            monkeypatch=monkeypatch,
        )


def test_it_takes_no_password_argument(acme):
    with pytest.raises(CommandError, match="unrecognized arguments"):
        run("create_member", "acme", "dora@acme.test", "--password", PASSWORD)


# --- connect_number --------------------------------------------------------------------------


def test_it_connects_a_number_with_secrets_from_the_environment(acme, secrets_env):
    out = run("connect_number", "acme", *NUMBER_ARGS)
    assert "Connected +1 555 0077 (phone number id 100000000077) to acme" in out
    for secret in SECRETS.values():
        assert secret not in out
    with unscoped("test"):
        number = WhatsAppNumber.objects.get(phone_number_id="100000000077")
    assert number.tenant_id == acme.tenant.pk
    assert number.access_token.reveal() == SECRETS["WHATSAPP_ACCESS_TOKEN"]
    assert number.app.app_secret.reveal() == SECRETS["WHATSAPP_APP_SECRET"]
    assert number.app.verify_token.reveal() == SECRETS["WHATSAPP_VERIFY_TOKEN"]
    assert SECRETS["WHATSAPP_ACCESS_TOKEN"].encode() not in read_raw(
        WhatsAppNumber, "access_token", number.pk
    )


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_it_refuses_when_a_secret_variable_is_missing(acme, secrets_env, missing):
    secrets_env.delenv(missing)
    with pytest.raises(CommandError) as excinfo:
        run("connect_number", "acme", *NUMBER_ARGS)
    assert missing in str(excinfo.value)
    for other in set(SECRETS) - {missing}:
        assert other not in str(excinfo.value)
    with unscoped("test"):
        assert not WhatsAppNumber.objects.filter(phone_number_id="100000000077").exists()


def test_it_refuses_an_empty_secret_variable(acme, secrets_env):
    secrets_env.setenv("WHATSAPP_APP_SECRET", "")
    with pytest.raises(CommandError, match="WHATSAPP_APP_SECRET"):
        run("connect_number", "acme", *NUMBER_ARGS)


def test_it_takes_no_secret_arguments(acme, secrets_env):
    with pytest.raises(CommandError, match="unrecognized arguments"):
        run("connect_number", "acme", *NUMBER_ARGS, "--access-token", "EAA-in-shell-history")


def test_it_refuses_a_duplicate_phone_number_id(acme, bravo, secrets_env):
    args = list(NUMBER_ARGS)
    args[1] = acme.number.phone_number_id
    with pytest.raises(CommandError, match=f"{acme.number.phone_number_id} is already connected"):
        run("connect_number", "bravo", *args)
    with unscoped("test"):
        assert WhatsAppNumber.objects.get(phone_number_id=args[1]).tenant_id == acme.tenant.pk


def test_it_refuses_a_number_for_an_unknown_tenant(db, secrets_env):
    with pytest.raises(CommandError, match="no tenant with slug 'nope'"):
        run("connect_number", "nope", *NUMBER_ARGS)


@pytest.mark.parametrize(
    ("position", "name"), [(1, "phone number id"), (3, "WABA id"), (7, "app id")]
)
def test_it_refuses_ids_that_are_not_digits(acme, secrets_env, position, name):
    args = list(NUMBER_ARGS)
    args[position] = "12ab"
    with pytest.raises(CommandError, match=rf"(?i){name}.*digits"):
        run("connect_number", "acme", *args)
    with unscoped("test"):
        assert WhatsAppNumber.objects.count() == 1


# --- a real process --------------------------------------------------------------------------


def test_it_exits_1_without_a_traceback_as_a_real_process(tmp_path):
    root = Path(django_settings.BASE_DIR)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        "DEBUG": "true",
        "KLAROS_VAR_DIR": str(tmp_path),
    }
    python = sys.executable
    migrate = subprocess.run(
        [python, "manage.py", "migrate", "--noinput"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert migrate.returncode == 0, migrate.stderr

    result = subprocess.run(
        [python, "manage.py", "create_member", "nope", "x@y.z", "--password-stdin"],
        cwd=root,
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no tenant with slug 'nope'" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout

    env.pop("WHATSAPP_ACCESS_TOKEN", None)
    env.update({"WHATSAPP_APP_SECRET": "s", "WHATSAPP_VERIFY_TOKEN": "v"})
    result = subprocess.run(
        [python, "manage.py", "connect_number", "nope", *NUMBER_ARGS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "WHATSAPP_ACCESS_TOKEN" in result.stderr
