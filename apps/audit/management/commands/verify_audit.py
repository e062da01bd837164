"""`verify_audit [--tenant SLUG]`: recompute the audit chains; exit 1 naming the first break."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.audit.checkpoints import decode_public_key
from apps.audit.verification import DEFAULT_CHUNK_SIZE, ChainReport, verify_all
from apps.tenants.models import Tenant

PROGRESS_EVERY_SECONDS = 5.0


class Command(BaseCommand):
    help = (
        "Recompute every audit chain (hashes, links, sequence numbers, heads) and check it "
        "against the signed checkpoints. Exits 1 naming the chain and seq of the first break."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", metavar="SLUG", help="verify only this tenant's chain")
        parser.add_argument(
            "--public-key",
            metavar="BASE64",
            help="check checkpoint signatures with this Ed25519 public key (as printed by "
            "`audit_checkpoint --print-public-key`) instead of the configured signing key",
        )
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=DEFAULT_CHUNK_SIZE,
            help=f"events read per query (default {DEFAULT_CHUNK_SIZE})",
        )

    def handle(self, *args, **options):
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant with the slug {options['tenant']!r}")
        public_key = None
        if options["public_key"]:
            try:
                public_key = decode_public_key(options["public_key"])
            except ValueError as exc:
                raise CommandError(f"--public-key: {exc}") from None
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1")

        last_progress = time.monotonic()

        def progress(chain: str, done: int) -> None:
            # Long runs say where they are on stderr, so stdout stays one line per chain.
            nonlocal last_progress
            now = time.monotonic()
            if now - last_progress >= PROGRESS_EVERY_SECONDS:
                last_progress = now
                self.stderr.write(f"verifying {chain}: {done} events")

        report = verify_all(
            tenant=tenant,
            public_key=public_key,
            chunk_size=options["chunk_size"],
            progress=progress,
        )
        for checkpoint in report.checkpoints:
            if not checkpoint.valid:
                self.stdout.write(f"checkpoint {checkpoint.name}: {checkpoint.problem}")
        valid = len(report.checkpoints) - len(report.bad_checkpoints)
        self.stdout.write(
            f"checkpoints: {len(report.checkpoints)} read, {valid} with a valid signature"
        )
        for chain in report.chains:
            self.stdout.write(self.describe(chain))
        broken = [c for c in report.chains if not c.ok]
        if broken or report.bad_checkpoints:
            raise CommandError(
                f"audit trail does not verify: {len(broken)} broken chain(s), "
                f"{len(report.bad_checkpoints)} bad checkpoint(s)"
            )

    @staticmethod
    def describe(chain: ChainReport) -> str:
        if chain.ok:
            return f"{chain.label}: {chain.events} events verified, head {chain.head_hash}"
        problem = chain.problem
        return (
            f"{chain.label}: BROKEN at seq {problem.seq}: {problem.kind} ({problem.detail}); "
            f"chain {chain.chain}, {chain.events} events verified before it"
        )
