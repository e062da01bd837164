"""Secrets at rest: AES-256-GCM with a keyring kept outside the data (DESIGN.md section 4).

An encrypted value is `version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag`.
The associated data binds it to where it lives (model label, field name, row primary key) and to
its own header, so a ciphertext copied into another row or column does not decrypt.

The keyring comes from `KLAROS_ENCRYPTION_KEYS="kid2:<base64 32 bytes>,kid1:<...>"`: the first key
encrypts, every key decrypts. A key's 4-byte id is the start of SHA-256 of its name.

This module imports no app.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_LENGTH = 1 + 4 + 12
TAG_LENGTH = 16


class DecryptionError(Exception):
    """A stored secret could not be decrypted. The message names where, never the value."""


class Secret:
    """A decrypted secret. Its repr and str are masked so it never lands in logs or error pages;
    call `reveal()` at the one place that really needs the plaintext (an Authorization header)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret holds text")
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def last4(self) -> str:
        return self._value[-4:] if len(self._value) >= 8 else ""

    def masked(self) -> str:
        return f"•••• {self.last4}" if self.last4 else "••••"

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    __str__ = masked

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return secrets.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):
        raise TypeError("Secret values are not picklable; pass row ids to tasks instead")


def key_id_for(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:4]


@dataclass(frozen=True)
class Key:
    name: str
    key_id: bytes
    material: bytes = b""

    def __repr__(self) -> str:  # never show key material
        return f"Key({self.name!r}, {self.key_id.hex()})"


class Keyring:
    def __init__(self, keys: list[Key]) -> None:
        if not keys:
            raise ImproperlyConfigured("the encryption keyring is empty")
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise ImproperlyConfigured("KLAROS_ENCRYPTION_KEYS names the same key twice")
        self.keys = keys
        self._by_id = {k.key_id: k for k in keys}

    @property
    def active(self) -> Key:
        return self.keys[0]

    def get(self, key_id: bytes) -> Key | None:
        return self._by_id.get(key_id)

    def name_of(self, key_id: bytes) -> str:
        key = self._by_id.get(key_id)
        return key.name if key else f"unknown key id {key_id.hex()}"

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        keys = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, encoded = part.partition(":")
            if not sep or not name.strip():
                raise ImproperlyConfigured(
                    "KLAROS_ENCRYPTION_KEYS entries look like 'kid:<base64 of 32 bytes>'"
                )
            try:
                material = base64.b64decode(encoded.strip(), validate=True)
            except ValueError as exc:
                raise ImproperlyConfigured(
                    f"KLAROS_ENCRYPTION_KEYS: key {name.strip()!r} is not valid base64"
                ) from exc
            if len(material) != 32:
                raise ImproperlyConfigured(
                    f"KLAROS_ENCRYPTION_KEYS: key {name.strip()!r} must be 32 bytes (AES-256), "
                    f"not {len(material)}"
                )
            keys.append(Key(name=name.strip(), key_id=key_id_for(name.strip()), material=material))
        return cls(keys)


def generate_key_spec(name: str) -> str:
    return f"{name}:{base64.b64encode(os.urandom(32)).decode()}"


def read_development_secret(key_file: str, generate: Callable[[], str]) -> str:
    """The development secret in `key_file`, written there first (mode 0600) from `generate()`
    when the file does not exist. Development only: production secrets come from the
    environment."""
    path = Path(key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting together must not write two different secrets.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate() + "\n")
    return path.read_text().strip()


@lru_cache(maxsize=4)
def _development_keyring_spec(key_file: str) -> str:
    spec = read_development_secret(key_file, lambda: generate_key_spec("dev1"))
    logger.warning(
        "KLAROS_ENCRYPTION_KEYS is not set: using the development key in %s. "
        "Never run production like this; keep real keys in the environment.",
        key_file,
    )
    return spec


@lru_cache(maxsize=8)
def _keyring_for(spec: str) -> Keyring:
    return Keyring.parse(spec)


def get_keyring() -> Keyring:
    spec = settings.KLAROS_ENCRYPTION_KEYS
    if not spec:
        if not settings.DEBUG:
            raise ImproperlyConfigured("KLAROS_ENCRYPTION_KEYS is required when DEBUG is off")
        spec = _development_keyring_spec(str(settings.KLAROS_DEV_KEY_FILE))
    return _keyring_for(spec)


def associated_data(label: str, field: str, pk: object, version: int, key_id: bytes) -> bytes:
    return b"|".join(
        [b"klaros", label.encode(), field.encode(), str(pk).encode(), bytes([version]), key_id]
    )


def encrypt(plaintext: str, *, label: str, field: str, pk: object) -> bytes:
    if pk is None:
        raise ValueError("encrypting needs the row's primary key (assign UUIDs in Python)")
    key = get_keyring().active
    nonce = os.urandom(12)
    aad = associated_data(label, field, pk, FORMAT_VERSION, key.key_id)
    sealed = AESGCM(key.material).encrypt(nonce, plaintext.encode(), aad)
    return bytes([FORMAT_VERSION]) + key.key_id + nonce + sealed


def key_id_of(blob: bytes) -> bytes:
    if len(blob) < HEADER_LENGTH + TAG_LENGTH or blob[0] != FORMAT_VERSION:
        raise DecryptionError("not a Klaros encrypted value (bad header)")
    return bytes(blob[1:5])


def decrypt(blob: bytes, *, label: str, field: str, pk: object) -> str:
    where = f"{label}.{field} of row {pk}"
    blob = bytes(blob)
    try:
        key_id = key_id_of(blob)
    except DecryptionError as exc:
        raise DecryptionError(f"{where}: {exc}") from None
    key = get_keyring().get(key_id)
    if key is None:
        raise DecryptionError(
            f"{where} is encrypted with key id {key_id.hex()}, which is not in "
            "KLAROS_ENCRYPTION_KEYS; restore that key (the value was left untouched)"
        )
    nonce = blob[5:HEADER_LENGTH]
    aad = associated_data(label, field, pk, blob[0], key_id)
    try:
        return AESGCM(key.material).decrypt(nonce, blob[HEADER_LENGTH:], aad).decode()
    except InvalidTag:
        raise DecryptionError(
            f"{where} does not decrypt: it was altered, or copied from another row or field"
        ) from None
