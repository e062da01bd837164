"""EncryptedSecretField on real rows: nothing readable at rest, nothing re-saved unread."""

from __future__ import annotations

import base64

import pytest
from django.db import transaction

from apps.tenants.crypto import DecryptionError, Secret, get_keyring
from apps.tenants.models import MetaApp, WhatsAppNumber
from apps.tenants.scoping import tenant_scope, unscoped

from .rawsql import read_raw, write_raw

OTHER_KEY = base64.b64encode(bytes(range(100, 132))).decode()


def load_number(pk) -> WhatsAppNumber:
    with unscoped("test"):
        return WhatsAppNumber.objects.get(pk=pk)


def test_it_stores_no_plaintext(acme, bravo):
    active = get_keyring().active
    for world in (acme, bravo):
        token_blob = read_raw(WhatsAppNumber, "access_token", world.number.pk)
        secret_blob = read_raw(MetaApp, "app_secret", world.number.app_id)
        verify_blob = read_raw(MetaApp, "verify_token", world.number.app_id)
        for blob, plaintext in (
            (token_blob, world.credentials.access_token),
            (secret_blob, world.credentials.app_secret),
            (verify_blob, world.credentials.verify_token),
        ):
            assert plaintext.encode() not in blob
            assert base64.b64encode(plaintext.encode()) not in blob
            assert blob[0] == 0x01
            assert blob[1:5] == active.key_id


def test_it_round_trips_every_secret(acme):
    number = load_number(acme.number.pk)
    assert isinstance(number.access_token, Secret)
    assert number.access_token.reveal() == acme.credentials.access_token
    assert number.app.app_secret.reveal() == acme.credentials.app_secret
    assert number.app.verify_token.reveal() == acme.credentials.verify_token


def test_it_refuses_a_ciphertext_copied_into_another_row(acme, bravo):
    acme_blob = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    bravo_blob = read_raw(WhatsAppNumber, "access_token", bravo.number.pk)
    write_raw(WhatsAppNumber, "access_token", bravo.number.pk, acme_blob)
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, bravo_blob)

    for world in (acme, bravo):
        number = load_number(world.number.pk)
        with pytest.raises(DecryptionError) as excinfo:
            number.access_token  # noqa: B018
        message = str(excinfo.value)
        assert f"tenants.WhatsAppNumber.access_token of row {world.number.pk}" in message
        assert "copied from another row or field" in message
        assert acme.credentials.access_token not in message

    # Swapping back restores both: nothing was rewritten by the failed reads.
    write_raw(WhatsAppNumber, "access_token", bravo.number.pk, bravo_blob)
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, acme_blob)
    assert load_number(acme.number.pk).access_token.reveal() == acme.credentials.access_token
    assert load_number(bravo.number.pk).access_token.reveal() == bravo.credentials.access_token


def test_it_refuses_a_ciphertext_copied_into_another_field(acme):
    app_pk = acme.number.app_id
    write_raw(MetaApp, "verify_token", app_pk, read_raw(MetaApp, "app_secret", app_pk))
    app = MetaApp.objects.get(pk=app_pk)
    assert app.app_secret.reveal() == acme.credentials.app_secret
    with pytest.raises(DecryptionError, match=f"tenants.MetaApp.verify_token of row {app_pk}"):
        app.verify_token  # noqa: B018


@pytest.mark.parametrize("position", ["nonce", "ciphertext", "tag"])
def test_it_refuses_a_flipped_bit(acme, position):
    blob = bytearray(read_raw(WhatsAppNumber, "access_token", acme.number.pk))
    index = {"nonce": 6, "ciphertext": 20, "tag": len(blob) - 1}[position]
    blob[index] ^= 0x01
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, bytes(blob))
    with pytest.raises(DecryptionError, match="altered"):
        load_number(acme.number.pk).access_token  # noqa: B018


def test_it_refuses_a_truncated_tag(acme):
    blob = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, blob[:-4])  # tag cut to 12 bytes
    with pytest.raises(DecryptionError, match="altered"):
        load_number(acme.number.pk).access_token  # noqa: B018


@pytest.mark.parametrize("blob", [b"\x01", b"\x02" + bytes(40), b"plaintext-token-in-db"])
def test_it_never_reads_a_foreign_value_as_plaintext(acme, blob):
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, blob)
    number = load_number(acme.number.pk)
    with pytest.raises(DecryptionError, match="bad header"):
        number.access_token  # noqa: B018


def test_it_reads_back_an_empty_secret_as_empty(acme):
    number = load_number(acme.number.pk)
    with tenant_scope(acme.tenant):
        number.access_token = ""
        number.save()
    assert read_raw(WhatsAppNumber, "access_token", acme.number.pk) == b""
    secret = load_number(acme.number.pk).access_token
    assert isinstance(secret, Secret) and not secret
    assert not WhatsAppNumber(tenant=acme.tenant).access_token  # a new row holds none yet


def test_it_explains_a_missing_key_and_never_resaves(acme, settings):
    before = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    original_keys = settings.KLAROS_ENCRYPTION_KEYS
    settings.KLAROS_ENCRYPTION_KEYS = f"other:{OTHER_KEY}"

    number = load_number(acme.number.pk)
    with pytest.raises(DecryptionError) as excinfo:
        number.access_token  # noqa: B018
    message = str(excinfo.value)
    assert f"of row {acme.number.pk}" in message
    assert before[1:5].hex() in message
    assert "not in KLAROS_ENCRYPTION_KEYS" in message

    with tenant_scope(acme.tenant):
        number.display_phone_number = "+1 555 7777"
        number.save()
    assert read_raw(WhatsAppNumber, "access_token", acme.number.pk) == before
    assert load_number(acme.number.pk).display_phone_number == "+1 555 7777"

    settings.KLAROS_ENCRYPTION_KEYS = original_keys
    assert load_number(acme.number.pk).access_token.reveal() == acme.credentials.access_token


def test_it_writes_back_an_unchanged_value_byte_for_byte(acme):
    before = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    number = load_number(acme.number.pk)
    assert number.access_token.reveal() == acme.credentials.access_token  # decrypted and cached
    with tenant_scope(acme.tenant):
        number.waba_id = "299999999999"
        number.save()
    assert read_raw(WhatsAppNumber, "access_token", acme.number.pk) == before


def test_it_encrypts_a_new_value_on_save(acme):
    before = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    number = load_number(acme.number.pk)
    with tenant_scope(acme.tenant):
        number.access_token = "EAA-rotated-by-meta"
        number.save()
    after = read_raw(WhatsAppNumber, "access_token", acme.number.pk)
    assert after != before and b"EAA-rotated-by-meta" not in after
    assert load_number(acme.number.pk).access_token.reveal() == "EAA-rotated-by-meta"


def test_it_keeps_plaintext_out_of_repr_and_str(acme):
    number = load_number(acme.number.pk)
    token = acme.credentials.access_token
    assert number.access_token.reveal() == token
    for text in (
        repr(number),
        str(number),
        repr(number.access_token),
        str(number.access_token),
        repr(vars(number)),
        repr(number.app),
        repr(vars(number.app)),
    ):
        assert token not in text
        assert acme.credentials.app_secret not in text


def test_it_refuses_plaintext_in_queryset_update_and_filter(acme):
    # Each attempt runs in its own savepoint: QuerySet.update() marks the transaction for
    # rollback when it raises, as it would in a request.
    attempts = [
        lambda: WhatsAppNumber.objects.update(access_token="x"),
        lambda: WhatsAppNumber.objects.filter(pk=acme.number.pk).update(access_token=Secret("x")),
        lambda: WhatsAppNumber.objects.filter(access_token=acme.credentials.access_token).exists(),
    ]
    with tenant_scope(acme.tenant):
        for attempt in attempts:
            with pytest.raises(TypeError, match="cannot be filtered on"), transaction.atomic():
                attempt()
    assert load_number(acme.number.pk).access_token.reveal() == acme.credentials.access_token


def test_it_refuses_to_serialise_secrets(acme):
    from django.core import serializers

    with unscoped("test"), pytest.raises(TypeError, match="not serialised"):
        serializers.serialize("json", WhatsAppNumber.objects.all())
