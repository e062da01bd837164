from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import record
from apps.tenants.crypto import get_keyring
from apps.tenants.encryption import rotate_encryption_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret under the active (first) key of KLAROS_ENCRYPTION_KEYS. "
        "Batched and resumable: run it again after an interruption."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, batch_size, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        active = get_keyring().active
        self.stdout.write(f"Rotating to key {active.name} ({active.key_id.hex()})")

        def progress(label, field, report):
            self.stdout.write(
                f"  {label}.{field}: {report.rotated} rotated, "
                f"{report.already_current} already current"
            )

        report = rotate_encryption_keys(batch_size=batch_size, progress=progress)
        record(
            "encryption.keys_rotated",
            actor="command:rotate_encryption_keys",
            data={
                "active_key_id": active.key_id.hex(),
                "rotated": report.rotated,
                "already_current": report.already_current,
                "raced": report.raced,
                "unreadable": len(report.unreadable),
            },
        )
        self.stdout.write(
            f"Rotated {report.rotated}, already current {report.already_current}, "
            f"changed concurrently {report.raced}."
        )
        if report.unreadable:
            for item in report.unreadable:
                self.stderr.write(f"UNREADABLE {item.reason}")
            raise CommandError(
                f"{len(report.unreadable)} value(s) could not be read and were left untouched"
            )
        self.stdout.write(self.style.SUCCESS("Done."))
