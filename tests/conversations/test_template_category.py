"""Meta re-categorises templates (`template_category_update`): a completed UTILITY to MARKETING
change moves the template, so the send gate holds it to the marketing rules from then on; the
notice of an impending change leaves the category; a malformed change fails alone."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.conversations.models import Template, WebhookEvent, WebhookState
from apps.conversations.outbound.gate import TEMPLATE, SendRefused, check_send
from apps.tenants.scoping import tenant_scope, unscoped

from .payload_builders import deliver, entry, notification, text_body
from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    make_conversation,
    make_template,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def completed(world, name="order_update", language="en_US", new="MARKETING", previous="UTILITY"):
    return {
        "field": "template_category_update",
        "value": {
            "message_template_id": 1234567890,
            "message_template_name": name,
            "message_template_language": language,
            "previous_category": previous,
            "new_category": new,
        },
    }


def impending(world, name="order_update"):
    return {
        "field": "template_category_update",
        "value": {
            "message_template_id": 1234567890,
            "message_template_name": name,
            "message_template_language": "en_US",
            "correct_category": "MARKETING",
            "new_category": "UTILITY",
            "category_update_timestamp": 1767312000,
        },
    }


def body(world, *changes):
    return notification(entry(*changes, waba_id=world.number.waba_id))


def category(world, name="order_update", language="en_US") -> str:
    with tenant_scope(world.tenant):
        return Template.objects.get(name=name, language=language).category


def test_a_completed_change_to_marketing_makes_the_gate_ask_for_an_opt_in(acme):
    template = make_template(acme, category="UTILITY")
    conversation = make_conversation(acme)
    with tenant_scope(acme.tenant):
        check_send(conversation, kind=TEMPLATE, template=template)  # utility: allowed

    deliver(Client(), acme, body(acme, completed(acme)))

    assert category(acme) == "MARKETING"
    with tenant_scope(acme.tenant):
        template.refresh_from_db()
        with pytest.raises(SendRefused) as refused:
            check_send(conversation, kind=TEMPLATE, template=template)
    assert "opt-in" in refused.value.message or "opt" in refused.value.code
    [event] = audit_events(acme, "template.category_changed")
    assert (event.actor_type, event.data) == ("meta", {"from": "UTILITY", "to": "MARKETING"})


def test_the_notice_of_an_impending_change_leaves_the_category(acme):
    make_template(acme, category="UTILITY")
    deliver(Client(), acme, body(acme, impending(acme)))
    assert category(acme) == "UTILITY"
    [event] = audit_events(acme, "template.category_change_announced")
    assert event.data["correct_category"] == "MARKETING"
    assert event.data["takes_effect_at"].startswith("2026-01-02")
    assert audit_events(acme, "template.category_changed") == []


def test_a_replayed_change_records_nothing_twice(acme):
    make_template(acme, category="UTILITY")
    client = Client()
    deliver(client, acme, body(acme, completed(acme)))
    deliver(client, acme, body(acme, completed(acme)))
    assert category(acme) == "MARKETING"
    assert len(audit_events(acme, "template.category_changed")) == 1


def test_it_matches_the_language_in_either_spelling_and_leaves_other_templates(acme, bravo):
    make_template(acme, category="UTILITY", language="pt_BR")
    make_template(acme, name="other", category="UTILITY")
    make_template(bravo, category="UTILITY")
    deliver(Client(), acme, body(acme, completed(acme, language="pt-BR")))
    assert category(acme, language="pt_BR") == "MARKETING"
    assert category(acme, name="other") == "UTILITY"
    assert category(bravo) == "UTILITY"  # another tenant's WABA and app


def test_a_malformed_change_fails_alone_beside_a_valid_message(acme):
    make_template(acme, category="UTILITY")
    broken = {"field": "template_category_update", "value": {"message_template_name": "x"}}
    message_body, _wamid = text_body(acme, "Hello")
    message_body["entry"][0]["id"] = acme.number.waba_id
    message_body["entry"][0]["changes"].append(broken)
    deliver(Client(), acme, message_body)
    with unscoped("test reads the journal"):
        [event] = WebhookEvent.objects.all()
    assert event.state == WebhookState.PROCESSED
    assert event.counts.get("template_category_malformed") == 1
    assert event.counts.get("messages_new") == 1
