"""Tenant scoping: the manager that refuses to query outside a scope, and the ways in."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import models
from django.db.models import Count
from django.test.utils import isolate_apps

from apps.tenants.models import Tenant, WhatsAppNumber
from apps.tenants.scoping import (
    ScopeError,
    TenantScopedManager,
    get_scope,
    in_tenant_scope,
    tenant_scope,
    unscoped,
)

# Models that reach a tenant but deliberately keep a plain default manager. Each entry says why;
# adding one is a security review, not a convenience.
UNSCOPED_ALLOWLIST = {
    # The scope itself: tenants are what a scope is made of.
    "tenants.Tenant",
    # Memberships decide which scope a request enters, so they are read before any scope exists.
    "tenants.Membership",
    # Deployment-level: the webhook checks the app's signature before it knows any tenant.
    "tenants.MetaApp",
    # One row per audit chain (tenant chains and "deployment"), locked by record() in any scope.
    "audit.AuditChainHead",
}


def _path_to_tenant(model: type[models.Model], seen: frozenset = frozenset()) -> str | None:
    """The lookup from `model` to tenants.Tenant through forward foreign keys, if there is one."""
    if model._meta.label == "tenants.Tenant":
        return ""
    for field in model._meta.concrete_fields:
        if not ((field.is_relation and field.many_to_one) or field.one_to_one):
            continue
        target = field.related_model
        if target is None or target._meta.label in seen:
            continue
        rest = _path_to_tenant(target, seen | {model._meta.label})
        if rest is not None:
            return field.name if rest == "" else f"{field.name}__{rest}"
    return None


def _resolves_to_tenant(model: type[models.Model], lookup: str) -> bool:
    current = model
    for part in lookup.split("__"):
        field = current._meta.get_field(part)
        if not field.is_relation:
            return False
        current = field.related_model
    return current is Tenant


def unscoped_tenant_owned_models(candidates) -> list[str]:
    """Labels of tenant-owned models whose default manager is not a working TenantScopedManager."""
    offenders = []
    for model in candidates:
        label = model._meta.label
        if model._meta.abstract or (model._meta.proxy and label in UNSCOPED_ALLOWLIST):
            continue
        if label in UNSCOPED_ALLOWLIST:
            continue
        declared = getattr(model, "tenant_owned", False)
        path = _path_to_tenant(model)
        if path is None and not declared:
            continue
        manager = model._default_manager
        if not isinstance(manager, TenantScopedManager):
            offenders.append(f"{label} (reaches Tenant via {path or 'declaration'})")
        elif not _resolves_to_tenant(model, manager.tenant_field):
            offenders.append(f"{label} (tenant_field {manager.tenant_field!r} is not a tenant)")
    return offenders


def our_models():
    return [m for m in apps.get_models() if m.__module__.startswith("apps.")]


def test_it_gives_every_tenant_owned_model_the_scoped_manager():
    assert unscoped_tenant_owned_models(our_models()) == []


def test_it_knows_the_tenant_owned_models_it_checks():
    # Guards the walker itself: if it stopped finding paths, the test above would pass vacuously.
    owned = {m._meta.label for m in our_models() if _path_to_tenant(m) is not None}
    assert {"tenants.WhatsAppNumber", "tenants.Membership", "audit.AuditEvent"} <= owned
    assert "tenants.MetaApp" not in owned


@isolate_apps("apps.tenants")
def test_it_flags_a_tenant_owned_model_with_a_plain_manager():
    class Note(models.Model):  # noqa: DJ008 (throwaway models of this test)
        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)

        class Meta:
            app_label = "tenants"

    class NoteReply(models.Model):  # noqa: DJ008 (tenant-owned through its parent)
        note = models.ForeignKey(Note, on_delete=models.CASCADE)
        objects = TenantScopedManager("note__tenant")

        class Meta:
            app_label = "tenants"

    class BadReply(models.Model):  # noqa: DJ008
        note = models.ForeignKey(Note, on_delete=models.CASCADE)
        objects = TenantScopedManager("note")  # points at the parent, not the tenant

        class Meta:
            app_label = "tenants"

    offenders = unscoped_tenant_owned_models([Note, NoteReply, BadReply])
    assert offenders == [
        "tenants.Note (reaches Tenant via tenant)",
        "tenants.BadReply (tenant_field 'note' is not a tenant)",
    ]


OUTSIDE_SCOPE_QUERIES = {
    "all": lambda: list(WhatsAppNumber.objects.all()),
    "exists": lambda: WhatsAppNumber.objects.exists(),
    "filter_exists": lambda: WhatsAppNumber.objects.filter(phone_number_id="1").exists(),
    "count": lambda: WhatsAppNumber.objects.count(),
    "get": lambda: WhatsAppNumber.objects.get(phone_number_id="100000000001"),
    "first": lambda: WhatsAppNumber.objects.first(),
    "create": lambda: WhatsAppNumber.objects.create(phone_number_id="9"),
    "aggregate": lambda: WhatsAppNumber.objects.aggregate(n=Count("id")),
    "update": lambda: WhatsAppNumber.objects.update(display_phone_number="+1"),
    "delete": lambda: WhatsAppNumber.objects.all().delete(),
    "values": lambda: list(WhatsAppNumber.objects.values("phone_number_id")),
    "values_list": lambda: list(WhatsAppNumber.objects.values_list("pk", flat=True)),
    "in_bulk": lambda: WhatsAppNumber.objects.in_bulk(),
}


@pytest.mark.parametrize("query", sorted(OUTSIDE_SCOPE_QUERIES))
def test_it_refuses_every_query_outside_a_scope(acme, bravo, query):
    assert get_scope() is None
    with pytest.raises(ScopeError, match="outside a tenant scope"):
        OUTSIDE_SCOPE_QUERIES[query]()
    with unscoped("test: nothing was changed"):
        assert WhatsAppNumber.objects.count() == 2


def test_it_shows_only_the_active_tenants_rows(acme, bravo):
    with tenant_scope(acme.tenant):
        assert list(WhatsAppNumber.objects.values_list("phone_number_id", flat=True)) == [
            acme.number.phone_number_id
        ]
        assert not WhatsAppNumber.objects.filter(
            phone_number_id=bravo.number.phone_number_id
        ).exists()
        assert WhatsAppNumber.objects.count() == 1
        with pytest.raises(WhatsAppNumber.DoesNotExist):
            WhatsAppNumber.objects.get(pk=bravo.number.pk)
        assert WhatsAppNumber.objects.filter(pk=bravo.number.pk).update(waba_id="1") == 0
    with tenant_scope(bravo.tenant.pk):  # an id works as well as an instance
        assert [n.pk for n in WhatsAppNumber.objects.all()] == [bravo.number.pk]
    with unscoped("test"):
        assert WhatsAppNumber.objects.get(pk=bravo.number.pk).waba_id == bravo.number.waba_id


def test_it_sees_every_tenant_unscoped_and_only_with_a_reason(acme, bravo):
    with unscoped("test: operator tooling"):
        assert set(WhatsAppNumber.objects.values_list("pk", flat=True)) == {
            acme.number.pk,
            bravo.number.pk,
        }
    with pytest.raises(ValueError, match="reason"), unscoped(""):
        pass
    assert get_scope() is None


def test_it_restores_the_outer_scope_after_a_block(acme, bravo):
    with tenant_scope(acme.tenant):
        with tenant_scope(bravo.tenant):
            assert WhatsAppNumber.objects.get().pk == bravo.number.pk
        assert WhatsAppNumber.objects.get().pk == acme.number.pk
    assert get_scope() is None


def test_it_refuses_to_save_or_delete_another_tenants_object(acme, bravo):
    with unscoped("test"):
        foreign = WhatsAppNumber.objects.get(pk=bravo.number.pk)
    with tenant_scope(acme.tenant):
        foreign.display_phone_number = "+1 555 HACKED"
        with pytest.raises(ScopeError, match="another tenant"):
            foreign.save()
        with pytest.raises(ScopeError, match="another tenant"):
            foreign.delete()
    with pytest.raises(ScopeError, match="outside a tenant scope"):
        foreign.save()
    with unscoped("test"):
        assert WhatsAppNumber.objects.get(pk=bravo.number.pk).display_phone_number == (
            bravo.number.display_phone_number
        )


def test_it_gives_a_new_object_the_active_tenant(acme):
    with tenant_scope(acme.tenant):
        number = WhatsAppNumber(
            app=acme.number.app,
            phone_number_id="100000000009",
            waba_id="200000000009",
            display_phone_number="+1 555 0009",
            access_token="EAA-new",
        )
        number.save()
    assert number.tenant_id == acme.tenant.pk


@in_tenant_scope
def _read_number_display(tenant_id, number_id):
    """A task body as the decorator sees it: ids only."""
    return WhatsAppNumber.objects.get(pk=number_id).display_phone_number


def test_it_enters_the_scope_of_the_task_tenant(acme, bravo):
    assert _read_number_display(acme.tenant.pk, acme.number.pk) == acme.number.display_phone_number
    assert _read_number_display(str(bravo.tenant.pk), bravo.number.pk) == (
        bravo.number.display_phone_number
    )
    assert get_scope() is None


def test_it_finds_nothing_for_a_task_naming_tenant_a_and_an_object_of_b(acme, bravo):
    with pytest.raises(WhatsAppNumber.DoesNotExist):
        _read_number_display(acme.tenant.pk, bravo.number.pk)
    assert get_scope() is None


def test_it_refuses_a_task_without_a_tenant_id(acme):
    with pytest.raises(ScopeError, match="not a tenant id"):
        _read_number_display("not-a-uuid", acme.number.pk)
    with pytest.raises(ScopeError, match="not a tenant id"):
        _read_number_display(None, acme.number.pk)


def test_it_leaves_tenants_themselves_unscoped(acme, bravo):
    assert Tenant.objects.count() == 2
