"""Tenant scoping: the ground floor every tenant-owned query stands on.

A scope is switched on once per entry point: the web middleware (from the member's current
tenant), the `in_tenant_scope` task decorator (from the tenant id a task was given) and the
webhook router (from the business number). Tenant-owned models use `TenantScopedManager`, which
refuses to build any queryset — `.all()`, `.exists()`, `.count()`, `.create()` alike — while no
scope is active, and filters by the active tenant otherwise. `unscoped(reason)` is the one,
named, explicit way to see every tenant (operator admin, routing, maintenance commands).

This module imports no app: models import it, never the other way round.
"""

from __future__ import annotations

import contextvars
import functools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import models


class ScopeError(RuntimeError):
    """A tenant-owned object was queried or written outside (or across) a tenant scope."""


@dataclass(frozen=True)
class Scope:
    tenant_id: uuid.UUID | None  # None together with all_tenants=True
    all_tenants: bool = False
    reason: str = ""


_active_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "klaros_tenant_scope", default=None
)


def _as_uuid(tenant: Any) -> uuid.UUID:
    value = getattr(tenant, "pk", tenant)
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise ScopeError(f"not a tenant id: {value!r}") from exc


@contextmanager
def tenant_scope(tenant: Any) -> Iterator[Scope]:
    """Run the block inside one tenant's scope (a Tenant instance or its id)."""
    scope = Scope(tenant_id=_as_uuid(tenant))
    token = _active_scope.set(scope)
    try:
        yield scope
    finally:
        _active_scope.reset(token)


@contextmanager
def unscoped(reason: str) -> Iterator[Scope]:
    """See every tenant's rows. Rare and explicit: say why, e.g. "operator admin"."""
    if not reason:
        raise ValueError("unscoped() needs a reason")
    scope = Scope(tenant_id=None, all_tenants=True, reason=reason)
    token = _active_scope.set(scope)
    try:
        yield scope
    finally:
        _active_scope.reset(token)


@contextmanager
def no_scope() -> Iterator[None]:
    """Leave any active scope for the block (tests and entry points use it to start clean)."""
    token = _active_scope.set(None)
    try:
        yield
    finally:
        _active_scope.reset(token)


def get_scope() -> Scope | None:
    return _active_scope.get()


def current_tenant_id() -> uuid.UUID:
    """The active tenant's id; raises ScopeError when no single tenant is active."""
    scope = _active_scope.get()
    if scope is None or scope.tenant_id is None:
        raise ScopeError("no tenant scope is active")
    return scope.tenant_id


F = TypeVar("F", bound=Callable[..., Any])


def in_tenant_scope(func: F) -> F:
    """Task decorator: the first argument is a tenant id; the task body runs in its scope.

    Tasks take ids, so a job whose arguments name tenant A but an object of tenant B finds
    nothing (the lookup is filtered to A) and fails with a scope error instead of leaking.
    """

    @functools.wraps(func)
    def wrapper(tenant_id: Any, *args: Any, **kwargs: Any) -> Any:
        with tenant_scope(tenant_id):
            return func(tenant_id, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class TenantScopedQuerySet(models.QuerySet):
    pass


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    """Default manager of every tenant-owned model.

    `tenant_field` is the lookup from the model to its tenant ("tenant" for a direct foreign
    key, "conversation__tenant" through a parent).
    """

    def __init__(self, tenant_field: str = "tenant") -> None:
        super().__init__()
        self.tenant_field = tenant_field

    def deconstruct(self):  # keeps migrations stable
        return (False, f"{__name__}.TenantScopedManager", None, (self.tenant_field,), {})

    def get_queryset(self) -> models.QuerySet:
        scope = _active_scope.get()
        if scope is None:
            raise ScopeError(
                f"{self.model._meta.label} was queried outside a tenant scope; enter "
                "tenant_scope(tenant) or, for operator tooling, unscoped(reason)"
            )
        queryset = super().get_queryset()
        if scope.all_tenants:
            return queryset
        return queryset.filter(**{self.tenant_field: scope.tenant_id})


class TenantOwnedModel(models.Model):
    """Abstract base for rows that carry their tenant directly.

    Saving checks the row belongs to the active scope, so a task or view that somehow holds a
    foreign object cannot write it while acting for another tenant.
    """

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")

    objects = TenantScopedManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        scope = _active_scope.get()
        if scope is None:
            raise ScopeError(f"{self._meta.label} saved outside a tenant scope")
        if not scope.all_tenants:
            if self.tenant_id is None:
                self.tenant_id = scope.tenant_id
            elif self.tenant_id != scope.tenant_id:
                raise ScopeError(f"{self._meta.label} belongs to another tenant")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any):
        scope = _active_scope.get()
        if scope is None:
            raise ScopeError(f"{self._meta.label} deleted outside a tenant scope")
        if not scope.all_tenants and self.tenant_id != scope.tenant_id:
            raise ScopeError(f"{self._meta.label} belongs to another tenant")
        return super().delete(*args, **kwargs)
