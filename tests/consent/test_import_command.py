import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.consent.models import ConsentEvent, ConsentSource
from apps.consent.services import consent_state
from apps.conversations.inbound.ingest import get_or_create_conversation
from apps.conversations.models import Contact, Template
from apps.conversations.outbound.gate import TEMPLATE, check_send
from apps.tenants.scoping import tenant_scope, unscoped

pytestmark = pytest.mark.django_db


def write(tmp_path, text: str):
    path = tmp_path / "consent.csv"
    path.write_text(text)
    return path


GOOD = (
    "phone,kind,scope,evidence,occurred_at\n"
    "+1 (555) 010-1111,opt_in,marketing,Checkout box ticked (order 1001),2026-11-01T10:00:00Z\n"
    "15550102222,opt_out,all,Asked in store to stop,\n"
)


def test_it_records_each_row_with_its_evidence_and_lets_marketing_through(acme, tmp_path):
    call_command("import_consent", "acme", str(write(tmp_path, GOOD)))
    with tenant_scope(acme.tenant):
        opted_in = Contact.objects.get(wa_id="15550101111")
        event = ConsentEvent.objects.get(contact=opted_in)
        assert event.source == ConsentSource.IMPORT
        assert event.evidence == {
            "text": "Checkout box ticked (order 1001)",
            "file": "consent.csv",
            "line": 2,
        }
        assert event.occurred_at.isoformat() == "2026-11-01T10:00:00+00:00"
        assert consent_state(opted_in).marketing_opted_in
        assert consent_state(Contact.objects.get(wa_id="15550102222")).suppressed
        # The imported opt-in is what the gate needs for a marketing template.
        conversation = get_or_create_conversation(acme.number, opted_in)
        template = Template.objects.create(
            tenant=acme.tenant,
            waba_id=acme.number.waba_id,
            name="promo",
            language="en_US",
            status="APPROVED",
            category="MARKETING",
        )
        check_send(conversation, kind=TEMPLATE, template=template, now=timezone.now())


def test_it_records_nothing_twice_when_the_same_file_is_imported_again(acme, tmp_path):
    path = write(tmp_path, GOOD)
    call_command("import_consent", "acme", str(path))
    call_command("import_consent", "acme", str(path))
    with unscoped("test"):
        assert ConsentEvent.objects.count() == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("phone,kind,scope\n1555,opt_in,all\n", "missing column(s): evidence"),
        # One bad row after two good ones (lines 2 and 3): the good ones are not written either.
        ("12ab,opt_in,all,form,\n", "line 4: phone"),
        ("15550101111,maybe,all,form,\n", "line 4: kind"),
        ("15550101111,opt_in,some,form,\n", "line 4: scope"),
        ("15550101111,opt_in,all,,\n", "line 4: evidence is required"),
        ("15550101111,opt_in,all,form,yesterday\n", "line 4: occurred_at"),
    ],
)
def test_it_refuses_a_bad_file_whole_with_the_line_and_writes_nothing(
    acme, tmp_path, text, message
):
    body = text if text.startswith("phone,") else GOOD + text
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("import_consent", "acme", str(write(tmp_path, body)))
    with unscoped("test"):
        assert ConsentEvent.objects.count() == 0
        assert Contact.objects.count() == 0


def test_it_only_writes_to_the_named_tenant(acme, bravo, tmp_path):
    call_command("import_consent", "bravo", str(write(tmp_path, GOOD)))
    with tenant_scope(acme.tenant):
        assert not Contact.objects.exists()
    with tenant_scope(bravo.tenant):
        assert Contact.objects.count() == 2


def test_a_dry_run_checks_without_writing(acme, tmp_path):
    call_command("import_consent", "acme", str(write(tmp_path, GOOD)), "--dry-run")
    with unscoped("test"):
        assert ConsentEvent.objects.count() == 0
