"""Reading and writing encrypted columns behind the ORM's back, as an attacker with SQL would."""

from __future__ import annotations

from django.db import connection


def _where(model, pk):
    return model._meta.pk.get_db_prep_value(pk, connection)


def read_raw(model, field_name: str, pk) -> bytes | None:
    column = model._meta.get_field(field_name).column
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {connection.ops.quote_name(column)} FROM "  # noqa: S608 (names from _meta)
            f"{connection.ops.quote_name(model._meta.db_table)} WHERE id = %s",
            [_where(model, pk)],
        )
        (value,) = cursor.fetchone()
    return None if value is None else bytes(value)


def write_raw(model, field_name: str, pk, blob: bytes) -> None:
    column = model._meta.get_field(field_name).column
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(model._meta.db_table)} SET "  # noqa: S608
            f"{connection.ops.quote_name(column)} = %s WHERE id = %s",
            [connection.Database.Binary(blob), _where(model, pk)],
        )
        assert cursor.rowcount == 1
