"""Signed audit checkpoints: every chain's head, signed with an Ed25519 key kept outside the
database, stored outside the database.

The hash chain alone shows that rows were edited, deleted or inserted, but not that a database
superuser rewrote a whole chain and recomputed every hash and the head. A checkpoint closes that
gap: it records (chain, seq, hash) of every head at one moment, signed with
`KLAROS_AUDIT_SIGNING_KEY`, in the `audit_checkpoints` storage (the media storage by default,
ideally a bucket with S3 Object Lock that the database administrator cannot write). Verification
(`apps.audit.verification`) then checks that the event at each checkpointed seq still has the
checkpointed hash.

A checkpoint document is JSON:

    {"format": "klaros-audit-checkpoint/1", "created_at": "2026-12-01T22:00:00.000000Z",
     "key_fingerprint": "sha256:<hex of SHA-256 of the raw public key>",
     "heads": [{"chain": "...", "seq": 42, "hash": "<hex>", "recorded_at": "<event time>"}],
     "signature": "<base64 Ed25519 signature>"}

The signature covers every member but `signature`, serialised as `signed_bytes()` does (sorted
keys, no spaces, ASCII), so an auditor can check it with the public key alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.db.models import OuterRef, Subquery

from apps.tenants.crypto import read_development_secret
from apps.tenants.scoping import unscoped

from .models import AuditChainHead, AuditEvent

logger = logging.getLogger("klaros.audit")

FORMAT = "klaros-audit-checkpoint/1"
PREFIX = "audit-checkpoints"  # not a tenant id, so it never collides with media keys


class CheckpointError(Exception):
    """A checkpoint document could not be read or is malformed."""


# --- The key ------------------------------------------------------------------------------------


def _raw_private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@lru_cache(maxsize=4)
def _development_signing_key(key_file: str) -> str:
    encoded = read_development_secret(
        key_file,
        lambda: base64.b64encode(_raw_private_bytes(Ed25519PrivateKey.generate())).decode(),
    )
    logger.warning(
        "KLAROS_AUDIT_SIGNING_KEY is not set: signing audit checkpoints with the development "
        "key in %s. Never run production like this.",
        key_file,
    )
    return encoded


@lru_cache(maxsize=8)
def _private_key_for(encoded: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ImproperlyConfigured("KLAROS_AUDIT_SIGNING_KEY is not valid base64") from exc
    if len(raw) != 32:
        raise ImproperlyConfigured(
            f"KLAROS_AUDIT_SIGNING_KEY must be 32 bytes (Ed25519), not {len(raw)}"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def signing_key() -> Ed25519PrivateKey:
    """The configured Ed25519 private key (the generated development key when DEBUG is on and
    none is set). Never log or return its bytes."""
    encoded = settings.KLAROS_AUDIT_SIGNING_KEY
    if not encoded:
        if not settings.DEBUG:
            raise ImproperlyConfigured("KLAROS_AUDIT_SIGNING_KEY is required when DEBUG is off")
        encoded = _development_signing_key(str(settings.KLAROS_AUDIT_DEV_SIGNING_KEY_FILE))
    return _private_key_for(encoded)


def public_key() -> Ed25519PublicKey:
    """The public half of the configured signing key: all an auditor needs."""
    return signing_key().public_key()


def encode_public_key(key: Ed25519PublicKey) -> str:
    """Base64 of the 32-byte raw public key (what `audit_checkpoint --print-public-key` shows
    and `verify_audit --public-key` takes)."""
    return base64.b64encode(_raw_public_bytes(key)).decode()


def decode_public_key(encoded: str) -> Ed25519PublicKey:
    """The inverse of `encode_public_key`; ValueError with a readable message otherwise."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("the public key is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(_raw_public_bytes(key)).hexdigest()


# --- Documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointHead:
    """One chain's head as a checkpoint saw it."""

    chain: str
    seq: int
    hash: str
    recorded_at: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back from storage. `problem` is None when its signature verifies with
    the expected key; otherwise it says why, and its heads must not be trusted."""

    name: str
    created_at: str
    key_fingerprint: str
    heads: tuple[CheckpointHead, ...]
    problem: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


def signed_bytes(document: dict[str, Any]) -> bytes:
    """The bytes the signature covers: every member except `signature`, canonical JSON."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def current_heads() -> list[CheckpointHead]:
    """Every chain's head, read in one query (a consistent moment), with the time of the event
    each head points to."""
    with unscoped("audit checkpoint: every chain's head"):
        event_time = AuditEvent.objects.filter(chain=OuterRef("chain"), seq=OuterRef("seq")).values(
            "created_at"
        )[:1]
        rows = (
            AuditChainHead.objects.filter(seq__gt=0)
            .annotate(recorded_at=Subquery(event_time))
            .order_by("chain")
            .values_list("chain", "seq", "hash", "recorded_at")
        )
        return [
            CheckpointHead(chain, seq, hash_, recorded_at.isoformat() if recorded_at else "")
            for chain, seq, hash_, recorded_at in rows
        ]


def sign_checkpoint(
    heads: Iterable[CheckpointHead], *, key: Ed25519PrivateKey, now: datetime | None = None
) -> dict[str, Any]:
    """A signed checkpoint document for `heads`."""
    now = now or datetime.now(UTC)
    document: dict[str, Any] = {
        "format": FORMAT,
        "created_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "key_fingerprint": key_fingerprint(key.public_key()),
        "heads": [
            {"chain": h.chain, "seq": h.seq, "hash": h.hash, "recorded_at": h.recorded_at}
            for h in heads
        ],
    }
    document["signature"] = base64.b64encode(key.sign(signed_bytes(document))).decode()
    return document


def checkpoint_storage() -> Storage:
    """Where checkpoints live: `STORAGES["audit_checkpoints"]` (the media storage unless
    KLAROS_AUDIT_CHECKPOINT_BUCKET names a bucket of their own)."""
    return storages["audit_checkpoints"]


@dataclass(frozen=True)
class WrittenCheckpoint:
    name: str
    document: dict[str, Any]


def write_checkpoint(*, now: datetime | None = None) -> WrittenCheckpoint:
    """Sign every chain's head and store it as `audit-checkpoints/<UTC timestamp>.json`; also
    log the signed heads, so a log shipped elsewhere is a second copy. Holds no secret: only
    the public key's fingerprint and the signature leave this function."""
    now = now or datetime.now(UTC)
    document = sign_checkpoint(current_heads(), key=signing_key(), now=now)
    payload = json.dumps(document, sort_keys=True, indent=1).encode()
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = checkpoint_storage().save(f"{PREFIX}/{stamp}.json", ContentFile(payload))
    logger.info(
        "audit checkpoint %s: %s",
        name,
        json.dumps(document, sort_keys=True, separators=(",", ":")),
    )
    return WrittenCheckpoint(name=name, document=document)


def read_checkpoint(
    name: str, raw: bytes, *, key: Ed25519PublicKey, fingerprint: str | None = None
) -> Checkpoint:
    """Parse one stored checkpoint and check its signature with `key`."""
    fingerprint = fingerprint or key_fingerprint(key)
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError("not a Klaros audit checkpoint")
        heads = tuple(
            CheckpointHead(
                chain=str(h["chain"]),
                seq=int(h["seq"]),
                hash=str(h["hash"]),
                recorded_at=str(h.get("recorded_at", "")),
            )
            for h in document["heads"]
        )
        signature = base64.b64decode(document["signature"], validate=True)
        created_at = str(document.get("created_at", ""))
        signed_by = str(document.get("key_fingerprint", ""))
    except (ValueError, KeyError, TypeError, binascii.Error, CheckpointError) as exc:
        return Checkpoint(name, "", "", (), problem=f"unreadable checkpoint ({exc})")
    problem = None
    if signed_by != fingerprint:
        problem = f"signed by another key ({signed_by}, expected {fingerprint})"
    else:
        try:
            key.verify(signature, signed_bytes(document))
        except InvalidSignature:
            problem = "bad signature"
    return Checkpoint(name, created_at, signed_by, heads, problem=problem)


def load_checkpoints(*, key: Ed25519PublicKey | None = None) -> list[Checkpoint]:
    """Every checkpoint in storage, oldest first, each with its signature checked against `key`
    (default: the public half of the configured signing key)."""
    key = key or public_key()
    fingerprint = key_fingerprint(key)
    storage = checkpoint_storage()
    try:
        _dirs, files = storage.listdir(PREFIX)
    except FileNotFoundError:  # the filesystem backend before the first checkpoint
        return []
    found = []
    for filename in sorted(f for f in files if f.endswith(".json")):
        name = f"{PREFIX}/{filename}"
        with storage.open(name, "rb") as handle:
            raw = handle.read()
        found.append(read_checkpoint(name, raw, key=key, fingerprint=fingerprint))
    return found
