"""An owner downloads the contact book from the settings page and reads the workspace's
Activity, in a real Chromium."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from apps.audit.services import record
from apps.tenants.scoping import tenant_scope
from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD
from tests.conversations.factories import make_contact

pytestmark = pytest.mark.browser


def test_an_owner_downloads_the_contact_book_from_the_settings_page(page, live_server, acme, bravo):
    make_contact(acme.tenant, wa_id="15550000101", name="Dana Levi")
    make_contact(acme.tenant, wa_id="15550000102", name="=cmd|' /C calc'!A0")
    make_contact(bravo.tenant, wa_id="15550000901", name="Bravo canary")
    login(page, live_server, "alice@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/inbox/settings/")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export contacts (CSV)").click()
    download = download_info.value
    assert download.suggested_filename.startswith("contacts-acme-")
    text = Path(download.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["name"] for r in rows) == ["'=cmd|' /C calc'!A0", "Dana Levi"]
    assert "canary" not in text
    assert csp_violations(page) == []


def test_an_owner_reads_and_filters_the_activity(page, live_server, acme):
    with tenant_scope(acme.tenant):
        record("consent.opt_out", acme.tenant, actor=acme.owner, data={"scope": "all"})
        record("send.queued", acme.tenant, actor="system:outbox")
    login(page, live_server, "alice@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/inbox/")
    page.get_by_role("link", name="Activity: the workspace's audit trail").click()
    assert page.locator("h1").inner_text() == "Activity"
    assert page.locator("tr[data-action='consent.opt_out']").count() == 1
    assert "alice@acme.test" in page.locator("tr[data-action='consent.opt_out']").inner_text()

    # No button: klaros.js submits the filter when the selection changes.
    with page.expect_navigation():
        page.locator("#activity-kind").select_option(label="Sending")
    assert page.locator("tr[data-action='consent.opt_out']").count() == 0
    assert page.locator("tr[data-action='send.queued']").count() == 1
    assert csp_violations(page) == []
    page.screenshot(path="/tmp/klaros-activity.png", full_page=True)


def test_an_owner_downloads_a_contacts_data_bundle_from_the_contact_page(page, live_server, acme):
    import json
    import zipfile

    from tests.conversations.factories import make_conversation, make_message

    contact = make_contact(acme.tenant, wa_id="15550000111", name="Dana Levi")
    make_message(make_conversation(acme, contact=contact), text="Hello there")
    login(page, live_server, "alice@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/inbox/contacts/{contact.pk}/")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download this contact's data (ZIP)").click()
    archive = zipfile.ZipFile(download_info.value.path())
    assert json.loads(archive.read("contact.json"))["profile"]["profile_name"] == "Dana Levi"
    assert b"Hello there" in archive.read("messages.jsonl")
    assert csp_violations(page) == []
