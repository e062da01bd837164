"""Statements compiled by the ORM once per database and reused: for the webhook's hot path.

Every webhook Meta sends costs one journal INSERT and one read of the drain flag. Through
`Model.objects.create()` and `.exists()` the ORM builds, resolves and compiles the same SQL on
every request, which cost more CPU than everything else in the request together. These helpers
let Django compile the statement once (the SQL and value conversions of the ORM call they
replace; an INSERT may leave columns to their database defaults) and then only bind fresh values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.sql.subqueries import InsertQuery


class CompiledInsert:
    """`model.objects.create(**values)` for one model, compiled once per database alias.

    The row is built as a model instance (defaults, `auto_now_add`, the conversions of
    `get_db_prep_save`) and inserted with the INSERT ... RETURNING that `create()` would send;
    the instance gets its primary key. `also_return(connection)` may add SQL expressions to the
    RETURNING clause (evaluated in the same statement); their values are returned with the
    instance. With `only`, just those columns are sent and the database fills in the others.
    No signals are sent: use it only for models without save signal receivers.
    """

    def __init__(
        self,
        model: type[models.Model],
        *,
        only: Sequence[str] | None = None,
        also_return: Callable[[BaseDatabaseWrapper], str] | None = None,
    ):
        self.model = model
        self.also_return = also_return
        meta = model._meta
        self.fields = [
            field
            for field in meta.local_concrete_fields
            if not field.generated and field is not meta.auto_field
        ]
        if only is not None:
            # Send only these columns; the database fills in the others (their `db_default`,
            # or NULL). The returned instance does not see the values it chose.
            sent = [meta.get_field(name) for name in only]
            for field in self.fields:
                if field not in sent and not (field.has_db_default() or field.null):
                    raise ValueError(f"{field.name} has no db_default and is not nullable")
            self.fields = sent
        self._sql: dict[str, str] = {}

    def _compile(self, obj: models.Model, using: str) -> str:
        query = InsertQuery(self.model)
        query.insert_values(self.fields, [obj])
        compiler = query.get_compiler(using=using)
        compiler.returning_fields = [self.model._meta.pk]
        [(sql, _params)] = compiler.as_sql()
        if self.also_return is not None:
            if " RETURNING " not in sql:
                raise NotImplementedError(f"{compiler.connection.vendor} has no INSERT RETURNING")
            sql = f"{sql}, {self.also_return(compiler.connection)}"
        return sql

    def create(self, using: str = "default", **values) -> tuple[models.Model, tuple]:
        connection = connections[using]
        obj = self.model(**values)
        params = [
            field.get_db_prep_save(field.pre_save(obj, True), connection=connection)
            for field in self.fields
        ]
        sql = self._sql.get(using)
        if sql is None:
            sql = self._sql[using] = self._compile(obj, using)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            [returned] = connection.ops.fetch_returned_insert_rows(cursor)
        obj.pk = returned[0]
        obj._state.adding = False
        obj._state.db = using
        return obj, tuple(returned[1:])
