"""Webhook bodies with pricing objects, sent through the real webhook view and drain."""

from __future__ import annotations

from tests.conversations.factories import make_conversation, make_message
from tests.conversations.payload_builders import BASE_TS, status, status_body

MARKETING = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"}
UTILITY = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}
FREE_SERVICE = {
    "billable": False,
    "pricing_model": "PMP",
    "type": "free_customer_service",
    "category": "service",
}
CBP_MARKETING = {"billable": True, "pricing_model": "CBP", "category": "marketing"}
CBP_CONVERSATION = {"id": "8f842dbba350821654c9dfed31f5635c", "origin": {"type": "marketing"}}


def outbound_to(world, wa_id: str):
    """An outbound message of `world` to a contact with phone digits `wa_id`."""
    conversation = make_conversation(world, wa_id=wa_id)
    return make_message(conversation, direction="out", status="accepted")


def priced(wamid: str, pricing: dict, *, value="sent", ts=BASE_TS + 100, conversation=None):
    item = status(wamid, value, ts=ts, pricing=pricing)
    if conversation is not None:
        item["conversation"] = conversation
    return item


def body_of(world, *items) -> dict:
    return status_body(world, *items)
