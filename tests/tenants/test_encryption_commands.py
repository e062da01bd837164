"""`encryption_status` and `rotate_encryption_keys`: every value accounted for, none lost."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.tenants import encryption
from apps.tenants.crypto import DecryptionError, key_id_for
from apps.tenants.encryption import encrypted_fields, rotate_encryption_keys
from apps.tenants.models import WhatsAppNumber
from apps.tenants.scoping import unscoped

from .rawsql import read_raw, write_raw

OLD = "old:" + base64.b64encode(bytes(range(32))).decode()
NEW = "new:" + base64.b64encode(bytes(range(64, 96))).decode()


@pytest.fixture
def old_keyring(settings):
    """Data in these tests is written under the key "old" before "new" is introduced."""
    settings.KLAROS_ENCRYPTION_KEYS = OLD
    return settings


@pytest.fixture
def world(old_keyring, acme, bravo):
    old_keyring.KLAROS_ENCRYPTION_KEYS = f"{NEW},{OLD}"
    return acme, bravo


def raw_values() -> dict[tuple[str, str, object], bytes]:
    values = {}
    with unscoped("test"):
        for model, field in encrypted_fields():
            for pk in model._base_manager.values_list("pk", flat=True):
                values[(model._meta.label, field.name, pk)] = read_raw(model, field.name, pk)
    return values


def plaintext_digests() -> dict[tuple[str, str, object], str]:
    digests = {}
    with unscoped("test"):
        for model, field in encrypted_fields():
            for row in model._base_manager.all():
                value = getattr(row, field.attname).reveal()
                digests[(model._meta.label, field.name, row.pk)] = hashlib.sha256(
                    value.encode()
                ).hexdigest()
    return digests


def run(command: str, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_it_counts_values_per_key(world):
    out, err = run("encryption_status")
    assert "Active key: new" in out
    assert "Encrypted values: 6" in out  # two numbers' tokens, two apps' secret and verify token
    assert "  old: 6" in out
    assert "Every value decrypts." in out
    assert err == ""


def test_it_lists_an_undecryptable_value_and_fails(world):
    acme, _ = world
    blob = bytearray(read_raw(WhatsAppNumber, "access_token", acme.number.pk))
    blob[-1] ^= 0x80
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, bytes(blob))
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"1 value\(s\) do not decrypt"):
        call_command("encryption_status", stdout=io.StringIO(), stderr=err)
    assert f"tenants.WhatsAppNumber.access_token of row {acme.number.pk}" in err.getvalue()
    assert acme.credentials.access_token not in err.getvalue()


def test_it_lists_a_value_under_an_unknown_key(world, settings):
    settings.KLAROS_ENCRYPTION_KEYS = NEW  # "old" is gone
    err = io.StringIO()
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"6 value\(s\) do not decrypt"):
        call_command("encryption_status", stdout=out, stderr=err)
    assert f"unknown key id {key_id_for('old').hex()}: 6" in out.getvalue()
    assert err.getvalue().count("not in KLAROS_ENCRYPTION_KEYS") == 6


def test_it_rotates_every_value_to_the_active_key_and_keeps_it(world):
    before = plaintext_digests()
    assert len(before) == 6

    out, _ = run("rotate_encryption_keys")

    assert "Rotated 6, already current 0" in out
    assert {blob[1:5] for blob in raw_values().values()} == {key_id_for("new")}
    assert plaintext_digests() == before
    status, _ = run("encryption_status")
    assert "  new: 6" in status and "old" not in status.split("Encrypted values")[1]

    again, _ = run("rotate_encryption_keys")
    assert "Rotated 0, already current 6" in again
    with unscoped("test"):
        events = list(AuditEvent.objects.filter(action="encryption.keys_rotated"))
    assert [e.data["rotated"] for e in sorted(events, key=lambda e: e.seq)] == [6, 0]
    assert all(e.data["active_key_id"] == key_id_for("new").hex() for e in events)


def test_it_keeps_values_readable_after_the_old_key_is_retired(world, settings):
    acme, bravo = world
    run("rotate_encryption_keys")
    settings.KLAROS_ENCRYPTION_KEYS = NEW
    with unscoped("test"):
        for w in (acme, bravo):
            number = WhatsAppNumber.objects.get(pk=w.number.pk)
            assert number.access_token.reveal() == w.credentials.access_token
            assert number.app.app_secret.reveal() == w.credentials.app_secret


def test_it_resumes_after_an_interruption(world):
    before = plaintext_digests()

    class Killed(Exception):
        pass

    def die_after_first_batch(label, field, report):
        raise Killed

    with pytest.raises(Killed):
        rotate_encryption_keys(batch_size=1, progress=die_after_first_batch)
    keys = [blob[1:5] for blob in raw_values().values()]
    assert keys.count(key_id_for("new")) == 1 and keys.count(key_id_for("old")) == 5

    out, _ = run("rotate_encryption_keys", batch_size=1)

    assert "Rotated 5, already current 1" in out
    assert {blob[1:5] for blob in raw_values().values()} == {key_id_for("new")}
    assert plaintext_digests() == before


def test_it_does_not_clobber_a_row_edited_during_rotation(world, monkeypatch):
    acme, _ = world
    real_encrypt = encryption.encrypt
    edited = []

    def encrypt_after_a_concurrent_edit(plaintext, *, label, field, pk):
        if pk == acme.number.pk and not edited:
            # Someone saves a new token between the rotation's read and its write.
            number = WhatsAppNumber.objects.get(pk=pk)
            number.access_token = "EAA-edited-meanwhile"
            number.save()
            edited.append(pk)
        return real_encrypt(plaintext, label=label, field=field, pk=pk)

    monkeypatch.setattr(encryption, "encrypt", encrypt_after_a_concurrent_edit)
    report = rotate_encryption_keys()

    assert edited == [acme.number.pk]
    assert report.raced == 1
    assert report.rotated == 5
    with unscoped("test"):
        number = WhatsAppNumber.objects.get(pk=acme.number.pk)
    assert number.access_token.reveal() == "EAA-edited-meanwhile"
    assert read_raw(WhatsAppNumber, "access_token", acme.number.pk)[1:5] == key_id_for("new")


def test_it_reports_an_unreadable_value_and_leaves_it_untouched(world):
    acme, bravo = world
    blob = bytearray(read_raw(WhatsAppNumber, "access_token", acme.number.pk))
    blob[30] ^= 0x01
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, bytes(blob))

    err = io.StringIO()
    with pytest.raises(CommandError, match=r"1 value\(s\) could not be read"):
        call_command("rotate_encryption_keys", stdout=io.StringIO(), stderr=err)

    assert f"tenants.WhatsAppNumber.access_token of row {acme.number.pk}" in err.getvalue()
    assert read_raw(WhatsAppNumber, "access_token", acme.number.pk) == bytes(blob)
    with unscoped("test"):
        with pytest.raises(DecryptionError):
            WhatsAppNumber.objects.get(pk=acme.number.pk).access_token  # noqa: B018
        assert WhatsAppNumber.objects.get(pk=bravo.number.pk).access_token.reveal() == (
            bravo.credentials.access_token
        )
    others = {k: v for k, v in raw_values().items() if k[2] != acme.number.pk}
    assert {blob[1:5] for blob in others.values()} == {key_id_for("new")}


def test_it_refuses_a_batch_size_below_one(world):
    with pytest.raises(CommandError, match="at least 1"):
        run("rotate_encryption_keys", batch_size=0)
