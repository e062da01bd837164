"""`EncryptedSecretField`: a model field whose value is encrypted at rest (see `crypto`).

Reading the attribute decrypts lazily (with the row's primary key as associated data) and gives a
`Secret`; assigning a string stores it encrypted on the next save. A value loaded from the database
is kept as its exact ciphertext until someone assigns a new one, so a value that cannot be
decrypted is never re-saved in another form. QuerySet.update() with plaintext is refused: it would
bypass the per-row binding.

This module imports no app.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core import checks
from django.db import models

from .crypto import DecryptionError, Secret, decrypt, encrypt


class Sealed(bytes):
    """Ciphertext exactly as stored. Passing one to QuerySet.update() writes it unchanged."""


class EncryptedSecretDescriptor:
    def __init__(self, field: EncryptedSecretField) -> None:
        self.field = field

    def __get__(self, instance: models.Model | None, owner: type) -> Any:
        if instance is None:
            return self
        value = instance.__dict__.get(self.field.attname)
        if isinstance(value, Sealed):
            if not value:
                # Empty bytes are this field's own spelling of "no secret" (see pre_save and the
                # BinaryField default of a new row): nothing to decrypt, so nothing can fail.
                return Secret("")
            plaintext = decrypt(
                value, label=instance._meta.label, field=self.field.name, pk=instance.pk
            )
            secret = Secret(plaintext)
            # Cache the plaintext but remember the stored bytes, so an unchanged value is
            # written back byte for byte rather than re-encrypted.
            instance.__dict__[self.field.attname] = _Opened(secret, value)
            return secret
        if isinstance(value, _Opened):
            return value.secret
        return value

    def __set__(self, instance: models.Model, value: Any) -> None:
        if value is None or value == "":
            instance.__dict__[self.field.attname] = None if value is None else Secret("")
        elif isinstance(value, Sealed):
            instance.__dict__[self.field.attname] = value
        elif isinstance(value, (bytes, memoryview)):
            instance.__dict__[self.field.attname] = Sealed(bytes(value))
        elif isinstance(value, (str, Secret)):
            instance.__dict__[self.field.attname] = Secret(value)
        else:
            raise TypeError(f"{self.field.name} takes text, not {type(value).__name__}")


class _Opened:
    __slots__ = ("sealed", "secret")

    def __init__(self, secret: Secret, sealed: Sealed) -> None:
        self.secret = secret
        self.sealed = sealed

    def __repr__(self) -> str:
        return repr(self.secret)


class SecretInput(forms.PasswordInput):
    """Never renders the value; shows at most the last four characters as a hint."""

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(attrs, render_value=False)

    def get_context(self, name: str, value: Any, attrs: dict | None) -> dict:
        attrs = dict(attrs or {})
        attrs["autocomplete"] = "new-password"
        if isinstance(value, Secret) and value:
            attrs["placeholder"] = f"Set ({value.masked()}); leave blank to keep"
        elif value:
            attrs["placeholder"] = "Set; leave blank to keep"
        return super().get_context(name, None, attrs)


class SecretFormField(forms.CharField):
    widget = SecretInput

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("strip", True)
        super().__init__(*args, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        return value  # the widget masks it

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data)


class EncryptedSecretField(models.BinaryField):
    """Text secret encrypted with AES-256-GCM; write-only in forms (blank keeps the old value)."""

    description = "Encrypted secret"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["editable"] = True
        super().__init__(*args, **kwargs)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        model = getattr(self, "model", None)
        if model is not None and not model._meta.abstract:
            pk = model._meta.pk
            if not (isinstance(pk, models.UUIDField) and pk.default is not models.NOT_PROVIDED):
                errors.append(
                    checks.Error(
                        "encrypted fields need a primary key assigned in Python (UUIDField "
                        "with a default) so it can be bound into the ciphertext",
                        obj=self,
                        id="klaros.E001",
                    )
                )
        return errors

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        kwargs.pop("editable", None)
        return name, "apps.tenants.fields.EncryptedSecretField", args, kwargs

    def contribute_to_class(self, cls: type[models.Model], name: str, **kwargs: Any) -> None:
        super().contribute_to_class(cls, name, **kwargs)
        setattr(cls, self.attname, EncryptedSecretDescriptor(self))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Sealed | None:
        if value is None:
            return None
        return Sealed(bytes(value))

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        raw = model_instance.__dict__.get(self.attname)
        if raw is None:
            return None
        if isinstance(raw, Sealed):
            return raw  # unchanged since loaded: write the exact stored bytes back
        if isinstance(raw, _Opened):
            return raw.sealed
        if isinstance(raw, Secret):
            if not raw:
                return None if self.null else Sealed(b"")
            sealed = Sealed(
                encrypt(
                    raw.reveal(),
                    label=model_instance._meta.label,
                    field=self.name,
                    pk=model_instance.pk,
                )
            )
            model_instance.__dict__[self.attname] = _Opened(raw, sealed)
            return sealed
        raise TypeError(f"unexpected value in {self.name}")

    def get_prep_value(self, value: Any) -> Any:
        if value is None or isinstance(value, Sealed):
            return value
        if isinstance(value, _Opened):
            return value.sealed
        raise TypeError(
            f"{self.model._meta.label}.{self.name} is encrypted per row: assign it on an "
            "instance and save(); it cannot be filtered on or set through QuerySet.update()"
        )

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        value = self.get_prep_value(value) if not prepared else value
        if value is None:
            return None
        return connection.Database.Binary(bytes(value))

    def value_from_object(self, obj: models.Model) -> Any:
        try:
            return getattr(obj, self.attname)
        except DecryptionError:
            return "unreadable"

    def value_to_string(self, obj: models.Model) -> str:
        raise TypeError("encrypted secrets are not serialised; export them through their owner")

    def save_form_data(self, instance: models.Model, data: Any) -> None:
        if data:  # blank keeps the current secret: forms are write-only
            setattr(instance, self.attname, data)

    def formfield(self, **kwargs: Any) -> forms.Field:
        return SecretFormField(
            required=False,
            label=kwargs.get("label") or self.verbose_name.capitalize(),
            help_text=self.help_text or "Write-only: the current value is never shown.",
        )
