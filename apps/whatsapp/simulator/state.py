"""The state every part of the simulator shares: the business numbers it knows
(:class:`SimNumber`), injected faults (:class:`Fault`), per-number counters
(:class:`NumberStats`), the delivery and sending-rule settings (:class:`SimConfig`), the answer
to one request (:class:`Reply`), id and time helpers, and :class:`SimulatorState`, the base of
every part of :class:`~apps.whatsapp.simulator.MetaSimulator`, with the state they all use."""

from __future__ import annotations

import base64
import json
import random
import secrets
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

from .errors import SimError


@dataclass
class SimNumber:
    """A business phone number the simulator knows, with its (fake) credentials."""

    phone_number_id: str
    waba_id: str
    token: str
    app_secret: str
    display_phone_number: str
    verified_name: str = "Klaros Demo"
    webhook_url: str | None = None

    def public(self) -> dict[str, Any]:
        """Everything but the secrets, for listings."""
        return {
            "phone_number_id": self.phone_number_id,
            "waba_id": self.waba_id,
            "display_phone_number": self.display_phone_number,
            "verified_name": self.verified_name,
            "webhook_url": self.webhook_url,
        }


def parse_number_spec(spec: str) -> SimNumber:
    """Parse ``PNID:WABA_ID:TOKEN:APP_SECRET:DISPLAY_NUMBER`` (the CLI's ``--number``)."""
    parts = spec.split(":")
    if len(parts) != 5 or not all(parts):
        raise ValueError(
            f"expected PNID:WABA_ID:TOKEN:APP_SECRET:DISPLAY_NUMBER, got {len(parts)} part(s)"
        )
    return SimNumber(*parts)


@dataclass
class Fault:
    """An error (or misbehaviour) to inject into the next ``count`` matching Graph calls.

    ``scope``: ``messages`` (sends; not mark-as-read), ``read`` (mark-as-read), ``media``
    (uploads), ``templates`` or ``any``. ``code`` answers Meta's error for that code (sync), or,
    with ``async_=True`` (sends only), accepts the send and later posts a ``failed`` status with
    that error. ``http_status`` alone (5xx) answers a generic server error; ``non_json`` makes
    it a bare HTML page like a failing proxy. ``delay`` sleeps before answering;
    ``drop_connection`` processes the call and closes the socket without answering.
    """

    phone_number_id: str | None
    count: int = 1
    code: int | None = None
    http_status: int | None = None
    async_: bool = False
    delay: float = 0.0
    drop_connection: bool = False
    non_json: bool = False
    details: str | None = None
    scope: str = "messages"
    id: int = 0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["async"] = data.pop("async_")
        return data


@dataclass
class NumberStats:
    """Counters for one number (``GET /_sim/stats``)."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    webhooks_posted: int = 0
    webhooks_ok: int = 0
    webhooks_by_kind: Counter[str] = field(default_factory=Counter)
    callback_data: Counter[str] = field(default_factory=Counter)

    def public(self, *, with_callback_data: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "failed": dict(sorted(self.failed.items())),
            "failed_total": sum(self.failed.values()),
            "reads": self.reads,
            "webhooks": {
                "posted": self.webhooks_posted,
                "ok": self.webhooks_ok,
                "by_kind": dict(sorted(self.webhooks_by_kind.items())),
            },
            "callback_data_repeated": {k: n for k, n in self.callback_data.items() if n > 1},
        }
        if with_callback_data:
            data["callback_data"] = dict(self.callback_data)
        return data


@dataclass
class SimConfig:
    """Delivery behaviour and sending rules (``MetaSimulator.configure``)."""

    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    batch_rate: float = 0.0
    skip_delivered_rate: float = 0.0
    status_delay: float = 0.0
    statuses: tuple[str, ...] = ("sent", "delivered", "read")
    max_attempts: int = 3
    retry_delay: float = 0.5
    escape_slashes: bool = False
    media_url_ttl: float = 300.0
    webhook_timeout: float = 10.0
    # Meta's sending rules (reference §10, §7.6, §14.1). The 24-hour window is off by default for
    # MetaSimulator(...) (tests send free-form without an inbound first); the management command
    # turns it on. Opt-outs only bite after a stop, so they are on; 0 disables the rate limit.
    enforce_window: bool = False
    window_seconds: float = 24 * 3600.0
    window_sync_error: bool = False
    enforce_opt_out: bool = True
    rate_limit_per_second: int = 80
    # Meta-like latency of `POST /{phone_number_id}/messages` answers (benchmarks): lognormal
    # with this median (0: none) and sigma, drawn from a generator seeded with `seed`.
    latency_median_ms: float = 0.0
    latency_sigma: float = 0.0

    CHAOS = {
        "duplicate_rate": 0.05,
        "reorder_rate": 0.15,
        "batch_rate": 0.3,
        "skip_delivered_rate": 0.1,
    }


@dataclass
class Reply:
    """The answer to one Graph or control request, as the HTTP handler writes it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    json_body: Any = None
    fault: Fault | None = None

    @classmethod
    def ok(cls, data: Any, *, status: int = 200, fault: Fault | None = None) -> Reply:
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, body, "application/json", data, fault)

    @classmethod
    def error(cls, exc: SimError) -> Reply:
        data = exc.body()
        return cls(exc.http_status, json.dumps(data).encode(), "application/json", data)


def new_wamid() -> str:
    """A fresh message id shaped like Meta's ``wamid.HBgL...``."""
    raw = b"\x15\x02\x00\x11\x18\x12" + secrets.token_hex(10).upper().encode()
    return "wamid.HBgL" + base64.b64encode(raw).decode("ascii")


def random_digits(n: int) -> str:
    """``n`` random digits, the first not 0 (Meta's numeric ids)."""
    return str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(n - 1))


def now_iso() -> str:
    """The current UTC time in ISO 8601, as the logs record it."""
    return datetime.now(tz=UTC).isoformat()


class SimulatorState:
    """What every part of the simulator shares: the numbers, templates, customers' names,
    counters and configuration, under one lock. The parts (mixins) add the state they own;
    ``MetaSimulator.__init__`` creates all of it."""

    host: str
    port: int
    webhook_url: str | None
    _lock: threading.RLock
    _cond: threading.Condition
    _numbers: dict[str, SimNumber]
    _templates: dict[str, list[dict[str, Any]]]
    # wa_id -> the customer's profile name, from their inbound messages.
    _customers: dict[str, str]
    _stats: dict[str, NumberStats]
    _config: SimConfig
    _seed: int | None
    _rng: random.Random
    _server: ThreadingHTTPServer | None
    # POST /{phone_number_id}/messages calls being answered now, and the most at once.
    _sends_in_flight: int
    _sends_in_flight_max: int

    # ------------------------------------------------------------------ where it listens

    @property
    def url(self) -> str:
        """Base URL of the simulator, e.g. ``http://127.0.0.1:8765`` (no version)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        host = self.host
        if host in ("0.0.0.0", ""):  # noqa: S104 - reaching a wildcard bind via loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def graph_url(self, version: str = "v25.0") -> str:
        """The Graph base URL to hand to GraphClient, e.g. ``http://127.0.0.1:8765/v25.0``."""
        return f"{self.url}/{version}"

    # ------------------------------------------------------------------ numbers

    def add_number(self, number: SimNumber) -> SimNumber:
        """Register (or replace) a business number."""
        with self._lock:
            self._numbers[number.phone_number_id] = number
        return number

    def numbers(self) -> list[SimNumber]:
        """All registered numbers."""
        with self._lock:
            return list(self._numbers.values())

    def number(self, phone_number_id: str | None = None) -> SimNumber:
        """The registered number with this id, or the only one when ``None``; ValueError
        when it is unknown (or ``None`` while several are registered)."""
        with self._lock:
            if phone_number_id is None:
                if len(self._numbers) == 1:
                    return next(iter(self._numbers.values()))
                raise ValueError("phone_number_id is required when several numbers are known")
            number = self._numbers.get(str(phone_number_id))
        if number is None:
            raise ValueError(f"unknown phone_number_id {phone_number_id!r}")
        return number

    # ------------------------------------------------------------------ counters

    def stats(self, *, with_callback_data: bool = False) -> dict[str, Any]:
        """Per number: accepted sends, sync rejections and async failures by code, mark-as-read
        calls, webhooks posted, and ``biz_opaque_callback_data`` values sent more than once."""
        with self._lock:
            return {
                pnid: stats.public(with_callback_data=with_callback_data)
                for pnid, stats in sorted(self._stats.items())
            }

    def clear_stats(self) -> None:
        """Reset the counters behind :meth:`stats` and the high-water mark of
        :meth:`sends_in_flight` (not windows, opt-outs or logs)."""
        with self._lock:
            self._stats.clear()
            self._sends_in_flight_max = self._sends_in_flight

    def sends_in_flight(self) -> dict[str, int]:
        """``POST /{phone_number_id}/messages`` calls (sends and mark-as-read) the simulator
        holds right now (``now``: arrived, not answered yet) and the most it held at once since
        it was created or :meth:`clear_stats` (``max``). Sends held by latency or a fault's delay
        count, so ``max`` shows whether concurrent callers were answered side by side."""
        with self._lock:
            return {"now": self._sends_in_flight, "max": self._sends_in_flight_max}

    def _send_arrived(self) -> None:
        with self._lock:
            self._sends_in_flight += 1
            self._sends_in_flight_max = max(self._sends_in_flight_max, self._sends_in_flight)

    def _send_answered(self) -> None:
        with self._lock:
            self._sends_in_flight -= 1

    def _stats_for(self, phone_number_id: str) -> NumberStats:
        # Callers hold the lock.
        stats = self._stats.get(phone_number_id)
        if stats is None:
            stats = self._stats[phone_number_id] = NumberStats()
        return stats
