"""A real browser for the pages people use: Playwright driving Debian's Chromium.

Chromium comes from apt (`/usr/bin/chromium`), never from `playwright install`. When it is
missing, browser tests skip on a developer machine and fail under `CI=true`, so CI can never
pass by silently not running them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# Playwright's sync API runs an asyncio event loop in this thread; Django refuses ORM calls from
# a thread with a running loop unless told that this is deliberate (the test thread is not
# serving async requests, so it is safe here).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path(os.environ.get("KLAROS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # containers and CI runners have no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Records every Content-Security-Policy violation, including ones Chromium does not log.
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


@pytest.fixture(autouse=True)
def _one_live_request_at_a_time_on_sqlite(monkeypatch):
    """Django's live server shares the test's in-memory SQLite connection with every request
    thread (a limit LiveServerTestCase documents; PostgreSQL, and Klaros on an SQLite file,
    give each thread its own connection). Two requests at once, such as the page's poll and a
    status webhook from the simulator, can then break each other's statements ("cannot open
    savepoint - SQL statements in progress"). On that database the live server handles one
    request at a time (connections stay concurrent). The wait is bounded, so a request that
    calls back into the live server cannot hang a test."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection

    if connection.vendor != "sqlite":
        return
    handle = WSGIHandler.__call__
    turn = threading.Lock()

    def one_at_a_time(self, environ, start_response):
        took_turn = turn.acquire(timeout=30)
        try:
            return handle(self, environ, start_response)
        finally:
            if took_turn:
                turn.release()

    monkeypatch.setattr(WSGIHandler, "__call__", one_at_a_time)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session. Playwright's `launch()` gives it a fresh,
    temporary user-data-dir (profile) that is deleted when the browser closes."""
    if not CHROMIUM.exists():
        _unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    except Exception as exc:
        playwright.stop()
        _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture
def page(browser, live_server) -> Iterator:
    """A page in a fresh browser context (own cookies and storage) for each test.

    `page.console_messages` collects everything the page logs, `page.page_errors` uncaught
    exceptions, and `csp_violations(page)` reads what the CSP blocked.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(CSP_LISTENER)
    context.set_default_timeout(15_000)
    new_page = context.new_page()
    new_page.console_messages = []
    new_page.page_errors = []
    new_page.on("console", lambda message: new_page.console_messages.append(message))
    new_page.on("pageerror", lambda error: new_page.page_errors.append(error))
    yield new_page
    context.close()


def csp_violations(page) -> list[str]:
    """CSP violations seen by the page's listener and in the console."""
    seen = page.evaluate("window.__cspViolations || []")
    logged = [
        m.text
        for m in page.console_messages
        if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text
    ]
    return [*seen, *logged]


def login(page, live_server, email: str, password: str) -> None:
    """Log in through the real form and wait for the page that follows."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
