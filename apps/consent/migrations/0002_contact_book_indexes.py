import importlib

from django.db import migrations, models

# The ledger can be large and keeps growing with inbound traffic: on PostgreSQL the index is
# built CONCURRENTLY (the operation defined in conversations' 0003), plainly elsewhere.
AddIndexOnline = importlib.import_module(
    "apps.conversations.migrations.0003_journal_partial_indexes"
).AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("consent", "0001_initial"),
        ("conversations", "0004_journal_database_defaults"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        AddIndexOnline(
            model_name="consentevent",
            index=models.Index(fields=["tenant", "contact"], name="consent_contact_book_idx"),
        ),
    ]
