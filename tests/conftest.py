"""The two-tenant world every test file builds on.

Alice (owner) and Agnes (agent) work for Acme; Bob (owner) works for Bravo; Carol is a member of
both. Each tenant has a connected WhatsApp number with its own Meta app. Nothing of Acme's may
ever be visible to Bravo's members, and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from apps.tenants.models import Membership, Role, Tenant, WhatsAppNumber
from apps.tenants.scoping import no_scope, tenant_scope
from apps.tenants.services import NumberCredentials, add_member, connect_number, create_tenant

PASSWORD = "correct-horse-battery-staple-42"


@dataclass
class TenantWorld:
    tenant: Tenant
    owner: object
    number: WhatsAppNumber
    credentials: NumberCredentials
    app_id: str


@pytest.fixture(autouse=True)
def _start_without_scope():
    """Every test starts outside any tenant scope, as every entry point does."""
    with no_scope():
        yield


def make_tenant(slug: str, name: str, *, pnid: str, waba: str, app_id: str, owner_email: str):
    tenant = create_tenant(slug, name, actor="test")
    owner = add_member(tenant, owner_email, role=Role.OWNER, password=PASSWORD, actor="test").user
    credentials = NumberCredentials(
        access_token=f"EAA-{slug}-token-canary-{pnid}",
        app_secret=f"{slug}-app-secret-canary",
        verify_token=f"{slug}-verify-token",
    )
    number = connect_number(
        tenant,
        phone_number_id=pnid,
        waba_id=waba,
        display_phone_number=f"+1 555 {pnid[-4:]}",
        app_id=app_id,
        credentials=credentials,
        actor="test",
    )
    return TenantWorld(tenant, owner, number, credentials, app_id)


@pytest.fixture
def acme(db) -> TenantWorld:
    return make_tenant(
        "acme",
        "Acme",
        pnid="100000000001",
        waba="200000000001",
        app_id="300000000001",
        owner_email="alice@acme.test",
    )


@pytest.fixture
def bravo(db) -> TenantWorld:
    return make_tenant(
        "bravo",
        "Bravo",
        pnid="100000000002",
        waba="200000000002",
        app_id="300000000002",
        owner_email="bob@bravo.test",
    )


@pytest.fixture
def agnes(acme):
    """An agent of Acme."""
    return add_member(
        acme.tenant, "agnes@acme.test", role=Role.AGENT, password=PASSWORD, actor="test"
    ).user


@pytest.fixture
def carol(acme, bravo):
    """A member of both tenants (agent in Acme, admin in Bravo)."""
    user = add_member(
        acme.tenant, "carol@both.test", role=Role.AGENT, password=PASSWORD, actor="test"
    ).user
    Membership.objects.create(user=user, tenant=bravo.tenant, role=Role.ADMIN)
    return user


@pytest.fixture
def operator(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("operator@klaros.test", PASSWORD)


def logged_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(acme) -> Client:
    return logged_in_client(acme.owner)


@pytest.fixture
def bob_client(bravo) -> Client:
    return logged_in_client(bravo.owner)


@pytest.fixture
def in_acme(acme):
    with tenant_scope(acme.tenant):
        yield acme
