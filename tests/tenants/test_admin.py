"""The operator admin for Meta apps and numbers: secrets are write-only, changes are audited."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.tenants.models import MetaApp, WhatsAppNumber
from apps.tenants.scoping import unscoped

from .rawsql import read_raw, write_raw


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def number_form(world, **changes) -> dict:
    number = world.number
    data = {
        "tenant": str(number.tenant_id),
        "app": str(number.app_id),
        "phone_number_id": number.phone_number_id,
        "waba_id": number.waba_id,
        "display_phone_number": number.display_phone_number,
        "access_token": "",
        "credential_status": number.credential_status,
    }
    data.update(changes)
    return data


def app_form(world, **changes) -> dict:
    data = {"app_id": world.app_id, "name": "", "app_secret": "", "verify_token": ""}
    data.update(changes)
    return data


def all_audit_data() -> str:
    with unscoped("test"):
        return json.dumps(list(AuditEvent.objects.values("action", "data", "object_id")))


def assert_no_secret(body: str, secret: str) -> None:
    assert secret not in body
    # At most the last four characters: everything before them is absent as well.
    assert secret[:-4] not in body


def test_it_never_shows_a_number_token_on_the_change_page(acme, bravo, operator_client):
    url = reverse("admin:tenants_whatsappnumber_change", args=[acme.number.pk])
    response = operator_client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert_no_secret(body, acme.credentials.access_token)
    assert acme.number.phone_number_id in body  # the page really is Acme's number
    assert 'type="password"' in body
    assert f"•••• {acme.credentials.access_token[-4:]}" in body  # the hint, and only that
    changelist = operator_client.get(reverse("admin:tenants_whatsappnumber_changelist"))
    for world in (acme, bravo):
        assert_no_secret(changelist.content.decode(), world.credentials.access_token)


def test_it_never_shows_app_secrets_on_the_change_page(acme, operator_client):
    url = reverse("admin:tenants_metaapp_change", args=[acme.number.app_id])
    body = operator_client.get(url).content.decode()
    assert acme.app_id in body
    assert_no_secret(body, acme.credentials.app_secret)
    assert_no_secret(body, acme.credentials.verify_token)


def test_it_keeps_secrets_when_the_form_leaves_them_blank(acme, operator_client):
    app_pk, number_pk = acme.number.app_id, acme.number.pk
    before = {
        "app_secret": read_raw(MetaApp, "app_secret", app_pk),
        "verify_token": read_raw(MetaApp, "verify_token", app_pk),
        "access_token": read_raw(WhatsAppNumber, "access_token", number_pk),
    }

    response = operator_client.post(
        reverse("admin:tenants_metaapp_change", args=[app_pk]), app_form(acme, name="Acme app")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    response = operator_client.post(
        reverse("admin:tenants_whatsappnumber_change", args=[number_pk]),
        number_form(acme, waba_id="299999999999"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    assert MetaApp.objects.get(pk=app_pk).name == "Acme app"
    assert before == {
        "app_secret": read_raw(MetaApp, "app_secret", app_pk),
        "verify_token": read_raw(MetaApp, "verify_token", app_pk),
        "access_token": read_raw(WhatsAppNumber, "access_token", number_pk),
    }
    with unscoped("test"):
        assert WhatsAppNumber.objects.get(pk=number_pk).waba_id == "299999999999"
        actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"metaapp.changed_by_operator", "whatsappnumber.changed_by_operator"} <= actions
    assert "whatsappnumber.credentials_changed" not in actions


def test_it_changes_a_token_and_audits_it_without_the_plaintext(acme, operator, operator_client):
    new_token = "EAA-operator-pasted-canary-9876"
    response = operator_client.post(
        reverse("admin:tenants_whatsappnumber_change", args=[acme.number.pk]),
        number_form(acme, access_token=new_token),
    )
    assert response.status_code == 302

    with unscoped("test"):
        number = WhatsAppNumber.objects.get(pk=acme.number.pk)
        event = AuditEvent.objects.get(action="whatsappnumber.credentials_changed")
    assert number.access_token.reveal() == new_token
    assert new_token.encode() not in read_raw(WhatsAppNumber, "access_token", number.pk)
    assert event.data == {"fields": ["access_token"]}
    assert event.object_id == str(number.pk)
    assert event.tenant_id == acme.tenant.pk
    assert (event.actor_type, event.actor_id) == ("operator", str(operator.pk))
    assert new_token not in all_audit_data()
    assert acme.credentials.access_token not in all_audit_data()

    page = operator_client.get(reverse("admin:tenants_whatsappnumber_change", args=[number.pk]))
    assert_no_secret(page.content.decode(), new_token)


def test_it_changes_an_app_secret_and_audits_it(acme, operator_client):
    response = operator_client.post(
        reverse("admin:tenants_metaapp_change", args=[acme.number.app_id]),
        app_form(acme, app_secret="new-app-secret-canary"),
    )
    assert response.status_code == 302
    app = MetaApp.objects.get(pk=acme.number.app_id)
    assert app.app_secret.reveal() == "new-app-secret-canary"
    assert app.verify_token.reveal() == acme.credentials.verify_token
    with unscoped("test"):
        event = AuditEvent.objects.get(action="metaapp.credentials_changed")
    assert event.data == {"fields": ["app_secret"]}
    assert "new-app-secret-canary" not in all_audit_data()


def test_it_opens_the_change_page_of_an_unreadable_number(acme, operator_client):
    blob = bytearray(read_raw(WhatsAppNumber, "access_token", acme.number.pk))
    blob[-1] ^= 1
    write_raw(WhatsAppNumber, "access_token", acme.number.pk, bytes(blob))
    url = reverse("admin:tenants_whatsappnumber_change", args=[acme.number.pk])
    assert operator_client.get(url).status_code == 200
    # Replacing the unreadable token is how an operator repairs it.
    response = operator_client.post(url, number_form(acme, access_token="EAA-repaired"))
    assert response.status_code == 302
    with unscoped("test"):
        assert WhatsAppNumber.objects.get(pk=acme.number.pk).access_token.reveal() == (
            "EAA-repaired"
        )


def test_it_refuses_the_admin_to_non_staff_members(acme, alice_client):
    url = reverse("admin:tenants_whatsappnumber_change", args=[acme.number.pk])
    response = alice_client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_it_adds_a_meta_app_through_the_admin(db, operator_client):
    response = operator_client.get(reverse("admin:tenants_metaapp_add"))
    assert response.status_code == 200
    response = operator_client.post(
        reverse("admin:tenants_metaapp_add"),
        {"app_id": "300000000055", "name": "", "app_secret": "s3cr3t-canary", "verify_token": "v"},
    )
    assert response.status_code == 302
    app = MetaApp.objects.get(app_id="300000000055")
    assert app.app_secret.reveal() == "s3cr3t-canary"
    assert "s3cr3t-canary" not in all_audit_data()


def test_it_asks_for_the_secrets_of_a_new_meta_app(db, operator_client):
    response = operator_client.post(
        reverse("admin:tenants_metaapp_add"),
        {"app_id": "300000000056", "name": "", "app_secret": "", "verify_token": ""},
    )
    assert response.status_code == 200  # the form again, with errors; not a 500
    assert not MetaApp.objects.filter(app_id="300000000056").exists()
