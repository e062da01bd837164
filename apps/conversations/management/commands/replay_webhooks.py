from django.core.management.base import BaseCommand

from apps.audit.services import record
from apps.conversations.inbound.journal import drain_journal, replay_quarantined
from apps.conversations.models import WebhookEvent, WebhookState


class Command(BaseCommand):
    help = (
        "Send quarantined webhook events through routing again (after connecting the number "
        "they name). Already-stored messages stay single."
    )

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", type=int, help="journal ids (default: all)")
        parser.add_argument(
            "--now", action="store_true", help="drain in this process instead of the worker"
        )

    def handle(self, *args, ids, now, **options):
        count = replay_quarantined(ids or None)
        record("webhook.replayed", actor="command:replay_webhooks", data={"count": count})
        self.stdout.write(f"{count} quarantined event(s) queued for replay.")
        if now and count:
            drain_journal()
            left = WebhookEvent.objects.filter(state=WebhookState.QUARANTINED).count()
            self.stdout.write(f"Drained; {left} event(s) still quarantined.")
