"""Recompute the audit chains and say where the first break in each is.

Per chain (one per tenant, named by the tenant id, and `deployment`): every event's hash is
recomputed from the stored values, each `prev_hash` must be the previous event's hash (the first
links to 64 zeros), sequence numbers run from 1 without gaps, the chain head must point at the
last event, and every signed checkpoint's (seq, hash) must still be there.

Events are read in keyset pages of `(chain, seq > last seen)` on the `(chain, seq)` unique index,
as plain tuples (no model instances), so memory stays flat and each page is one index range scan
however long the chain is. This module is the API: the `verify_audit` command prints its
reports, and the operator admin can show them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from apps.tenants.models import Tenant
from apps.tenants.scoping import unscoped

from .checkpoints import Checkpoint, CheckpointHead, load_checkpoints
from .models import (
    DEPLOYMENT_CHAIN,
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditChainHead,
    AuditEvent,
    canonical_event,
)

DEFAULT_CHUNK_SIZE = 5000
CHAIN_ERASED = "audit.chain_erased"

# What can be wrong, in the words the command prints.
HASH_MISMATCH = "hash mismatch"
MISSING_SEQ = "missing seq"
SEQ_OUT_OF_ORDER = "seq out of order"
PREV_HASH_MISMATCH = "prev_hash mismatch"
HEAD_MISMATCH = "head mismatch"
CHECKPOINT_MISMATCH = "checkpoint mismatch"

Progress = Callable[[str, int], None]  # (chain, events verified so far)

_UNSCOPED_REASON = "audit verification reads every chain"


@dataclass(frozen=True)
class ChainBreak:
    """The first place a chain is not what was recorded."""

    seq: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind} ({self.detail})"


@dataclass
class ChainReport:
    """The outcome of verifying one chain. `events` counts the events verified before the
    first break (all of them when `ok`); `head_seq`/`head_hash` are the last verified link."""

    chain: str
    label: str
    events: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints_checked: int = 0
    problem: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class VerificationReport:
    """Every chain's report plus the checkpoints that were read (and which of them failed)."""

    chains: list[ChainReport] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def bad_checkpoints(self) -> list[Checkpoint]:
        return [c for c in self.checkpoints if not c.valid]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.chains) and not self.bad_checkpoints


def _expected_hashes(heads: Iterable[CheckpointHead]) -> dict[int, list[CheckpointHead]]:
    by_seq: dict[int, list[CheckpointHead]] = {}
    for head in heads:
        by_seq.setdefault(head.seq, []).append(head)
    return by_seq


def _page(chain: str, after: int, chunk_size: int) -> list[tuple]:
    with unscoped(_UNSCOPED_REASON):
        return list(
            AuditEvent.objects.filter(chain=chain, seq__gt=after)
            .order_by("seq")
            .values_list(*HASHED_FIELDS, "hash")[:chunk_size]
        )


def _stored_head(chain: str) -> tuple[int, str] | None:
    return AuditChainHead.objects.filter(chain=chain).values_list("seq", "hash").first()


class _ChainWalk:
    """Walks one chain page by page, stopping at the first break."""

    def __init__(self, report: ChainReport, checkpoints: dict[int, list[CheckpointHead]]):
        self.report = report
        self.checkpoints = checkpoints
        self.expected_seq = 1
        self.previous_hash = GENESIS_HASH

    def feed(self, rows: list[tuple]) -> bool:
        """Check rows in seq order; False once a break is found."""
        report = self.report
        for row in rows:
            (chain, seq, prev_hash, created_at, action, actor_type, actor_id) = row[:7]
            object_type, object_id, data, stored_hash = row[7:]
            if seq != self.expected_seq:
                kind = MISSING_SEQ if seq > self.expected_seq else SEQ_OUT_OF_ORDER
                report.problem = ChainBreak(
                    self.expected_seq, kind, f"the next stored event is seq {seq}"
                )
                return False
            recomputed = hashlib.sha256(
                canonical_event(
                    chain=chain,
                    seq=seq,
                    prev_hash=prev_hash,
                    created_at=created_at,
                    action=action,
                    actor_type=actor_type,
                    actor_id=actor_id,
                    object_type=object_type,
                    object_id=object_id,
                    data=data,
                )
            ).hexdigest()
            if recomputed != stored_hash:
                report.problem = ChainBreak(
                    seq, HASH_MISMATCH, "the stored values do not hash to the stored hash"
                )
                return False
            if prev_hash != self.previous_hash:
                report.problem = ChainBreak(
                    seq, PREV_HASH_MISMATCH, "link broken: prev_hash is not the previous hash"
                )
                return False
            for checkpoint in self.checkpoints.get(seq, ()):
                report.checkpoints_checked += 1
                if checkpoint.hash != stored_hash:
                    report.problem = ChainBreak(
                        seq,
                        CHECKPOINT_MISMATCH,
                        f"a signed checkpoint has hash {checkpoint.hash[:16]}..., "
                        f"the chain has {stored_hash[:16]}...",
                    )
                    return False
            self.previous_hash = stored_hash
            self.expected_seq += 1
            report.events += 1
            report.head_seq = seq
            report.head_hash = stored_hash
        return True


def verify_chain(
    chain: str,
    *,
    checkpoints: Iterable[CheckpointHead] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    label: str | None = None,
) -> ChainReport:
    """Verify one chain, reading `chunk_size` events per query.

    `checkpoints` are the signed heads of this chain to hold it to (only pass heads from
    checkpoints whose signature verified). The head is compared after the last event; if
    events were appended meanwhile (a live system), reading continues up to the new head.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    report = ChainReport(chain=chain, label=label or chain)
    expected = _expected_hashes(h for h in checkpoints if h.chain == chain)
    walk = _ChainWalk(report, expected)
    after = 0
    for _round in range(10):  # each round catches up with a head that moved while reading
        while True:
            rows = _page(chain, after, chunk_size)
            if not walk.feed(rows):
                return report
            if progress is not None and rows:
                progress(chain, report.events)
            if len(rows) < chunk_size:
                break
            after = rows[-1][1]
        head = _stored_head(chain)
        if head is None or head[0] <= report.head_seq:
            break
        # record() commits an event and its head together, so a head ahead of the last event
        # read is either a concurrent append (the next page finds it) or a missing event
        # (the next page finds nothing and the comparison below reports it).
        rows = _page(chain, report.head_seq, 1)
        if not rows:
            break
        after = report.head_seq
    problems = []
    beyond = [seq for seq in expected if seq > report.head_seq]
    if beyond:
        seq = min(beyond)
        problems.append(
            ChainBreak(
                seq,
                CHECKPOINT_MISMATCH,
                f"a signed checkpoint has seq {seq}, the chain ends at seq {report.head_seq}",
            )
        )
    if head is None:
        if report.events:
            problems.append(ChainBreak(report.head_seq, HEAD_MISMATCH, "the chain has no head row"))
    elif head != (report.head_seq, report.head_hash):
        if head[0] != report.head_seq:
            seq = min(head[0], report.head_seq) + 1
            detail = f"the head says seq {head[0]}, the last event is seq {report.head_seq}"
        else:
            seq = head[0]
            detail = "the head's hash is not the last event's hash"
        problems.append(ChainBreak(seq, HEAD_MISMATCH, detail))
    if problems:
        report.problem = min(problems, key=lambda p: p.seq)
    return report


def chain_label(chain: str, slugs: dict[str, str] | None = None) -> str:
    """What people call a chain: its tenant's slug, `deployment`, or the bare id of a tenant
    that no longer exists."""
    if chain == DEPLOYMENT_CHAIN:
        return chain
    if slugs is None:
        slugs = {str(pk): slug for pk, slug in Tenant.objects.values_list("pk", "slug")}
    return slugs.get(chain, chain)


def erased_chains() -> set[str]:
    """Chains removed on purpose by `erase_audit_chain` (recorded on the deployment chain), so
    checkpoints that still name them are not reported as breaks."""
    with unscoped(_UNSCOPED_REASON):
        rows = AuditEvent.objects.filter(chain=DEPLOYMENT_CHAIN, action=CHAIN_ERASED).values_list(
            "data", flat=True
        )
        return {str(data.get("chain")) for data in rows if isinstance(data, dict)}


def existing_chains() -> set[str]:
    """Every chain with a head or with events (events without a head are a break too)."""
    with unscoped(_UNSCOPED_REASON):
        chains = set(AuditChainHead.objects.values_list("chain", flat=True))
        chains.update(AuditEvent.objects.order_by().values_list("chain", flat=True).distinct())
    return chains


def verify_all(
    *,
    tenant: Tenant | None = None,
    checkpoints: Sequence[Checkpoint] | None = None,
    public_key: Ed25519PublicKey | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> VerificationReport:
    """Verify every chain (or only `tenant`'s) against the signed checkpoints.

    `checkpoints` default to every checkpoint in storage, their signatures checked with
    `public_key` (default: derived from the configured signing key). Checkpoints whose
    signature fails are reported and their heads ignored. Chains are returned deployment
    first, then by label.
    """
    if checkpoints is None:
        checkpoints = load_checkpoints(key=public_key)
    trusted = [head for c in checkpoints if c.valid for head in c.heads]
    slugs = {str(pk): slug for pk, slug in Tenant.objects.values_list("pk", "slug")}
    if tenant is not None:
        chains = {str(tenant.pk)}
    else:
        erased = erased_chains()
        chains = existing_chains() | {h.chain for h in trusted if h.chain not in erased}
    by_chain: dict[str, list[CheckpointHead]] = {}
    for head in trusted:
        by_chain.setdefault(head.chain, []).append(head)
    reports = [
        verify_chain(
            chain,
            checkpoints=by_chain.get(chain, ()),
            chunk_size=chunk_size,
            progress=progress,
            label=chain_label(chain, slugs),
        )
        for chain in chains
    ]
    reports.sort(key=lambda r: (r.chain != DEPLOYMENT_CHAIN, r.label, r.chain))
    return VerificationReport(chains=reports, checkpoints=list(checkpoints))
