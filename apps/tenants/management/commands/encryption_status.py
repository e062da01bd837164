from django.core.management.base import BaseCommand, CommandError

from apps.tenants.crypto import get_keyring
from apps.tenants.encryption import encryption_status


class Command(BaseCommand):
    help = "Count encrypted values per key and list every value that does not decrypt."

    def handle(self, *args, **options):
        keyring = get_keyring()
        report = encryption_status()
        self.stdout.write(f"Active key: {keyring.active.name} ({keyring.active.key_id.hex()})")
        self.stdout.write(f"Encrypted values: {report.total}")
        for name, count in sorted(report.per_key.items()):
            self.stdout.write(f"  {name}: {count}")
        if report.unreadable:
            for item in report.unreadable:
                self.stderr.write(f"UNREADABLE {item.reason}")
            raise CommandError(f"{len(report.unreadable)} value(s) do not decrypt")
        self.stdout.write(self.style.SUCCESS("Every value decrypts."))
