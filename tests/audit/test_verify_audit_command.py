"""`manage.py verify_audit`: one line per chain, exit 0 when everything verifies, exit 1 naming
the chain and seq of a break, a clear error for an unknown tenant."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.checkpoints import encode_public_key, public_key, write_checkpoint
from apps.audit.models import AuditChainHead
from apps.audit.services import record

from .tampering import chain_of, set_event_data

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("verify_audit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def world(acme, bravo):
    record("test.deployment", actor=None)
    return acme, bravo


def test_it_prints_one_line_per_chain(world):
    acme, bravo = world
    write_checkpoint()

    out, _ = run()

    lines = out.splitlines()
    assert lines[0] == "checkpoints: 1 read, 1 with a valid signature"
    expected = []
    for label, chain in (
        ("deployment", "deployment"),
        ("acme", chain_of(acme)),
        ("bravo", chain_of(bravo)),
    ):
        head = AuditChainHead.objects.get(chain=chain)
        expected.append(f"{label}: {head.seq} events verified, head {head.hash}")
    assert lines[1:] == expected


def test_it_exits_1_naming_the_chain_and_seq_of_a_break(world):
    acme, _ = world
    set_event_data(chain_of(acme), 2, {"n": 1})
    out = StringIO()

    with pytest.raises(CommandError, match="1 broken chain") as raised:
        call_command("verify_audit", stdout=out)

    assert raised.value.returncode == 1
    broken = [line for line in out.getvalue().splitlines() if line.startswith("acme:")]
    assert broken == [
        "acme: BROKEN at seq 2: hash mismatch (the stored values do not hash to the stored "
        f"hash); chain {chain_of(acme)}, 1 events verified before it"
    ]
    assert any(
        line.startswith("bravo: ") and "verified" in line for line in out.getvalue().splitlines()
    )


def test_it_verifies_one_tenant(world):
    out, _ = run("--tenant", "bravo")

    assert [line.split(":")[0] for line in out.splitlines()[1:]] == ["bravo"]


def test_it_refuses_an_unknown_tenant(world):
    with pytest.raises(CommandError, match="no tenant with the slug 'nobody'"):
        run("--tenant", "nobody")


def test_it_checks_signatures_with_a_given_public_key(world):
    write_checkpoint()

    out, _ = run("--public-key", encode_public_key(public_key()))

    assert out.splitlines()[0] == "checkpoints: 1 read, 1 with a valid signature"


def test_it_refuses_a_malformed_public_key(world):
    with pytest.raises(CommandError, match="--public-key"):
        run("--public-key", "not-a-key")


def test_it_reports_a_bad_checkpoint_and_exits_1(world):
    write_checkpoint()
    other = "A" * 43 + "="  # a well-formed public key that did not sign it
    out = StringIO()

    with pytest.raises(CommandError, match="1 bad checkpoint"):
        call_command("verify_audit", "--public-key", other, stdout=out)

    assert "signed by another key" in out.getvalue()


def test_it_exits_with_status_1_from_the_shell(tmp_path):
    """The exit status an operator's cron or monitoring sees, from a real manage.py process:
    an empty chain-less database verifies (0); an unknown tenant fails (1)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DEBUG": "true",
        "KLAROS_ENV_FILE": "",
        "KLAROS_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "KLAROS_MEDIA_ROOT": str(tmp_path / "media"),
        "KLAROS_ENCRYPTION_KEYS": "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    }

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    assert manage("migrate", "--verbosity", "0").returncode == 0
    ok = manage("verify_audit")
    unknown = manage("verify_audit", "--tenant", "nobody")

    assert ok.returncode == 0, ok.stderr
    assert unknown.returncode == 1
    assert "no tenant with the slug 'nobody'" in unknown.stderr


def test_it_reports_progress_on_stderr_only(world, monkeypatch):
    from apps.audit.management.commands import verify_audit

    monkeypatch.setattr(verify_audit, "PROGRESS_EVERY_SECONDS", 0.0)  # every page

    out, err = run("--chunk-size", "2", "--tenant", "acme")

    acme, _ = world
    assert f"verifying {chain_of(acme)}: 2 events" in err.splitlines()
    assert "verifying" not in out
