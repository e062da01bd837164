"""Fixtures and helpers for the sending tests: the Meta simulator over real HTTP, knowing acme's
and bravo's numbers with their real tokens and app secrets, and small builders for
conversations, templates and the witnesses (Graph requests, audit events).

Import what a test file needs explicitly, fixtures included::

    from .sim_fixtures import fast_password_hashing_fixture, sim_fixture  # noqa: F401
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.conversations.inbound.journal import drain_journal
from apps.conversations.models import Contact, Conversation, Message, Template, WebhookEvent
from apps.tenants.scoping import tenant_scope, unscoped
from apps.whatsapp.simulator import SimNumber
from apps.whatsapp.testing import running_simulator

from .payload_builders import WEBHOOK_URL

_seq = itertools.count(1)


@pytest.fixture(name="fast_password_hashing")
def fast_password_hashing_fixture(settings):
    """The two-tenant world hashes real passwords (seconds per user); these tests never log in
    with them. Listed before `acme` in a test's arguments (or made autouse by importing it under
    that name) it makes the world cheap to build."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sim_number(world) -> SimNumber:
    number = world.number
    return SimNumber(
        phone_number_id=number.phone_number_id,
        waba_id=number.waba_id,
        token=world.credentials.access_token,
        app_secret=world.credentials.app_secret,
        display_phone_number="".join(ch for ch in number.display_phone_number if ch.isdigit()),
    )


@pytest.fixture(name="sim")
def sim_fixture(acme, bravo, settings):
    """The simulator with acme's and bravo's numbers (real tokens and app secrets), Klaros's
    Graph URL pointing at it. No webhook URL: status webhooks are recorded in `sim.webhooks()`
    and fed to Klaros with `deliver_sim_webhooks`."""
    with running_simulator(None, numbers=[sim_number(acme), sim_number(bravo)]) as simulator:
        settings.WHATSAPP_GRAPH_URL = simulator.graph_url()
        yield simulator


# --- Builders -----------------------------------------------------------------------------------


def make_conversation(
    world,
    *,
    last_inbound_at: datetime | str | None = "now",
    name: str = "Dana Levi",
    wa_id: str | None = None,
) -> Conversation:
    """A conversation whose customer last wrote at `last_inbound_at` (default: a minute ago)."""
    if last_inbound_at == "now":
        last_inbound_at = timezone.now() - timedelta(minutes=1)
    with tenant_scope(world.tenant):
        contact = Contact.objects.create(
            tenant=world.tenant,
            wa_id=wa_id or f"1555{next(_seq):07d}",
            profile_name=name,
        )
        return Conversation.objects.create(
            tenant=world.tenant,
            number=world.number,
            contact=contact,
            last_inbound_at=last_inbound_at,
            last_message_at=last_inbound_at,
        )


def make_template(
    world,
    name: str = "order_update",
    *,
    category: str = "UTILITY",
    status: str = "APPROVED",
    language: str = "en_US",
    body: str = "Your order {{1}} has shipped.",
    waba_id: str | None = None,
    sim=None,
) -> Template:
    """A template row (and, given `sim`, the same template at the simulated Meta)."""
    components = [{"type": "BODY", "text": body}]
    if sim is not None:
        sim.set_templates(
            waba_id or world.number.waba_id,
            [
                {
                    "name": name,
                    "language": language,
                    "status": status,
                    "category": category,
                    "components": components,
                }
            ],
            replace=False,
        )
    with tenant_scope(world.tenant):
        return Template.objects.create(
            tenant=world.tenant,
            waba_id=waba_id or world.number.waba_id,
            name=name,
            language=language,
            status=status,
            category=category,
            components=components,
        )


# --- Witnesses ----------------------------------------------------------------------------------


def graph_sends(sim, world=None) -> list[dict[str, Any]]:
    """Every `POST /{phone_number_id}/messages` the simulator received (mark-as-read excluded)."""
    pnid = world.number.phone_number_id if world is not None else None
    return [
        r
        for r in sim.requests(pnid)
        if r["method"] == "POST"
        and r["path"].endswith("/messages")
        and not (isinstance(r.get("json"), dict) and r["json"].get("status"))
    ]


def audit_events(world, action: str | None = None) -> list[AuditEvent]:
    with tenant_scope(world.tenant):
        queryset = AuditEvent.objects.order_by("seq")
        if action is not None:
            queryset = queryset.filter(action=action)
        return list(queryset)


def reload(message: Message) -> Message:
    with tenant_scope(message.tenant_id):
        return Message.objects.get(pk=message.pk)


def outbound_messages(world) -> list[Message]:
    with tenant_scope(world.tenant):
        return list(Message.objects.filter(direction="out").order_by("created_at"))


def deliver_sim_webhooks(sim, *, client: Client | None = None, since: int = 0) -> int:
    """Post the webhooks the simulator produced (recorded, not delivered: it has no URL) to
    Klaros's real endpoint with the simulator's own signatures, then drain the journal. Returns
    how many bodies were posted; every journal row must end processed."""
    assert sim.wait_idle(10), "the simulator still has webhooks to produce"
    client = client or Client()
    posted = 0
    for record in sim.webhooks()[since:]:
        response = client.post(
            WEBHOOK_URL,
            data=record["body"].encode("ascii"),
            content_type="application/json",
            headers={"X-Hub-Signature-256": record["signature"]},
        )
        assert response.status_code == 200, response.content
        posted += 1
    drain_journal()
    assert_journal_processed()
    return posted


def assert_journal_processed() -> None:
    states = set(WebhookEvent.objects.values_list("state", flat=True))
    assert states <= {"processed"}, list(
        WebhookEvent.objects.exclude(state="processed").values("state", "reason")
    )


def messages_unscoped(**filters) -> list[Message]:
    with unscoped("test witness"):
        return list(Message.objects.filter(**filters))
