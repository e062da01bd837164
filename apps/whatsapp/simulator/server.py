"""The server: :class:`MetaSimulator`, which creates the state all its parts share and
serves them over HTTP (a threading server on loopback by default, one thread per
connection) while a second thread delivers webhooks; and the request handler, which hands
``/_sim/...`` to the control API and everything else to the Graph endpoints."""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from .control import handle_control
from .core import SimulatorCore
from .errors import fbtrace_id
from .state import Reply, SimConfig, SimNumber

logger = logging.getLogger("klaros.whatsapp.simulator")

MAX_BODY_BYTES = 120 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler sleeping in a delay fault must not block stop()
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of more connections than that (the
    # dispatcher opens dozens at once) overflowed it, and the dropped SYNs were retried a
    # second later, a stall that only showed up as a slow answer.
    request_queue_size = 128
    sim: MetaSimulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer are normal here (timeouts, dropped connections).
        logger.debug("simulator: error serving %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetaSimulator(SimulatorCore):
    """The Meta stand-in. ``start()`` serves in a background thread; ``stop()`` ends it.

    ``port=0`` picks a free port; read it back from :attr:`url`. All rates default to 0, so
    webhooks arrive one per POST, in order, exactly once, unless ``chaos=True`` or
    :meth:`configure` says otherwise.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        *,
        numbers: Iterable[SimNumber] = (),
        seed: int | None = None,
        chaos: bool = False,
        enforce_window: bool = False,
    ) -> None:
        # The state of every part; each mixin declares the types of what it uses.
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._numbers = {}
        self._media = {}
        self._templates = {}
        self._faults = []
        self._fault_seq = 0
        self._requests = []
        self._webhooks = []
        self._sent = {}
        self._customers = {}
        self._windows = {}
        self._opted_out = set()
        self._send_times = {}
        self._stats = {}
        self._pending = []
        self._held = False
        self._inflight = 0
        self._sends_in_flight = 0
        self._sends_in_flight_max = 0
        self._config = SimConfig(
            **(SimConfig.CHAOS if chaos else {}), enforce_window=enforce_window
        )
        self._seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - test chaos, not cryptography
        # Its own generator, so latency draws do not shift the chaos sequence.
        self._latency_rng = random.Random(seed)  # noqa: S311 - test latency, not cryptography
        self._url_key = secrets.token_bytes(32)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._session = requests.Session()
        self._session.trust_env = False
        for number in numbers:
            self.add_number(number)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MetaSimulator:
        """Bind, then serve HTTP and deliver webhooks in background threads."""
        if self._server is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server
        server = server_cls((self.host, self.port), _Handler)
        server.sim = self
        self._server = server
        self.port = server.server_address[1]
        self._stopping = False
        serve = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="meta-sim-http", daemon=True
        )
        deliver = threading.Thread(
            target=self._dispatch_loop, name="meta-sim-webhooks", daemon=True
        )
        self._threads = [serve, deliver]
        for thread in self._threads:
            thread.start()
        logger.info("Meta simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and delivering. Pending webhooks are dropped."""
        server = self._server
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._server = None
        self._session.close()

    def __enter__(self) -> MetaSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle_control(self, method: str, raw_path: str, body: bytes) -> Reply:
        """Answer a ``/_sim/...`` control request."""
        return handle_control(self, method, raw_path, body)

    def serve_until_interrupted(self) -> None:
        """Start and block until Ctrl-C (for the management command)."""
        self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "MetaSimulator/1.0"

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(Reply.ok({"error": "body too large"}, status=413))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/_sim"):
            reply = sim.handle_control(method, self.path, body)
        else:
            headers = {k: v for k, v in self.headers.items()}
            reply = sim.handle_graph(method, self.path, headers, body)
        if reply.fault is not None and reply.fault.drop_connection:
            # Processed, but the caller never learns the outcome.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.content_type == "application/json":
            self.send_header("X-FB-Trace-ID", fbtrace_id())
        self.end_headers()
        try:
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up (a timeout test); what it missed is in the request log.
            self.close_connection = True
