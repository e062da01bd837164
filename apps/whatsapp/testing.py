"""Helpers for tests that talk to the Meta simulator over real HTTP.

Plain context managers (no pytest import), so any test file can wrap them in a fixture::

    @pytest.fixture
    def sim():
        with running_simulator() as sim:
            yield sim

    def test_it_sends(sim):
        client = GraphClient(sim.graph_url(), DEMO_NUMBER.token)
        ...

For webhooks, point the simulator at a :class:`WebhookReceiver` (or at Klaros's live server)::

    with running_webhook_receiver([DEMO_NUMBER.app_secret]) as hooks, \\
            running_simulator(hooks.url) as sim:
        ...
        hooks.wait_for(lambda posts: len(posts) >= 3)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from .signature import SIGNATURE_HEADER, verify_signature
from .simulator import MetaSimulator, SimNumber

__all__ = [
    "DEMO_NUMBER",
    "OTHER_NUMBER",
    "ReceivedWebhook",
    "WebhookReceiver",
    "running_simulator",
    "running_webhook_receiver",
    "wait_until",
]

T = TypeVar("T")

# Fake credentials for tests and demos; they mean nothing outside the simulator.
DEMO_NUMBER = SimNumber(
    phone_number_id="600700800900100",
    waba_id="100200300400500",
    token="sim-token-demo",  # noqa: S106 - simulator-only credential
    app_secret="sim-app-secret-demo",  # noqa: S106
    display_phone_number="15550001111",
)
OTHER_NUMBER = SimNumber(
    phone_number_id="600700800900200",
    waba_id="100200300400600",
    token="sim-token-other",  # noqa: S106 - simulator-only credential
    app_secret="sim-app-secret-other",  # noqa: S106
    display_phone_number="15550002222",
)


def wait_until(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


@contextmanager
def running_simulator(
    webhook_url: str | None = None,
    *,
    numbers: Iterable[SimNumber] = (DEMO_NUMBER, OTHER_NUMBER),
    seed: int | None = 0,
    chaos: bool = False,
    **config: Any,
) -> Iterator[MetaSimulator]:
    """Start a simulator on a free loopback port, yield it, stop it.

    Numbers default to :data:`DEMO_NUMBER` and :data:`OTHER_NUMBER` (copies, so tests may
    change them). Extra keyword arguments go to :meth:`MetaSimulator.configure`.
    """
    copies = [SimNumber(**vars(n)) for n in numbers]
    sim = MetaSimulator("127.0.0.1", 0, webhook_url, numbers=copies, seed=seed, chaos=chaos)
    if config:
        sim.configure(**config)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@dataclass(frozen=True)
class ReceivedWebhook:
    """One POST the receiver got."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    signature: str | None
    signature_valid: bool
    answered: int


class WebhookReceiver:
    """A tiny HTTP server standing in for Klaros's webhook endpoint.

    Verifies ``X-Hub-Signature-256`` against any of ``app_secrets`` and answers
    ``status_for(body)`` (200 by default; 401 when the signature does not verify, if
    ``reject_bad_signatures``).
    """

    def __init__(
        self,
        app_secrets: Iterable[str] = (),
        *,
        reject_bad_signatures: bool = True,
        status_for: Callable[[bytes], int] | None = None,
    ) -> None:
        self.app_secrets = list(app_secrets)
        self.reject_bad_signatures = reject_bad_signatures
        self.status_for = status_for
        self._posts: list[ReceivedWebhook] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver._record(self, body)

            def do_GET(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        """Where to point the simulator's ``webhook_url``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/webhooks/whatsapp/"

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        signature = handler.headers.get(SIGNATURE_HEADER)
        valid = any(verify_signature(body, signature, s) for s in self.app_secrets)
        if self.status_for is not None:
            status = self.status_for(body)
        else:
            status = 401 if self.reject_bad_signatures and not valid else 200
        post = ReceivedWebhook(
            path=handler.path,
            headers=dict(handler.headers.items()),
            body=body,
            signature=signature,
            signature_valid=valid,
            answered=status,
        )
        # Recorded before answering, so a sender that saw the answer also sees the record.
        with self._cond:
            self._posts.append(post)
            self._cond.notify_all()
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    @property
    def posts(self) -> list[ReceivedWebhook]:
        """Every POST received so far, oldest first."""
        with self._cond:
            return list(self._posts)

    def wait_for(
        self, predicate: Callable[[list[ReceivedWebhook]], bool], timeout: float = 5.0
    ) -> list[ReceivedWebhook]:
        """Block until ``predicate(posts)`` holds; return the posts. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._posts)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"webhook condition not met within {timeout}s ({len(self._posts)} posts)"
                    )
                self._cond.wait(remaining)
            return list(self._posts)

    def clear(self) -> None:
        """Forget received posts."""
        with self._cond:
            self._posts.clear()

    def start(self) -> WebhookReceiver:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_webhook_receiver(
    app_secrets: Iterable[str] = (DEMO_NUMBER.app_secret, OTHER_NUMBER.app_secret),
    **kwargs: Any,
) -> Iterator[WebhookReceiver]:
    """Start a :class:`WebhookReceiver` on a free loopback port, yield it, stop it."""
    receiver = WebhookReceiver(app_secrets, **kwargs).start()
    try:
        yield receiver
    finally:
        receiver.stop()
