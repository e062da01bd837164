"""`audit_checkpoint [--print-public-key]`: sign every chain's head and store it outside the
database (the hourly schedule runs the same function)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.audit.checkpoints import encode_public_key, key_fingerprint, public_key, write_checkpoint


class Command(BaseCommand):
    help = (
        "Write a signed checkpoint of every audit chain's head to the checkpoint storage; "
        "--print-public-key shows the public key an auditor verifies with instead."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--print-public-key",
            action="store_true",
            help="print the Ed25519 public key (base64) and its fingerprint, write nothing",
        )

    def handle(self, *args, **options):
        if options["print_public_key"]:
            key = public_key()
            self.stdout.write(f"public key: {encode_public_key(key)}")
            self.stdout.write(f"fingerprint: {key_fingerprint(key)}")
            return
        written = write_checkpoint()
        heads = written.document["heads"]
        self.stdout.write(
            f"checkpoint {written.name}: {len(heads)} chain head(s), "
            f"key {written.document['key_fingerprint']}"
        )
