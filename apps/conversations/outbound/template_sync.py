"""Keeping the tenant's templates in step with Meta (`GET /{waba_id}/message_templates`)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.services import Actor, record
from apps.tenants.models import WhatsAppNumber
from apps.whatsapp.graph import GraphClient

from ..models import Template


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    total: int = 0


def sync_templates(number: WhatsAppNumber, *, actor: Actor) -> SyncResult:
    """Fetch every template of the number's WABA and upsert them; templates Meta no longer
    lists are marked DELETED (kept, so past messages still name them). Raises GraphError."""
    with GraphClient(settings.WHATSAPP_GRAPH_URL, number.access_token.reveal()) as client:
        remote = client.list_message_templates(number.waba_id)
    result = SyncResult(total=len(remote))
    now = timezone.now()
    with transaction.atomic():
        seen = set()
        for item in remote:
            name = str(item.get("name") or "")
            language = str(item.get("language") or "").replace("-", "_")
            if not name or not language:
                continue
            seen.add((name, language))
            _, created = Template.objects.update_or_create(
                tenant_id=number.tenant_id,
                waba_id=number.waba_id,
                name=name,
                language=language,
                defaults={
                    "meta_id": str(item.get("id") or ""),
                    "status": str(item.get("status") or "PENDING").upper()[:20],
                    "category": str(item.get("category") or "").upper()[:30],
                    "parameter_format": str(item.get("parameter_format") or "POSITIONAL").upper(),
                    "components": item.get("components") or [],
                    "synced_at": now,
                },
            )
            if created:
                result.created += 1
            else:
                result.updated += 1
        for template in Template.objects.filter(waba_id=number.waba_id).exclude(status="DELETED"):
            if (template.name, template.language) not in seen:
                template.status = "DELETED"
                template.synced_at = now
                template.save(update_fields=["status", "synced_at", "updated_at"])
        record(
            "templates.synced",
            number,
            actor=actor,
            data={"created": result.created, "updated": result.updated, "total": result.total},
        )
    return result
