"""Issue 5's media flow in a real Chromium, against the Meta simulator over HTTP.

The simulator posts signed webhooks to the live server; with KLAROS_TASKS_SYNC=true (pytest)
the media download runs inline after the webhook's commit, so the customer's photo and PDF
are stored (privately, in this test's folder) before Alice opens the conversation. She sees
the photo inline (the browser really decodes it), downloads the PDF (the bytes are the
customer's), is told in the page that an HTML file named `photo.jpg` cannot be sent, and sends
a PDF named `../../evil.pdf`, which is stored and sent under a safe name."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.conversations.models import Conversation, Message
from apps.media.models import MediaObject
from apps.tenants.scoping import tenant_scope
from apps.whatsapp.testing import running_simulator
from tests.browser.conftest import csp_violations, login
from tests.conftest import PASSWORD
from tests.conversations.media_fixtures import (  # noqa: F401 (fixtures)
    HTML,
    PDF,
    media_root_fixture,
    png,
    stored_files,
)
from tests.conversations.sim_fixtures import sim_number

pytestmark = pytest.mark.browser

# Screenshots keep the caret: Playwright hides it by styling the inputs and leaves an empty
# `style` attribute behind, which htmx's settle then copies onto the swapped-in inputs (a
# blocked inline style that the CSP check below would report).
SHOT = {"full_page": True, "caret": "initial"}

CUSTOMER = "15550007777"


@pytest.fixture
def live_sim(live_server, acme, bravo, settings, media_root):
    settings.KLAROS_MEDIA_SEND_MODE = "upload"
    with running_simulator(
        f"{live_server.url}/webhooks/whatsapp/", numbers=[sim_number(acme), sim_number(bravo)]
    ) as sim:
        settings.WHATSAPP_GRAPH_URL = sim.graph_url()
        # Status webhooks a moment after each send, not while the dispatcher (inline, in the
        # live server's request thread) is still recording it: SQLite's shared in-memory test
        # database has no busy timeout between the live server's threads.
        sim.configure(status_delay=3.0)
        yield sim


def customer_sends(sim, world, spec: dict) -> dict:
    result = sim.inbound(
        {"phone_number_id": world.number.phone_number_id, "from": CUSTOMER, "name": "Dana Levi"}
        | spec
    )
    assert result["status"] == 200, result
    return result


def test_an_agent_sees_and_downloads_media_and_attachments_are_checked(
    page, live_server, live_sim, acme, media_root
):
    image = png(64, 48, (20, 120, 220))
    customer_sends(
        live_sim,
        acme,
        {
            "type": "image",
            "caption": "Is this <b>broken</b>?",
            "media": {"base64": _b64(image), "mime_type": "image/png"},
        },
    )
    customer_sends(
        live_sim,
        acme,
        {
            "type": "document",
            "filename": "invoice.pdf",
            "media": {"base64": _b64(PDF), "mime_type": "application/pdf"},
        },
    )
    with tenant_scope(acme.tenant):
        conversation = Conversation.objects.get()
        states = sorted(MediaObject.objects.values_list("kind", "state"))
    assert states == [("document", "stored"), ("image", "stored")]

    login(page, live_server, "alice@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/inbox/c/{conversation.pk}/")

    # The photo is drawn: the browser followed /media/<id>/ to a signed link and decoded it.
    img = page.locator("#thread-messages img.media-image")
    expect(img).to_have_count(1)
    img.scroll_into_view_if_needed()
    page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=10_000
    )
    assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [64, 48]
    src = img.get_attribute("src")
    assert src.startswith("/media/") and src.count("/") == 3  # /media/<uuid>/, nothing else
    expect(page.locator("#thread-messages .caption")).to_have_text("Is this <b>broken</b>?")
    html = page.content()
    assert str(acme.tenant.pk) not in html and "media-root" not in html
    page.screenshot(path="/tmp/media-thread-inbound.png", **SHOT)

    # An HTML page named photo.jpg is refused in the page, readably; nothing is stored or sent.
    files_before = stored_files(media_root)
    page.set_input_files(
        "#attach-file", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": HTML}]
    )
    page.click("#attach-form button[type=submit]")
    error = page.locator("#attach-form .attach-error")
    expect(error).to_have_text(
        '"photo.jpg" is really a web page (HTML). Web pages, SVG images and scripts cannot be sent.'
    )
    page.screenshot(path="/tmp/media-refused-html.png", **SHOT)
    assert stored_files(media_root) == files_before
    with tenant_scope(acme.tenant):
        assert not Message.objects.filter(direction="out").exists()

    # A path-traversal name is stored under a safe name and sent (upload mode).
    page.set_input_files(
        "#attach-file",
        files=[{"name": "../../evil.pdf", "mimeType": "application/pdf", "buffer": PDF}],
    )
    page.fill("#attach-caption", "Your invoice")
    page.click("#attach-form button[type=submit]")
    # The request also runs the dispatcher inline after its commit (sync tasks): allow time.
    expect(page.locator("#attach-form .attach-notice")).to_have_text(
        "File queued for sending.", timeout=15_000
    )
    sent = page.locator('#thread-messages [data-direction="out"][data-type="document"]')
    expect(sent).to_have_count(1, timeout=15_000)
    expect(sent.locator("a.media-download")).to_contain_text("evil.pdf")
    expect(sent.locator(".caption")).to_have_text("Your invoice")
    expect(sent).to_have_attribute(
        "data-status", re.compile(r"^(sent|delivered|read)$"), timeout=15_000
    )
    page.screenshot(path="/tmp/media-sent-document.png", **SHOT)
    with tenant_scope(acme.tenant):
        outbound = MediaObject.objects.get(direction="out")
    assert outbound.safe_name == "evil.pdf"
    assert ".." not in outbound.storage_key
    assert outbound.storage_key.startswith(f"{acme.tenant.pk}/")
    stored = media_root / outbound.storage_key
    assert stored.resolve().is_relative_to(media_root.resolve())
    assert stored.read_bytes() == PDF
    [send] = live_sim.sent_messages()
    assert send["payload"]["document"]["filename"] == "evil.pdf"
    assert set(send["payload"]["document"]) == {"id", "caption", "filename"}

    # The customer's PDF downloads with its bytes and name.
    link = page.locator("#thread-messages a.media-download", has_text="invoice.pdf")
    expect(link).to_be_visible()
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "invoice.pdf"
    with open(download.path(), "rb") as handle:
        assert handle.read() == PDF

    assert page.page_errors == []
    assert csp_violations(page) == []


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
