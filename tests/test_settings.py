"""Production settings: refuse to start without secrets, pass `check --deploy`, send hardened
headers and cookies, and keep inline script out of every template.

The production checks run Django in a subprocess with a clean environment (DEBUG=False, nothing
inherited from the test run, no `.env` file), because settings are read once at import.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.test import Client

BASE_DIR = Path(__file__).resolve().parent.parent
KEYRING = "prod1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
SIGNING_KEY = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
HOST = "klaros.example.com"
REQUIRED = ("SECRET_KEY", "ALLOWED_HOSTS", "KLAROS_ENCRYPTION_KEYS", "KLAROS_AUDIT_SIGNING_KEY")


def clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A minimal environment: no test-run variables, no developer `.env`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "klaros.settings",
        "KLAROS_ENV_FILE": "",
        "KLAROS_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "STATIC_ROOT": str(tmp_path / "static"),
    }
    env.update(overrides)
    return env


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    production = {
        "DEBUG": "False",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": HOST,
        "KLAROS_ENCRYPTION_KEYS": KEYRING,
        "KLAROS_AUDIT_SIGNING_KEY": SIGNING_KEY,
    }
    return clean_env(tmp_path, **{**production, **overrides})


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def django_setup(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_python(["-c", "import django; django.setup()"], env)


# --- Refusing to start -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [
        ("SECRET_KEY",),
        ("ALLOWED_HOSTS",),
        ("KLAROS_ENCRYPTION_KEYS",),
        ("KLAROS_AUDIT_SIGNING_KEY",),
        REQUIRED,
    ],
    ids=["secret-key", "allowed-hosts", "keyring", "audit-signing-key", "all"],
)
def test_it_refuses_to_start_in_production_naming_exactly_what_is_missing(tmp_path, missing):
    env = production_env(tmp_path)
    for name in missing:
        del env[name]

    result = django_setup(env)

    assert result.returncode != 0
    message = next(
        line for line in result.stderr.splitlines() if line.startswith("django.core.exceptions")
    )
    assert "ImproperlyConfigured" in message
    assert "DEBUG=False" in message
    for name in REQUIRED:
        # "SECRET_KEY" must not match inside another name; list items are comma-separated.
        named = re.search(rf"(?<![A-Z_]){name}(?![A-Z_])", message) is not None
        assert named == (name in missing), (name, message)


def test_manage_py_says_why_it_refuses_in_one_line(tmp_path):
    env = production_env(tmp_path)
    del env["KLAROS_ENCRYPTION_KEYS"]

    result = run_python(["manage.py", "makemigrations", "--check", "--dry-run"], env)

    assert result.returncode == 1
    assert result.stderr.startswith("manage.py: Klaros refuses to start in production mode")
    assert "KLAROS_ENCRYPTION_KEYS" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_refuses_an_empty_allowed_hosts_value_in_production(tmp_path):
    result = django_setup(production_env(tmp_path, ALLOWED_HOSTS=""))

    assert result.returncode != 0
    assert "without ALLOWED_HOSTS" in result.stderr


def test_it_starts_in_production_with_secrets_from_files(tmp_path):
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(secrets.token_urlsafe(50) + "\n")
    keyring_file = tmp_path / "keyring"
    keyring_file.write_text(KEYRING + "\n")
    env = production_env(tmp_path)
    del env["SECRET_KEY"], env["KLAROS_ENCRYPTION_KEYS"]
    env["SECRET_KEY_FILE"] = str(secret_file)
    env["KLAROS_ENCRYPTION_KEYS_FILE"] = str(keyring_file)

    result = django_setup(env)

    assert result.returncode == 0, result.stderr


def test_it_reads_the_audit_signing_key_from_a_file(tmp_path):
    key_file = tmp_path / "audit_signing_key"
    key_file.write_text(SIGNING_KEY + "\n")
    env = production_env(tmp_path, KLAROS_AUDIT_SIGNING_KEY_FILE=str(key_file))
    del env["KLAROS_AUDIT_SIGNING_KEY"]

    result = run_python(
        [
            "-c",
            "import django; django.setup(); from apps.audit.checkpoints import public_key, "
            "encode_public_key; print(encode_public_key(public_key()))",
        ],
        env,
    )

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 44  # base64 of a 32-byte public key
    assert SIGNING_KEY not in result.stdout + result.stderr


def test_it_refuses_an_audit_signing_key_of_the_wrong_size(tmp_path):
    result = django_setup(production_env(tmp_path, KLAROS_AUDIT_SIGNING_KEY="AAAA"))

    assert result.returncode != 0
    assert "KLAROS_AUDIT_SIGNING_KEY must be the base64 of a 32-byte" in result.stderr
    assert "AAAA" not in result.stderr


def test_it_names_an_unreadable_secret_file(tmp_path):
    env = production_env(tmp_path, SECRET_KEY_FILE=str(tmp_path / "nowhere"))

    result = django_setup(env)

    assert result.returncode != 0
    assert "SECRET_KEY_FILE" in result.stderr
    assert "cannot be read" in result.stderr


def test_it_starts_in_development_without_any_secret(tmp_path):
    result = django_setup(clean_env(tmp_path, DEBUG="True"))

    assert result.returncode == 0, result.stderr


def test_it_passes_check_deploy_at_warning_level_with_production_settings(tmp_path):
    result = run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env(tmp_path)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_when_hsts_is_switched_off(tmp_path):
    """The check above is not vacuous: weakening one setting makes it fail."""
    env = production_env(tmp_path, SECURE_HSTS_SECONDS="0")

    result = run_python(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)

    assert result.returncode != 0
    assert "security.W004" in result.stdout + result.stderr


# --- Headers and cookies on real requests with production settings ----------------------------

PROBE = textwrap.dedent(
    """
    import json
    import django
    django.setup()
    from django.core.management import call_command
    from django.test import Client
    from django.contrib.auth import get_user_model

    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0)
    get_user_model().objects.create_user("probe@klaros.test", "probe-password-long-enough-42")
    client = Client(HTTP_HOST="%(host)s")

    def cookie(response, name):
        morsel = response.cookies.get(name)
        if morsel is None:
            return None
        return {k: morsel[k] for k in ("secure", "httponly", "samesite")}

    out = {}
    r = client.get("/accounts/login/")
    out["http_login"] = {"status": r.status_code, "location": r.get("Location")}
    r = client.get("/healthz")
    out["http_healthz"] = {"status": r.status_code, "body": r.content.decode()}
    r = client.get("/accounts/login/", secure=True)
    out["https_login"] = {
        "status": r.status_code,
        "headers": dict(r.headers),
        "csrf_cookie": cookie(r, "csrftoken"),
    }
    r = client.post(
        "/accounts/login/",
        {"username": "probe@klaros.test", "password": "probe-password-long-enough-42"},
        secure=True,
    )
    out["https_login_post"] = {
        "status": r.status_code,
        "location": r.get("Location"),
        "session_cookie": cookie(r, "sessionid"),
    }
    r = client.get("/inbox/", secure=True)
    out["https_inbox"] = {"status": r.status_code, "headers": dict(r.headers)}
    r = client.get("/accounts/login/", secure=True, HTTP_HOST="evil.com")
    out["evil_host"] = {"status": r.status_code}
    print("PROBE" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def production_probe(tmp_path_factory):
    """Requests made through Django's test client in a process running production settings."""
    tmp_path = tmp_path_factory.mktemp("production")
    result = run_python(["-c", PROBE % {"host": HOST}], production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line.removeprefix("PROBE"))


def test_it_redirects_plain_http_to_https_permanently(production_probe):
    http = production_probe["http_login"]

    assert http["status"] == 301
    assert http["location"] == f"https://{HOST}/accounts/login/"


def test_it_answers_healthz_over_plain_http_without_redirect(production_probe):
    assert production_probe["http_healthz"] == {"status": 200, "body": "ok\n"}


@pytest.mark.parametrize("page", ["https_login", "https_inbox"])
def test_it_sends_the_hardening_headers(production_probe, page):
    response = production_probe[page]
    headers = {k.lower(): v for k, v in response["headers"].items()}

    assert response["status"] == 200
    hsts = headers["strict-transport-security"]
    assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31_536_000
    assert "includeSubDomains" in hsts
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] in {
        "same-origin",
        "strict-origin-when-cross-origin",
        "no-referrer",
    }
    assert headers["cross-origin-opener-policy"] == "same-origin"


@pytest.mark.parametrize("page", ["https_login", "https_inbox"])
def test_it_sends_a_csp_that_allows_no_inline_script(production_probe, page):
    csp = {k.lower(): v for k, v in production_probe[page]["headers"].items()}[
        "content-security-policy"
    ]
    directives = {
        part.split()[0]: part.split()[1:] for part in (p.strip() for p in csp.split(";")) if part
    }

    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]


def test_it_sets_secure_httponly_lax_session_cookie(production_probe):
    login = production_probe["https_login_post"]

    assert login["status"] == 302
    assert login["location"] == "/inbox/"
    assert login["session_cookie"]["secure"] is True
    assert login["session_cookie"]["httponly"] is True
    assert login["session_cookie"]["samesite"] == "Lax"


def test_it_sets_a_secure_csrf_cookie(production_probe):
    csrf = production_probe["https_login"]["csrf_cookie"]

    assert csrf is not None
    assert csrf["secure"] is True


def test_it_rejects_a_foreign_host_header_in_production(production_probe):
    assert production_probe["evil_host"]["status"] == 400


@pytest.mark.django_db
def test_it_rejects_a_foreign_host_header():
    response = Client().get("/accounts/login/", HTTP_HOST="evil.com")

    assert response.status_code == 400


# --- Templates ---------------------------------------------------------------------------------

TEMPLATE_DIRS = [BASE_DIR / "templates", *sorted(BASE_DIR.glob("apps/*/templates"))]
SCRIPT_WITH_BODY = re.compile(r"<script\b[^>]*>(?P<body>.*?)</script\s*>", re.I | re.S)
EVENT_HANDLER_ATTRIBUTE = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I | re.S)
INLINE_SCRIPT_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)
HTMX_INLINE_HANDLER = re.compile(r"\shx-on[:-]", re.I)


def all_templates() -> list[Path]:
    return sorted(p for d in TEMPLATE_DIRS for p in d.rglob("*.html"))


def test_it_finds_the_templates_it_scans():
    names = {p.relative_to(BASE_DIR).as_posix() for p in all_templates()}

    assert "templates/base.html" in names
    assert "templates/registration/login.html" in names


@pytest.mark.parametrize(
    "template", all_templates(), ids=lambda p: p.relative_to(BASE_DIR).as_posix()
)
def test_it_has_no_inline_script_in_templates(template):
    text = template.read_text()

    inline = [m.group(0)[:80] for m in SCRIPT_WITH_BODY.finditer(text) if m.group("body").strip()]
    assert inline == [], "inline <script> bodies are blocked by the CSP; use static/klaros/*.js"
    assert not EVENT_HANDLER_ATTRIBUTE.search(text), "on*= attributes are inline script"
    assert not INLINE_SCRIPT_URL.search(text), "javascript: URLs are inline script"
    assert not HTMX_INLINE_HANDLER.search(text), "hx-on evaluates inline script"


@pytest.mark.parametrize(
    "snippet",
    [
        "<script>alert(1)</script>",
        '<script type="module">\n go()\n</script>',
        '<button onclick="go()">',
        '<img src=x\n onerror="go()">',
        '<a href="javascript:go()">',
    ],
)
def test_the_template_scan_catches_inline_script(snippet):
    caught = (
        any(m.group("body").strip() for m in SCRIPT_WITH_BODY.finditer(snippet))
        or EVENT_HANDLER_ATTRIBUTE.search(snippet)
        or INLINE_SCRIPT_URL.search(snippet)
    )
    assert caught


def test_the_template_scan_allows_external_scripts():
    snippet = '<script src="/static/klaros/klaros.js" defer></script><button data-on="x">'

    assert not any(m.group("body").strip() for m in SCRIPT_WITH_BODY.finditer(snippet))
    assert not EVENT_HANDLER_ATTRIBUTE.search(snippet)
