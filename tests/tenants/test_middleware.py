"""TenantScopeMiddleware and the tenant switcher: every request runs in exactly one scope."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.tenants.middleware import SESSION_KEY

PROBE = "/test-probe/scope/"


@pytest.fixture(autouse=True)
def _probe_urls(settings):
    settings.ROOT_URLCONF = "tests.tenants.probe_urls"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_runs_a_members_request_in_their_tenants_scope(acme, bravo, alice_client, bob_client):
    assert alice_client.get(PROBE).json() == {
        "tenant_id": str(acme.tenant.pk),
        "all_tenants": False,
        "numbers": [acme.number.phone_number_id],
    }
    assert bob_client.get(PROBE).json()["numbers"] == [bravo.number.phone_number_id]


def test_it_runs_an_anonymous_request_without_a_scope(acme):
    assert Client().get(PROBE).json() == {
        "tenant_id": None,
        "all_tenants": False,
        "numbers": "refused",
    }


def test_it_runs_a_user_without_memberships_without_a_scope(acme, operator):
    # An operator outside the admin is just a user with no tenant: nothing tenant-owned is visible.
    assert client_for(operator).get(PROBE).json()["numbers"] == "refused"


def test_it_lets_a_member_of_two_tenants_switch(acme, bravo, carol):
    client = client_for(carol)
    first = client.get(PROBE).json()["tenant_id"]
    other = bravo.tenant if first == str(acme.tenant.pk) else acme.tenant
    other_world = bravo if other == bravo.tenant else acme

    response = client.post(reverse("switch_tenant"), {"tenant": str(other.pk), "next": "/inbox/"})

    assert response.status_code == 302
    assert response["Location"] == "/inbox/"
    assert client.session[SESSION_KEY] == str(other.pk)
    assert client.get(PROBE).json() == {
        "tenant_id": str(other.pk),
        "all_tenants": False,
        "numbers": [other_world.number.phone_number_id],
    }


def test_it_gives_404_when_switching_to_a_tenant_one_is_not_a_member_of(acme, bravo, agnes):
    client = client_for(agnes)
    response = client.post(reverse("switch_tenant"), {"tenant": str(bravo.tenant.pk)})
    assert response.status_code == 404
    assert SESSION_KEY not in client.session
    assert client.get(PROBE).json()["tenant_id"] == str(acme.tenant.pk)


def test_it_ignores_a_stale_session_tenant(acme, bravo, alice_client):
    # A session naming a tenant she is not (or no longer) a member of falls back to her own.
    session = alice_client.session
    session[SESSION_KEY] = str(bravo.tenant.pk)
    session.save()
    assert alice_client.get(PROBE).json()["numbers"] == [acme.number.phone_number_id]


def test_it_refuses_to_switch_with_get(acme, bravo, carol):
    response = client_for(carol).get(reverse("switch_tenant"), {"tenant": str(bravo.tenant.pk)})
    assert response.status_code == 405


@pytest.mark.parametrize(
    "next_url", ["//evil.com", "https://evil.com/inbox/", "///evil.com", "\\\\evil.com"]
)
def test_it_does_not_follow_an_open_redirect(acme, bravo, carol, next_url):
    response = client_for(carol).post(
        reverse("switch_tenant"), {"tenant": str(bravo.tenant.pk), "next": next_url}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("inbox")


def test_it_runs_staff_unscoped_in_the_admin(acme, bravo, operator):
    response = client_for(operator).get(reverse("admin:tenants_whatsappnumber_changelist"))
    assert response.status_code == 200
    body = response.content.decode()
    assert acme.number.phone_number_id in body
    assert bravo.number.phone_number_id in body


def test_it_sends_a_member_on_the_admin_to_the_admin_login(acme, alice_client):
    for url in (reverse("admin:index"), reverse("admin:tenants_whatsappnumber_changelist")):
        response = alice_client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_it_gives_a_staff_member_of_a_tenant_their_scope_outside_the_admin(acme, bravo):
    # is_staff widens the admin only; the inbox stays scoped to the member's tenant.
    acme.owner.is_staff = True
    acme.owner.save()
    assert client_for(acme.owner).get(PROBE).json()["numbers"] == [acme.number.phone_number_id]
