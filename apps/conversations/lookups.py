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

from .models import Contact, Conversation, Message, Template

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


def get_conversation_or_404(request: HttpRequest, pk: object) -> Conversation:
    conversation = (
        tenant_conversations(request)
        .select_related("contact", "number")
        .filter(pk=_as_uuid(pk))
        .first()
    )
    if conversation is None:
        raise Http404(NOT_FOUND)
    return conversation


def get_message_or_404(request: HttpRequest, pk: object) -> Message:
    message = (
        Message.objects.filter(tenant_id=_tenant_id(request), pk=_as_uuid(pk))
        .only("id", "conversation_id")
        .first()
    )
    if message is None:
        raise Http404(NOT_FOUND)
    return message


def get_contact_or_404(request: HttpRequest, pk: object) -> Contact:
    contact = Contact.objects.filter(tenant_id=_tenant_id(request), pk=_as_uuid(pk)).first()
    if contact is None:
        raise Http404(NOT_FOUND)
    return contact


def get_number_or_404(request: HttpRequest, pk: object) -> WhatsAppNumber:
    number = tenant_numbers(request).filter(pk=_as_uuid(pk)).first()
    if number is None:
        raise Http404(NOT_FOUND)
    return number


def get_quotable_message_or_404(request: HttpRequest, conversation: Conversation, pk: object):
    """A message of this conversation (not merely of this tenant) that may be quoted."""
    message = (
        Message.objects.filter(
            tenant_id=_tenant_id(request), conversation=conversation, pk=_as_uuid(pk)
        )
        .only("id", "conversation_id", "wamid", "type", "text", "direction")
        .first()
    )
    if message is None:
        raise Http404(NOT_FOUND)
    return message


def get_template_or_404(request: HttpRequest, pk: object) -> Template:
    template = Template.objects.filter(tenant_id=_tenant_id(request), pk=_as_uuid(pk)).first()
    if template is None:
        raise Http404(NOT_FOUND)
    return template


def get_keyword_rule_or_404(request: HttpRequest, pk: object) -> KeywordRule:
    rule = KeywordRule.objects.filter(tenant_id=_tenant_id(request), pk=_as_uuid(pk)).first()
    if rule is None:
        raise Http404(NOT_FOUND)
    return rule


def tenant_memberships(request: HttpRequest) -> QuerySet[Membership]:
    """The members of the requesting member's tenant (never another tenant's)."""
    return (
        Membership.objects.filter(tenant_id=_tenant_id(request))
        .select_related("user")
        .order_by("user__email")
    )
