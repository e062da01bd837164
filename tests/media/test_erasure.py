"""Erasure: deleting a MediaObject, or the message it belongs to, removes the stored bytes from
disk and from S3 once the deletion commits."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.db.models import RestrictedError

from apps.audit.models import AuditEvent
from apps.conversations.models import Message
from apps.media import services
from apps.media.models import MediaObject
from apps.tenants.scoping import tenant_scope

from .conftest import JPEG, PDF, make_message


def stored(world, *, message=None, data=JPEG, name="photo.jpg"):
    with tenant_scope(world.tenant):
        return services.store_outbound_upload(
            tenant=world.tenant,
            number=world.number,
            uploaded_file=SimpleUploadedFile(name, data, content_type=""),
            actor=world.owner,
            message_id=message.pk if message else None,
        )


def test_deleting_media_removes_its_bytes(media_backend, acme, django_capture_on_commit_callbacks):
    media_object = stored(acme)
    key = media_object.storage_key
    assert media_backend.exists(key)

    with tenant_scope(acme.tenant), django_capture_on_commit_callbacks(execute=True):
        services.delete_media(media_object, actor=acme.owner)

    assert not media_backend.exists(key)
    with tenant_scope(acme.tenant):
        assert not MediaObject.objects.filter(pk=media_object.pk).exists()
        assert AuditEvent.objects.filter(action="media.deleted").count() == 1
    if media_backend.root is not None:  # no empty token folder left behind
        assert not (media_backend.root / key).parent.exists()


def test_deleting_a_message_cascades_to_its_media_bytes(
    media_backend, acme, django_capture_on_commit_callbacks
):
    message = make_message(acme, type="document")
    first = stored(acme, message=message)
    second = stored(acme, message=message, data=PDF, name="a.pdf")

    with tenant_scope(acme.tenant), django_capture_on_commit_callbacks(execute=True):
        Message.objects.filter(pk=message.pk).delete()  # a bulk, cascading delete

    assert not media_backend.exists(first.storage_key)
    assert not media_backend.exists(second.storage_key)


def test_a_rolled_back_deletion_keeps_the_bytes(filesystem_backend, acme):
    media_object = stored(acme)
    pk = media_object.pk
    with tenant_scope(acme.tenant):
        with pytest.raises(RuntimeError), transaction.atomic():
            media_object.delete()
            raise RuntimeError("erasure failed half-way")
        assert MediaObject.objects.filter(pk=pk).exists()
    assert filesystem_backend.exists(media_object.storage_key)


def test_a_number_with_media_cannot_be_deleted_on_its_own(filesystem_backend, acme):
    stored(acme)
    with tenant_scope(acme.tenant), pytest.raises(RestrictedError):
        acme.number.delete()
