from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models

# The journal can be large when this runs, and Meta keeps posting: on PostgreSQL the indexes are
# built and dropped CONCURRENTLY, so webhooks are journaled meanwhile. Other databases (SQLite in
# development) take the plain operations.


def _online(concurrent, plain):
    """An operation that runs as `concurrent` on PostgreSQL and as `plain` elsewhere."""

    def run(direction):
        def database_method(self, app_label, schema_editor, from_state, to_state):
            chosen = concurrent if schema_editor.connection.vendor == "postgresql" else plain
            getattr(chosen, direction)(self, app_label, schema_editor, from_state, to_state)

        return database_method

    name = f"{plain.__name__}Online"
    return type(
        name,
        (concurrent,),
        {
            "database_forwards": run("database_forwards"),
            "database_backwards": run("database_backwards"),
            "__qualname__": name,
            "__module__": __name__,
        },
    )


AddIndexOnline = _online(AddIndexConcurrently, migrations.AddIndex)
RemoveIndexOnline = _online(RemoveIndexConcurrently, migrations.RemoveIndex)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("conversations", "0002_schedule_journal_sweep"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        AddIndexOnline(
            model_name="webhookevent",
            index=models.Index(
                condition=models.Q(("state", "pending")), fields=["id"], name="webhook_pending_idx"
            ),
        ),
        AddIndexOnline(
            model_name="webhookevent",
            index=models.Index(
                condition=models.Q(("state", "failed")),
                fields=["next_attempt_at"],
                name="webhook_retry_idx",
            ),
        ),
        AddIndexOnline(
            model_name="webhookevent",
            index=models.Index(
                condition=models.Q(("state", "quarantined")),
                fields=["id"],
                name="webhook_quarantined_idx",
            ),
        ),
        RemoveIndexOnline(model_name="webhookevent", name="webhook_state_idx"),
    ]
