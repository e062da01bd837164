"""Signed checkpoints: what they hold, that the signature verifies, that tampering and another
key are caught, the development key, the hourly schedule."""

from __future__ import annotations

import base64
import json
import logging
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.management import call_command
from django_q.models import Schedule

from apps.audit.checkpoints import (
    PREFIX,
    checkpoint_storage,
    encode_public_key,
    key_fingerprint,
    load_checkpoints,
    public_key,
    signed_bytes,
    signing_key,
    write_checkpoint,
)
from apps.audit.models import AuditChainHead
from apps.audit.services import record
from apps.audit.tasks import write_audit_checkpoint
from apps.audit.verification import verify_all


def test_it_signs_every_chain_head(acme, bravo):
    written = write_checkpoint()

    heads = {h["chain"]: (h["seq"], h["hash"]) for h in written.document["heads"]}
    assert heads == {h.chain: (h.seq, h.hash) for h in AuditChainHead.objects.all()}
    assert all(h["recorded_at"] for h in written.document["heads"])
    assert written.name.startswith(f"{PREFIX}/") and written.name.endswith(".json")
    # Checkable with nothing but the public key and the documented serialisation.
    signature = base64.b64decode(written.document["signature"])
    public_key().verify(signature, signed_bytes(written.document))
    assert written.document["key_fingerprint"] == key_fingerprint(public_key())


def test_it_reads_back_checkpoints_whose_signature_verifies(acme):
    record("test.deployment", actor=None)
    first = write_checkpoint()
    second = write_checkpoint()

    loaded = load_checkpoints()

    assert [c.name for c in loaded] == [first.name, second.name]
    assert all(c.valid for c in loaded)
    assert {h.chain for h in loaded[0].heads} == {str(acme.tenant.pk), "deployment"}


def test_it_reports_a_tampered_checkpoint_and_ignores_its_heads(acme):
    written = write_checkpoint()
    storage = checkpoint_storage()
    document = json.loads(storage.open(written.name).read())
    document["heads"][0]["seq"] += 1
    storage.delete(written.name)
    storage.save(written.name, ContentFile(json.dumps(document).encode()))

    report = verify_all()

    assert [c.problem for c in report.checkpoints] == ["bad signature"]
    assert all(chain.ok for chain in report.chains)  # the forged head was not trusted
    assert not report.ok


def test_it_reports_an_unreadable_checkpoint(acme):
    checkpoint_storage().save(f"{PREFIX}/garbage.json", ContentFile(b"{not json"))

    report = verify_all()

    assert report.checkpoints[0].problem.startswith("unreadable checkpoint")
    assert not report.ok


def test_it_reports_checkpoints_signed_by_another_key(acme):
    write_checkpoint()
    other = Ed25519PrivateKey.generate().public_key()

    report = verify_all(public_key=other)

    assert report.checkpoints[0].problem.startswith("signed by another key")


def test_it_logs_the_signed_heads_and_no_secret(acme, settings, caplog):
    with caplog.at_level(logging.INFO, logger="klaros.audit"):
        written = write_checkpoint()

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert written.name in logged
    assert written.document["signature"] in logged
    assert AuditChainHead.objects.get(chain=str(acme.tenant.pk)).hash in logged
    assert settings.KLAROS_AUDIT_SIGNING_KEY not in logged


def test_it_prints_the_public_key_for_auditors(capsys, db):
    call_command("audit_checkpoint", "--print-public-key")

    out = capsys.readouterr().out
    assert f"public key: {encode_public_key(public_key())}" in out
    assert f"fingerprint: {key_fingerprint(public_key())}" in out
    assert not checkpoint_storage().exists(PREFIX)  # nothing written


def test_the_command_writes_a_checkpoint(acme, capsys):
    record("test.deployment", actor=None)
    call_command("audit_checkpoint")

    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint {PREFIX}/")
    assert "2 chain head(s)" in out
    assert len(load_checkpoints()) == 1


def test_it_generates_the_development_key_once(settings, tmp_path, caplog):
    settings.KLAROS_AUDIT_SIGNING_KEY = ""
    settings.DEBUG = True
    key_file = tmp_path / "var" / "dev-audit-signing-key"
    settings.KLAROS_AUDIT_DEV_SIGNING_KEY_FILE = key_file

    with caplog.at_level(logging.WARNING):
        first = encode_public_key(signing_key().public_key())
    second = encode_public_key(signing_key().public_key())

    assert first == second
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip())) == 32
    assert "KLAROS_AUDIT_SIGNING_KEY is not set" in caplog.text


def test_it_refuses_to_sign_without_a_key_in_production(settings):
    settings.KLAROS_AUDIT_SIGNING_KEY = ""
    settings.DEBUG = False

    with pytest.raises(ImproperlyConfigured, match="KLAROS_AUDIT_SIGNING_KEY is required"):
        signing_key()


def test_the_hourly_checkpoint_is_scheduled_by_the_migrations(db):
    schedule = Schedule.objects.get(func="apps.audit.tasks.write_audit_checkpoint")

    assert schedule.schedule_type == Schedule.HOURLY
    assert schedule.repeats == -1


def test_the_scheduled_task_writes_a_checkpoint(acme):
    name = write_audit_checkpoint()

    assert checkpoint_storage().exists(name)
    assert load_checkpoints()[0].valid
