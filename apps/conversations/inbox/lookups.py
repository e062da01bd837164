"""Scoped lookups for the inbox views.

Every helper filters by the requesting member's tenant explicitly (the scoped manager is the
safety net, not the filter) and answers the same 404 for "does not exist" and "belongs to
another tenant", so a URL never tells a member of one tenant that another tenant's object exists.
"""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from apps.consent.models import KeywordRule
from apps.tenants.models import Membership, WhatsAppNumber

from ..models import Contact, Conversation, Message, Template

NOT_FOUND = "Not found."


def _tenant_id(request: HttpRequest) -> uuid.UUID:
    tenant = getattr(request, "tenant", None)
    if tenant is None:
        # A logged-in user without a workspace has no scope at all: nothing is theirs.
        raise Http404(NOT_FOUND)
    return tenant.pk


def _as_uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise Http404(NOT_FOUND) from exc


def tenant_numbers(request: HttpRequest) -> QuerySet[WhatsAppNumber]:
    return WhatsAppNumber.objects.filter(tenant_id=_tenant_id(request))


def tenant_conversations(request: HttpRequest) -> QuerySet[Conversation]:
    return Conversation.objects.filter(tenant_id=_tenant_id(request))


def _one_or_404(queryset: QuerySet, pk: object, **filters):
    """The tenant's row with this pk, or the one 404 for 'missing' and 'another tenant's'."""
    row = queryset.filter(pk=_as_uuid(pk), **filters).first()
    if row is None:
        raise Http404(NOT_FOUND)
    return row


def get_conversation_or_404(request: HttpRequest, pk: object) -> Conversation:
    return _one_or_404(tenant_conversations(request).select_related("contact", "number"), pk)


def get_message_or_404(request: HttpRequest, pk: object) -> Message:
    messages = Message.objects.filter(tenant_id=_tenant_id(request))
    return _one_or_404(messages.only("id", "conversation_id"), pk)


def get_contact_or_404(request: HttpRequest, pk: object) -> Contact:
    return _one_or_404(Contact.objects.filter(tenant_id=_tenant_id(request)), pk)


def get_number_or_404(request: HttpRequest, pk: object) -> WhatsAppNumber:
    return _one_or_404(tenant_numbers(request), pk)


def get_quotable_message_or_404(request: HttpRequest, conversation: Conversation, pk: object):
    """A message of this conversation (not merely of this tenant) that may be quoted."""
    messages = Message.objects.filter(tenant_id=_tenant_id(request)).only(
        "id", "conversation_id", "wamid", "type", "text", "direction"
    )
    return _one_or_404(messages, pk, conversation=conversation)


def get_template_or_404(request: HttpRequest, pk: object) -> Template:
    return _one_or_404(Template.objects.filter(tenant_id=_tenant_id(request)), pk)


def get_keyword_rule_or_404(request: HttpRequest, pk: object) -> KeywordRule:
    return _one_or_404(KeywordRule.objects.filter(tenant_id=_tenant_id(request)), pk)


def tenant_memberships(request: HttpRequest) -> QuerySet[Membership]:
    """The members of the requesting member's tenant (never another tenant's)."""
    return (
        Membership.objects.filter(tenant_id=_tenant_id(request))
        .select_related("user")
        .order_by("user__email")
    )


def uuid_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise Http404("Not found.") from exc


def thread_messages(conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(tenant_id=conversation.tenant_id, conversation=conversation)
