from django.db import migrations

CHECKPOINT = "apps.audit.tasks.write_audit_checkpoint"


def schedule_checkpoint(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        func=CHECKPOINT,
        defaults={"name": "Sign and store the audit chain heads", "schedule_type": "H",
                  "repeats": -1},
    )


def unschedule_checkpoint(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(func=CHECKPOINT).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(schedule_checkpoint, unschedule_checkpoint)]
