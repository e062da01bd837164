"""Append-only in the database too (PostgreSQL): refuse UPDATE and DELETE of audit events and
any change to a chain head other than a forward advance over recorded events (record() and
record_many()), even through raw SQL.

The one escape is tenant erasure (`apps.audit.services.erase_audit_chain`): DELETE of a row is
allowed when the transaction set `klaros.audit_erase_chain` to that row's chain
(`set_config(..., true)` is transaction-local). SQLite has no such triggers; the model and
queryset guards stand alone there. A database superuser can still disable triggers: the signed
checkpoints are what catch that.
"""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION klaros_audit_event_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.chain = current_setting('klaros.audit_erase_chain', true) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % refused on chain % seq %',
        TG_OP, OLD.chain, OLD.seq
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE OR REPLACE FUNCTION klaros_audit_head_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.chain = current_setting('klaros.audit_erase_chain', true) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit chain heads are never deleted: chain %', OLD.chain
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- record() moves a head one event forward, record_many() several: always forward, over
    -- events that are all recorded, to the one just inserted; nothing else may change it.
    IF NEW.chain = OLD.chain AND NEW.seq > OLD.seq AND EXISTS (
        SELECT 1 FROM audit_auditevent e
        WHERE e.chain = NEW.chain AND e.seq = NEW.seq AND e.hash = NEW.hash
    ) AND (
        SELECT count(*) FROM audit_auditevent e
        WHERE e.chain = NEW.chain AND e.seq > OLD.seq AND e.seq <= NEW.seq
    ) = NEW.seq - OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit chain heads only advance to the next recorded event: chain % seq % -> %',
        OLD.chain, OLD.seq, NEW.seq
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_event_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION klaros_audit_event_append_only();

CREATE TRIGGER audit_head_forward_only
    BEFORE UPDATE OR DELETE ON audit_auditchainhead
    FOR EACH ROW EXECUTE FUNCTION klaros_audit_head_forward_only();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_auditchainhead;
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS klaros_audit_head_forward_only();
DROP FUNCTION IF EXISTS klaros_audit_event_append_only();
"""


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_schedule_audit_checkpoint")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
