"""django-q2 tasks of the conversations app. They take ids (or nothing), are enqueued after
commit and are idempotent."""

import logging

from django.conf import settings

from apps.tenants.models import CredentialStatus
from apps.tenants.scoping import in_tenant_scope
from apps.whatsapp.graph import GraphClient, GraphError, GraphTransportError

from .inbound.journal import drain_journal, prune_journal, sweep_journal
from .models import Direction, Message
from .outbound.dispatcher import dispatch_outbox as _dispatch_outbox
from .outbound.dispatcher import sweep_outbox

logger = logging.getLogger(__name__)


def drain_webhook_journal() -> int:
    """Drain the webhook journal in batches (one task serves a whole burst)."""
    return drain_journal()


def sweep_pending_work() -> int:
    """Scheduled every minute: re-schedule a drain or dispatcher that a lost task (or a flushed
    broker) left behind, pick up outbox retries due later than a dispatcher waits, and delete
    processed webhook bodies past their retention."""
    scheduled = sweep_journal() + sweep_outbox()
    prune_journal()  # last: a failure here must not keep the sweeps from running
    return scheduled


def dispatch_outbox() -> int:
    """Send queued outbound messages (one dispatcher serves a whole burst)."""
    return _dispatch_outbox()


@in_tenant_scope
def mark_read_at_meta(tenant_id: str, message_id: str) -> bool:
    """Tell Meta the agent has read the customer's message (blue ticks on the customer's phone).

    Enqueued after commit when an agent opens a conversation; never runs inside the request.
    Idempotent (marking a message read twice is harmless at Meta). Failures are logged, not
    retried and not shown: a missing read receipt costs nothing, a retried one late is noise.
    """
    message = (
        Message.objects.filter(pk=message_id, direction=Direction.INBOUND, wamid__isnull=False)
        .select_related("conversation__number")
        .first()
    )
    if message is None:
        return False
    number = message.conversation.number
    if number.credential_status != CredentialStatus.HEALTHY:
        logger.info("not marking %s read: the number's credentials are broken", message_id)
        return False
    try:
        with GraphClient(settings.WHATSAPP_GRAPH_URL, number.access_token.reveal()) as client:
            client.mark_read(number.phone_number_id, message.wamid)
    except (GraphError, GraphTransportError, ValueError) as exc:
        logger.warning("mark-as-read of message %s at Meta failed: %s", message_id, exc)
        return False
    return True
