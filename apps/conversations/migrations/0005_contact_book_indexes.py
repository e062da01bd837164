import importlib

from django.db import migrations, models

# Contact and conversation tables are large and inbound traffic keeps writing them: on
# PostgreSQL the indexes are built CONCURRENTLY (the operation of 0003), plainly elsewhere.
AddIndexOnline = importlib.import_module(
    "apps.conversations.migrations.0003_journal_partial_indexes"
).AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("conversations", "0004_journal_database_defaults"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        AddIndexOnline(
            model_name="contact",
            index=models.Index(fields=["tenant", "id"], name="contact_tenant_book_idx"),
        ),
        AddIndexOnline(
            model_name="conversation",
            index=models.Index(
                fields=["tenant", "contact"],
                include=["id", "last_inbound_at"],
                name="conv_contact_book_idx",
            ),
        ),
    ]
