from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models

# The journal can be large when this runs, and Meta keeps posting: on PostgreSQL the indexes are
# built and dropped CONCURRENTLY, so webhooks are journaled meanwhile. Other databases (SQLite in
# development) take the plain operations.


class AddIndexOnline(AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return migrations.AddIndex.database_forwards(
            self, app_label, schema_editor, from_state, to_state
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return migrations.AddIndex.database_backwards(
            self, app_label, schema_editor, from_state, to_state
        )


class RemoveIndexOnline(RemoveIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return migrations.RemoveIndex.database_forwards(
            self, app_label, schema_editor, from_state, to_state
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return migrations.RemoveIndex.database_backwards(
            self, app_label, schema_editor, from_state, to_state
        )


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
