"""Operators sync a number's templates from the Django admin (an action on WhatsApp numbers)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.conversations.models import Template
from apps.tenants.scoping import tenant_scope

from .sim_fixtures import (  # noqa: F401 (fixtures)
    audit_events,
    fast_password_hashing_fixture,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def test_it_syncs_the_selected_numbers_templates_from_meta(sim, acme, bravo, operator):
    sim.set_templates(
        acme.number.waba_id,
        [
            {
                "name": "order_update",
                "language": "en_US",
                "status": "APPROVED",
                "category": "UTILITY",
                "components": [{"type": "BODY", "text": "Hi {{1}}"}],
            }
        ],
    )
    client = Client()
    client.force_login(operator)
    response = client.post(
        "/admin/tenants/whatsappnumber/",
        {"action": "sync_message_templates", "_selected_action": [str(acme.number.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 template(s), 1 new" in response.content.decode()
    with tenant_scope(acme.tenant):
        assert list(Template.objects.values_list("name", "status")) == [
            ("order_update", "APPROVED")
        ]
        assert audit_events(acme, "templates.synced")
    with tenant_scope(bravo.tenant):
        assert not Template.objects.exists()  # only the selected number was synced
