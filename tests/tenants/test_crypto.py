"""The crypto primitives: format, keyring parsing, secrets files and the development key."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.tenants import crypto
from apps.tenants.crypto import (
    FORMAT_VERSION,
    HEADER_LENGTH,
    DecryptionError,
    Keyring,
    Secret,
    decrypt,
    encrypt,
    get_keyring,
    key_id_for,
)
from klaros.settings import env_secret

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()
WHERE = {"label": "tenants.WhatsAppNumber", "field": "access_token"}


@pytest.fixture
def fresh_keyring_caches():
    crypto._keyring_for.cache_clear()
    crypto._development_keyring_spec.cache_clear()
    yield
    crypto._keyring_for.cache_clear()
    crypto._development_keyring_spec.cache_clear()


def test_it_writes_the_versioned_format_under_the_active_key(settings):
    settings.KLAROS_ENCRYPTION_KEYS = f"new:{KEY_A},old:{KEY_B}"
    pk = uuid.uuid4()
    blob = encrypt("EAA-canary", pk=pk, **WHERE)
    assert blob[0] == FORMAT_VERSION == 1
    assert blob[1:5] == key_id_for("new")
    assert len(blob) == HEADER_LENGTH + len("EAA-canary") + 16
    assert b"EAA-canary" not in blob
    assert decrypt(blob, pk=pk, **WHERE) == "EAA-canary"


def test_it_decrypts_with_every_key_of_the_ring(settings):
    pk = uuid.uuid4()
    settings.KLAROS_ENCRYPTION_KEYS = f"old:{KEY_B}"
    blob = encrypt("under the old key", pk=pk, **WHERE)
    settings.KLAROS_ENCRYPTION_KEYS = f"new:{KEY_A},old:{KEY_B}"
    assert decrypt(blob, pk=pk, **WHERE) == "under the old key"


def test_it_binds_the_value_to_its_row_and_field():
    pk = uuid.uuid4()
    blob = encrypt("bound", pk=pk, **WHERE)
    with pytest.raises(DecryptionError, match="copied from another row or field"):
        decrypt(blob, pk=uuid.uuid4(), **WHERE)
    with pytest.raises(DecryptionError, match=re.escape("tenants.MetaApp.app_secret")):
        decrypt(blob, label="tenants.MetaApp", field="app_secret", pk=pk)
    with pytest.raises(DecryptionError, match=re.escape("tenants.WhatsAppNumber.other")):
        decrypt(blob, label="tenants.WhatsAppNumber", field="other", pk=pk)


def test_it_uses_a_fresh_nonce_for_every_encryption():
    pk = uuid.uuid4()
    blobs = [encrypt("same value", pk=pk, **WHERE) for _ in range(1000)]
    assert len({blob[5:HEADER_LENGTH] for blob in blobs}) == 1000
    assert len({blob[HEADER_LENGTH:] for blob in blobs}) == 1000


def test_it_refuses_to_encrypt_without_a_primary_key():
    with pytest.raises(ValueError, match="primary key"):
        encrypt("x", pk=None, **WHERE)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1:not base64!!", "key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "key 'k1' must be 32 bytes .*not 5"),
        (f"k1:{base64.b64encode(bytes(33)).decode()}", "must be 32 bytes"),
        (f"k1:{KEY_A},k1:{KEY_B}", "names the same key twice"),
        (KEY_A, "look like 'kid:<base64 of 32 bytes>'"),
        (f":{KEY_A}", "look like 'kid:"),
        (" , ", "keyring is empty"),
    ],
)
def test_it_explains_a_bad_keyring(spec, message):
    with pytest.raises(ImproperlyConfigured, match=message) as excinfo:
        Keyring.parse(spec)
    assert KEY_A not in str(excinfo.value)  # key material never lands in an error


def test_it_parses_a_keyring_with_the_first_key_active():
    ring = Keyring.parse(f" new : {KEY_A} , old:{KEY_B}")
    assert [k.name for k in ring.keys] == ["new", "old"]
    assert ring.active.key_id == key_id_for("new")
    assert ring.get(key_id_for("old")).material == base64.b64decode(KEY_B)
    assert KEY_A not in repr(ring.keys) and "material" not in repr(ring.active)


def test_it_masks_secrets_in_repr_and_str():
    secret = Secret("EAA-very-secret-canary")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!s:>40}", repr([secret])):
        assert "EAA-very-secret" not in text
    assert str(secret).endswith("nary")  # the last four at most
    assert Secret("short").masked() == "••••"  # too short to show even those
    assert secret.reveal() == "EAA-very-secret-canary"


def test_it_refuses_to_pickle_a_secret():
    import pickle

    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(Secret("EAA-canary"))


def test_it_reads_a_secret_from_the_file_named_by_the_file_variant(tmp_path, monkeypatch):
    secret_file = tmp_path / "keys"
    secret_file.write_text(f"k1:{KEY_A}\n")
    monkeypatch.delenv("KLAROS_TEST_SECRET", raising=False)
    monkeypatch.setenv("KLAROS_TEST_SECRET_FILE", str(secret_file))
    assert env_secret("KLAROS_TEST_SECRET") == f"k1:{KEY_A}"


def test_it_prefers_the_file_variant_and_falls_back_to_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KLAROS_TEST_SECRET", "from-env")
    assert env_secret("KLAROS_TEST_SECRET") == "from-env"
    (tmp_path / "s").write_text("from-file")
    monkeypatch.setenv("KLAROS_TEST_SECRET_FILE", str(tmp_path / "s"))
    assert env_secret("KLAROS_TEST_SECRET") == "from-file"
    monkeypatch.delenv("KLAROS_TEST_SECRET")
    monkeypatch.delenv("KLAROS_TEST_SECRET_FILE")
    assert env_secret("KLAROS_TEST_SECRET", default="fallback") == "fallback"


def test_it_names_an_unreadable_secret_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("KLAROS_TEST_SECRET_FILE", str(missing))
    with pytest.raises(ImproperlyConfigured, match=f"KLAROS_TEST_SECRET_FILE={missing}"):
        env_secret("KLAROS_TEST_SECRET")


def test_it_generates_a_private_development_key_file(
    settings, tmp_path, caplog, fresh_keyring_caches
):
    key_file = tmp_path / "var" / "dev-encryption-keys"
    settings.DEBUG = True
    settings.KLAROS_ENCRYPTION_KEYS = ""
    settings.KLAROS_DEV_KEY_FILE = key_file

    with caplog.at_level(logging.WARNING, logger="apps.tenants.crypto"):
        ring = get_keyring()

    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    name, _, material = key_file.read_text().strip().partition(":")
    assert ring.active.name == name == "dev1"
    assert ring.active.material == base64.b64decode(material)
    assert "KLAROS_ENCRYPTION_KEYS is not set" in caplog.text
    assert str(key_file) in caplog.text
    assert material not in caplog.text

    # A restart reuses the file instead of generating a key that cannot read old values.
    crypto._development_keyring_spec.cache_clear()
    crypto._keyring_for.cache_clear()
    assert get_keyring().active.material == ring.active.material


def test_it_refuses_to_run_without_a_keyring_in_production(
    settings, tmp_path, fresh_keyring_caches
):
    settings.DEBUG = False
    settings.KLAROS_ENCRYPTION_KEYS = ""
    settings.KLAROS_DEV_KEY_FILE = tmp_path / "dev-encryption-keys"
    with pytest.raises(ImproperlyConfigured, match="KLAROS_ENCRYPTION_KEYS is required"):
        get_keyring()
    assert not settings.KLAROS_DEV_KEY_FILE.exists()
