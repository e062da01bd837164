"""Maintenance over every encrypted value in the deployment: status and key rotation.

Runs unscoped (it is cross-tenant maintenance by nature) and reads raw ciphertext, so it never
needs to decrypt a value merely to count it, and never re-saves one it cannot read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.apps import apps
from django.db import models

from .crypto import DecryptionError, decrypt, encrypt, get_keyring, key_id_of
from .fields import EncryptedSecretField, Sealed
from .scoping import unscoped


def encrypted_fields() -> Iterator[tuple[type[models.Model], EncryptedSecretField]]:
    for model in apps.get_models():
        for model_field in model._meta.concrete_fields:
            if isinstance(model_field, EncryptedSecretField):
                yield model, model_field


def _rows(model: type[models.Model], name: str, batch_size: int) -> Iterator[list[tuple]]:
    """Keyset-paginated (pk, ciphertext) batches, so huge tables never load at once."""
    last_pk = None
    manager = model._base_manager
    while True:
        queryset = manager.exclude(**{f"{name}__isnull": True}).order_by("pk")
        if last_pk is not None:
            queryset = queryset.filter(pk__gt=last_pk)
        batch = list(queryset.values_list("pk", name)[:batch_size])
        if not batch:
            return
        yield batch
        last_pk = batch[-1][0]


@dataclass
class Unreadable:
    label: str
    field: str
    pk: object
    reason: str


@dataclass
class StatusReport:
    per_key: Counter = field(default_factory=Counter)
    unreadable: list[Unreadable] = field(default_factory=list)
    total: int = 0


def encryption_status(batch_size: int = 500) -> StatusReport:
    """Count values per key id and try to decrypt each one (in memory only)."""
    keyring = get_keyring()
    report = StatusReport()
    with unscoped("encryption status"):
        for model, model_field in encrypted_fields():
            label = model._meta.label
            for batch in _rows(model, model_field.attname, batch_size):
                for pk, blob in batch:
                    if not blob:
                        continue
                    report.total += 1
                    try:
                        report.per_key[keyring.name_of(key_id_of(blob))] += 1
                        decrypt(blob, label=label, field=model_field.name, pk=pk)
                    except DecryptionError as exc:
                        report.unreadable.append(Unreadable(label, model_field.name, pk, str(exc)))
    return report


@dataclass
class RotationReport:
    rotated: int = 0
    already_current: int = 0
    raced: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)


def rotate_encryption_keys(batch_size: int = 200, progress=None) -> RotationReport:
    """Re-encrypt every value that is not under the active key.

    Resumable: values already under the active key are skipped, so a killed run is simply run
    again. Safe against concurrent edits: each row is written with a compare-and-swap on the
    exact ciphertext that was read; if someone saved the row meanwhile (which encrypts under the
    active key anyway) the swap does nothing and the row is counted as raced.
    """
    keyring = get_keyring()
    active = keyring.active
    report = RotationReport()
    with unscoped("encryption key rotation"):
        for model, model_field in encrypted_fields():
            label, name = model._meta.label, model_field.name
            for batch in _rows(model, model_field.attname, batch_size):
                for pk, blob in batch:
                    if not blob:
                        continue
                    try:
                        if key_id_of(blob) == active.key_id:
                            report.already_current += 1
                            continue
                        plaintext = decrypt(blob, label=label, field=name, pk=pk)
                    except DecryptionError as exc:
                        report.unreadable.append(Unreadable(label, name, pk, str(exc)))
                        continue
                    fresh = encrypt(plaintext, label=label, field=name, pk=pk)
                    updated = model._base_manager.filter(
                        pk=pk, **{model_field.attname: Sealed(blob)}
                    ).update(**{model_field.attname: Sealed(fresh)})
                    if updated:
                        report.rotated += 1
                    else:
                        report.raced += 1
                if progress:
                    progress(label, name, report)
    return report
