"""A local stand-in for Meta's WhatsApp Cloud API (DESIGN.md §11).

It serves the Graph endpoints Klaros calls under any ``/vNN.N/`` prefix, checks the bearer token
per number, answers like Meta (ids, error JSON, HTTP statuses), and then delivers signed status
webhooks (sent, delivered, read, with pricing) to the webhook URL, optionally batched, duplicated
and out of order. A control API under ``/_sim/`` lets tests and demos make a customer write, inject
faults and read back every request.

It applies Meta's sending rules: free-form sends outside the customer's 24-hour window are
accepted and then fail with 131047 (``enforce_window``; off for ``MetaSimulator(...)``, on for the
management command; ``POST /_sim/window`` sets a window), MARKETING templates to a customer who
tapped Stop fail with 131050 (``POST /_sim/opt_out`` or ``/_sim/user_preferences``), and more than
``rate_limit_per_second`` (80) accepted sends per number in a rolling second answer 130429.
``GET /_sim/stats`` counts accepted, rejected and failed sends and webhooks per number.

Run it in-process (``MetaSimulator(...).start()``, see :mod:`apps.whatsapp.testing`) or with
``manage.py meta_simulator``. It binds to loopback by default and has no authentication on the
control API: it is a development tool, never expose it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .customer import CustomerSide
from .errors import (
    SimError,
    token_error,
    unknown_object,
)
from .media import DOWNLOAD_PATH, MEDIA_LIMITS, MediaStore
from .rules import SendingRules
from .state import (
    Fault,
    Reply,
    SimConfig,
    SimNumber,
    new_wamid,
    now_iso,
)
from .webhooks import WebhookDelivery

logger = logging.getLogger("klaros.whatsapp.simulator")

_VERSION_RE = re.compile(r"^/v\d+\.\d+(?=/)")
_SEND_TYPES = frozenset(
    {
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "template",
        "reaction",
    }
)


class GraphEndpoints(CustomerSide, WebhookDelivery, SendingRules, MediaStore):
    """The Graph API Klaros calls, with the request log and the faults to inject."""

    _faults: list[Fault]
    _fault_seq: int
    _requests: list[dict[str, Any]]
    # wamid -> the accepted send, for sent_messages().
    _sent: dict[str, dict[str, Any]]
    _latency_rng: random.Random

    # ------------------------------------------------------------------ configuration

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change delivery behaviour: rates (0..1), ``status_delay``, ``statuses``, ``seed``,
        ``max_attempts``, ``retry_delay``, ``escape_slashes``, ``media_url_ttl``,
        ``webhook_url``, ``hold_webhooks`` (queue without posting), ``chaos`` (true sets the
        default chaos rates, false zeroes them).

        Sending rules: ``enforce_window`` (free-form sends outside the customer's 24-hour window
        fail with 131047), ``window_seconds`` (its length, 86400), ``window_sync_error`` (answer
        131047 synchronously instead of a ``failed`` webhook), ``enforce_opt_out`` (MARKETING
        templates to a customer who tapped Stop fail with 131050), ``rate_limit_per_second``
        (accepted sends per number in any rolling second before 130429; 0 disables).

        Latency (benchmarks): ``latency_median_ms`` and ``latency_sigma`` delay each answer to
        ``POST /{phone_number_id}/messages`` by a lognormal draw (median, sigma of its log; 0 ms
        by default), after the call was processed and logged: the rate limit and the request
        log see the arrival, the caller waits. Draws are deterministic for a given ``seed``.
        """
        with self._lock:
            cfg = self._config
            if "chaos" in options:
                chaos = bool(options.pop("chaos"))
                for key, value in SimConfig.CHAOS.items():
                    setattr(cfg, key, value if chaos else 0.0)
            if "seed" in options:
                self._seed = options.pop("seed")
                self._rng.seed(self._seed)
                self._latency_rng.seed(self._seed)
            if "webhook_url" in options:
                self.webhook_url = options.pop("webhook_url") or None
            for key, value in options.items():
                if key.endswith("_rate"):
                    rate = float(value)
                    if not 0.0 <= rate <= 1.0 or not hasattr(cfg, key):
                        raise ValueError(f"{key}: expected a known rate between 0 and 1")
                    setattr(cfg, key, rate)
                elif key == "statuses":
                    allowed = {"sent", "delivered", "read", "played"}
                    if not isinstance(value, list) or not set(value) <= allowed:
                        raise ValueError(f"statuses: a list drawn from {sorted(allowed)}")
                    cfg.statuses = tuple(value)
                elif key in ("status_delay", "retry_delay", "media_url_ttl", "webhook_timeout"):
                    setattr(cfg, key, max(0.0, float(value)))
                elif key == "max_attempts":
                    cfg.max_attempts = max(1, int(value))
                elif key == "escape_slashes":
                    cfg.escape_slashes = bool(value)
                elif key in ("enforce_window", "window_sync_error", "enforce_opt_out"):
                    if not isinstance(value, bool):
                        raise ValueError(f"{key}: expected true or false")
                    setattr(cfg, key, value)
                elif key == "window_seconds":
                    seconds = float(value)
                    if seconds <= 0:
                        raise ValueError("window_seconds: expected a positive number")
                    cfg.window_seconds = seconds
                elif key in ("latency_median_ms", "latency_sigma"):
                    number = float(value)
                    if isinstance(value, bool) or number < 0:
                        raise ValueError(f"{key}: expected 0 or more")
                    setattr(cfg, key, number)
                elif key == "rate_limit_per_second":
                    if isinstance(value, bool) or int(value) < 0:
                        raise ValueError("rate_limit_per_second: expected 0 (off) or more")
                    cfg.rate_limit_per_second = int(value)
                elif key == "hold_webhooks":
                    self._held = bool(value)
                    self._cond.notify_all()
                else:
                    raise ValueError(f"unknown option {key!r}")
            return self.config()

    def config(self) -> dict[str, Any]:
        """The current delivery configuration."""
        with self._lock:
            data = {k: v for k, v in asdict(self._config).items()}
            data["statuses"] = list(self._config.statuses)
            data["seed"] = self._seed
            data["webhook_url"] = self.webhook_url
            data["hold_webhooks"] = self._held
            return data

    def add_fault(self, fault: Fault) -> Fault:
        """Queue a fault for the next ``fault.count`` matching Graph calls."""
        if fault.count < 1:
            raise ValueError("count must be at least 1")
        if fault.scope not in ("messages", "read", "media", "templates", "any"):
            raise ValueError(f"unknown fault scope {fault.scope!r}")
        if fault.http_status is not None and not 400 <= fault.http_status <= 599:
            raise ValueError("http_status must be a 4xx or 5xx status")
        with self._lock:
            self._fault_seq += 1
            fault.id = self._fault_seq
            self._faults.append(fault)
        return fault

    def faults(self) -> list[Fault]:
        """Faults not yet used up."""
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        """Forget all pending faults."""
        with self._lock:
            self._faults.clear()

    def requests(
        self, phone_number_id: str | None = None, *, biz_opaque_callback_data: str | None = None
    ) -> list[dict[str, Any]]:
        """Every Graph request received (oldest first), optionally for one number and/or one
        ``biz_opaque_callback_data`` (sends whose JSON body carried it)."""
        with self._lock:
            return [
                dict(r)
                for r in self._requests
                if (phone_number_id is None or r.get("phone_number_id") == phone_number_id)
                and (
                    biz_opaque_callback_data is None
                    or _callback_data(r.get("json")) == biz_opaque_callback_data
                )
            ]

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._requests.clear()

    def sent_messages(self, biz_opaque_callback_data: str | None = None) -> list[dict[str, Any]]:
        """Messages accepted by ``POST /{pnid}/messages``, oldest first (optionally only those
        carrying one ``biz_opaque_callback_data``)."""
        with self._lock:
            return [
                dict(m)
                for m in self._sent.values()
                if biz_opaque_callback_data is None
                or _callback_data(m["payload"]) == biz_opaque_callback_data
            ]

    # ------------------------------------------------------------------ Graph endpoints

    def _auth(self, headers: Mapping[str, str]) -> tuple[SimNumber | None, str]:
        value = headers.get("Authorization") or ""
        if not value.startswith("Bearer ") or not value[7:].strip():
            return None, "missing"
        token = value[7:].strip()
        with self._lock:
            for number in self._numbers.values():
                if hmac.compare_digest(number.token.encode(), token.encode()):
                    return number, "ok"
        return None, "invalid"

    def _take_fault(self, pnid: str | None, scope: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.phone_number_id not in (None, pnid):
                    continue
                if fault.scope not in (scope, "any"):
                    continue
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def handle_graph(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """Answer one Graph request and log it (used by the HTTP handler)."""
        parts = urlsplit(raw_path)
        path = _VERSION_RE.sub("", parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [s for s in path.split("/") if s]
        entry: dict[str, Any] = {
            "time": now_iso(),
            "method": method,
            "path": parts.path,
            "query": query,
            "phone_number_id": None,
            "waba_id": None,
            "auth": None,
            "json": None,
            "form": None,
            "fault": None,
        }
        reply = self._route(method, parts.path, segments, query, headers, body, entry)
        entry["status"] = reply.status
        entry["response"] = reply.json_body
        with self._lock:
            entry["id"] = len(self._requests) + 1
            self._requests.append(entry)
            if method == "POST" and len(segments) == 2 and segments[1] == "messages":
                self._count_send(entry.get("phone_number_id") or segments[0], entry, body, reply)
                delay = self._latency()
            else:
                delay = 0.0
        if delay:
            time.sleep(delay)
        return reply

    def _latency(self) -> float:
        """Seconds to hold a send's answer (callers hold the lock)."""
        median = self._config.latency_median_ms
        if median <= 0:
            return 0.0
        mu = math.log(median / 1000.0)
        return self._latency_rng.lognormvariate(mu, self._config.latency_sigma)

    def _count_send(self, pnid: str, entry: dict[str, Any], body: bytes, reply: Reply) -> None:
        # Callers hold the lock. Unknown numbers are not counted (no unbounded keys).
        if pnid not in self._numbers:
            return
        payload = entry.get("json")
        if payload is None:  # not parsed: refused before reading the body (190)
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                payload = None
        stats = self._stats_for(pnid)
        if isinstance(payload, dict) and payload.get("status") is not None:
            stats.reads += reply.status == 200  # mark-as-read is not a send
            return
        if reply.status == 200:
            stats.accepted += 1
            callback = _callback_data(payload)
            if callback is not None:
                stats.callback_data[callback] += 1
            return
        error = reply.json_body.get("error") if isinstance(reply.json_body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        stats.rejected[str(code) if code is not None else f"http_{reply.status}"] += 1

    def _route(
        self,
        method: str,
        full_path: str,
        segments: list[str],
        query: dict[str, str],
        headers: Mapping[str, str],
        body: bytes,
        entry: dict[str, Any],
    ) -> Reply:
        caller, auth = self._auth(headers)
        entry["auth"] = auth
        if full_path == DOWNLOAD_PATH or full_path.rstrip("/") == DOWNLOAD_PATH.rstrip("/"):
            return self._download(method, query, caller, entry)
        if caller is None:
            return Reply.error(token_error())
        try:
            if len(segments) == 2 and segments[1] == "messages" and method == "POST":
                return self._post_messages(caller, segments[0], body, headers, entry)
            if len(segments) == 2 and segments[1] == "media" and method == "POST":
                return self._upload(caller, segments[0], body, headers, entry)
            if len(segments) == 2 and segments[1] == "message_templates" and method == "GET":
                return self._list_templates(caller, segments[0], query, full_path, entry)
            if len(segments) == 1 and method in ("GET", "DELETE"):
                return self._object(method, caller, segments[0], query, entry)
            return Reply.error(unknown_object("/".join(segments) or "/", method))
        except SimError as exc:
            return Reply.error(exc)

    def _owned_number(self, caller: SimNumber, pnid: str, entry: dict[str, Any]) -> SimNumber:
        entry["phone_number_id"] = pnid
        with self._lock:
            number = self._numbers.get(pnid)
        if number is None:
            raise unknown_object(pnid, "post")
        if number.phone_number_id != caller.phone_number_id and number.token != caller.token:
            raise token_error()
        entry["waba_id"] = number.waba_id
        return number

    def _apply_fault(
        self, number: SimNumber, scope: str, entry: dict[str, Any]
    ) -> tuple[Fault | None, Reply | None]:
        fault = self._take_fault(number.phone_number_id, scope)
        if fault is None:
            return None, None
        entry["fault"] = fault.public()
        if fault.delay:
            time.sleep(fault.delay)
        if fault.drop_connection or (fault.async_ and fault.code is not None):
            return fault, None  # processed normally, misbehaves afterwards
        if fault.non_json:
            status = fault.http_status or 502
            return fault, Reply(status, b"<html><body>Bad Gateway</body></html>", "text/html")
        if fault.code is not None:
            return fault, Reply.error(
                SimError(fault.code, http_status=fault.http_status, details=fault.details)
                if fault.code != 190
                else token_error()
            )
        if fault.http_status is not None:
            code = {500: 131000, 503: 131016}.get(fault.http_status, 1)
            return fault, Reply.error(SimError(code, http_status=fault.http_status))
        return fault, None  # delay only

    def _post_messages(
        self,
        caller: SimNumber,
        pnid: str,
        body: bytes,
        headers: Mapping[str, str],
        entry: dict[str, Any],
    ) -> Reply:
        number = self._owned_number(caller, pnid, entry)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise SimError(100, details="The request body is not valid JSON.") from None
        entry["json"] = payload
        if not isinstance(payload, dict):
            raise SimError(100, details="The request body must be a JSON object.")
        if payload.get("messaging_product") != "whatsapp":
            raise SimError(
                100,
                message="(#100) The parameter messaging_product is required.",
                details="",
            )
        if payload.get("status") is not None:
            fault, reply = self._apply_fault(number, "read", entry)
            if reply is not None:
                return reply
            if payload.get("status") != "read" or not payload.get("message_id"):
                raise SimError(131009, details="status must be 'read' with a message_id.")
            return Reply.ok({"success": True}, fault=fault)

        fault, reply = self._apply_fault(number, "messages", entry)
        if reply is not None:
            return reply
        msg_type = payload.get("type", "text")
        to = payload.get("to")
        recipient = payload.get("recipient")
        if not to and not recipient:
            raise SimError(131008, details="The parameter to is required.")
        if msg_type not in _SEND_TYPES:
            raise SimError(131009, details=f"Unsupported message type {msg_type!r}.")
        if not isinstance(payload.get(msg_type), dict):
            raise SimError(131008, details=f"The parameter {msg_type} is required.")
        template = None
        if msg_type == "template":
            template = self._check_template(number, payload["template"])
        customer = str(to or recipient)
        failure = self._rule_failure(number, customer, template)
        self._check_rate(number)  # last: only sends about to be accepted count

        wamid = new_wamid()
        contact: dict[str, Any]
        if to:
            wa_id = re.sub(r"\D", "", str(to))
            contact = {"input": str(to), "wa_id": wa_id}
        else:
            wa_id = None
            contact = {"input": str(recipient), "user_id": str(recipient)}
        message: dict[str, Any] = {"id": wamid}
        if template is not None:
            message["message_status"] = "accepted"
        response = {"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]}
        with self._lock:
            self._sent[wamid] = {
                "wamid": wamid,
                "phone_number_id": number.phone_number_id,
                "to": to,
                "recipient": recipient,
                "type": msg_type,
                "payload": payload,
                "time": now_iso(),
            }
        self._schedule_for_send(number, payload, wamid, wa_id, template, fault, failure)
        return Reply.ok(response, fault=fault)

    def _upload(
        self,
        caller: SimNumber,
        pnid: str,
        body: bytes,
        headers: Mapping[str, str],
        entry: dict[str, Any],
    ) -> Reply:
        number = self._owned_number(caller, pnid, entry)
        fault, reply = self._apply_fault(number, "media", entry)
        if reply is not None:
            return reply
        fields, files = _parse_multipart(headers.get("Content-Type", ""), body)
        entry["form"] = {
            **fields,
            **{
                name: {"filename": f[0], "content_type": f[1], "size": len(f[2])}
                for name, f in files.items()
            },
        }
        if fields.get("messaging_product") != "whatsapp":
            raise SimError(100, message="(#100) The parameter messaging_product is required.")
        if "file" not in files:
            raise SimError(100, message="(#100) The parameter file is required.")
        filename, part_type, data = files["file"]
        mime = fields.get("type") or part_type
        mime_base = mime.split(";")[0].strip().lower()
        limit = MEDIA_LIMITS.get(mime_base)
        if limit is None:
            raise SimError(131053, details=f"Param file must be a supported type, got {mime}.")
        if len(data) > limit:
            raise SimError(131053, details=f"File is {len(data)} bytes; {mime} allows {limit}.")
        media_id = self.put_media(number.phone_number_id, data, mime, filename)
        return Reply.ok({"id": media_id}, fault=fault)

    def _object(
        self,
        method: str,
        caller: SimNumber,
        object_id: str,
        query: Mapping[str, str],
        entry: dict[str, Any],
    ) -> Reply:
        with self._lock:
            media = self._media.get(object_id)
            number = self._numbers.get(object_id)
        if media is not None and not media.deleted:
            owner = self._numbers.get(media.phone_number_id)
            entry["phone_number_id"] = media.phone_number_id
            if owner is None or owner.token != caller.token:
                raise token_error()
            if query.get("phone_number_id") not in (None, media.phone_number_id):
                raise unknown_object(object_id, method)
            if method == "DELETE":
                media.deleted = True
                return Reply.ok({"success": True})
            return Reply.ok(
                {
                    "messaging_product": "whatsapp",
                    "url": self.media_download_url(media.media_id),
                    "mime_type": media.mime_type,
                    "sha256": media.sha256_hex,
                    "file_size": len(media.data),
                    "id": media.media_id,
                }
            )
        if number is not None and method == "GET":
            entry["phone_number_id"] = number.phone_number_id
            if number.token != caller.token:
                raise token_error()
            return Reply.ok(
                {
                    "verified_name": number.verified_name,
                    "display_phone_number": number.display_phone_number,
                    "quality_rating": "GREEN",
                    "throughput": {"level": "STANDARD"},
                    "id": number.phone_number_id,
                }
            )
        raise unknown_object(object_id, method)

    def _list_templates(
        self,
        caller: SimNumber,
        waba_id: str,
        query: Mapping[str, str],
        full_path: str,
        entry: dict[str, Any],
    ) -> Reply:
        entry["waba_id"] = waba_id
        with self._lock:
            owners = [n for n in self._numbers.values() if n.waba_id == waba_id]
        if not owners:
            raise unknown_object(waba_id, "get")
        if caller.token not in {n.token for n in owners}:
            raise token_error()
        entry["phone_number_id"] = caller.phone_number_id
        fault, reply = self._apply_fault(caller, "templates", entry)
        if reply is not None:
            return reply
        items = self.templates(waba_id)
        for key in ("status", "category", "language", "name"):
            if query.get(key):
                items = [t for t in items if str(t.get(key)) == query[key]]
        try:
            limit = max(1, min(int(query.get("limit", 25)), 1000))
            start = (
                int(base64.urlsafe_b64decode(query["after"]).decode()) if "after" in query else 0
            )
        except (ValueError, UnicodeDecodeError):
            raise SimError(100, details="Invalid limit or cursor.") from None
        if query.get("fields"):
            wanted = {f.strip() for f in query["fields"].split(",")} | {"id"}
            items = [{k: v for k, v in t.items() if k in wanted} for t in items]
        page = items[start : start + limit]
        data: dict[str, Any] = {"data": page}
        if page:
            cursors = {
                "before": _cursor(start),
                "after": _cursor(start + len(page)),
            }
            data["paging"] = {"cursors": cursors}
            if start + len(page) < len(items):
                next_query = {k: v for k, v in query.items() if k != "before"}
                next_query["after"] = cursors["after"]
                data["paging"]["next"] = f"{self.url}{full_path}?{urlencode(next_query)}"
        return Reply.ok(data, fault=fault)

    def _download(
        self,
        method: str,
        query: Mapping[str, str],
        caller: SimNumber | None,
        entry: dict[str, Any],
    ) -> Reply:
        media_id = query.get("mid", "")
        with self._lock:
            media = self._media.get(media_id)
        entry["phone_number_id"] = media.phone_number_id if media else None
        if caller is None:
            return Reply.error(token_error())
        try:
            expires = int(query.get("ext", "0"))
        except ValueError:
            expires = 0
        valid = (
            method == "GET"
            and media is not None
            and not media.deleted
            and expires >= time.time()
            and hmac.compare_digest(self._url_hash(media_id, expires), query.get("hash", ""))
        )
        if not valid or media is None:
            return Reply(404, b"", "text/plain")
        owner = self._numbers.get(media.phone_number_id)
        if owner is None or owner.token != caller.token:
            return Reply.error(token_error())
        return Reply(200, media.data, media.mime_type)

    # ------------------------------------------------------------------ control API

    def handle_control(self, method: str, raw_path: str, body: bytes) -> Reply:
        """Answer a ``/_sim/...`` control request."""
        parts = urlsplit(raw_path)
        route = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return Reply.ok({"error": "body is not valid JSON"}, status=400)
        if not isinstance(data, dict):
            return Reply.ok({"error": "body must be a JSON object"}, status=400)
        handler = _CONTROL_ROUTES.get((method, route))
        if handler is None:
            return Reply.ok({"error": f"no control route {method} {route}"}, status=404)
        try:
            return Reply.ok(handler(self, data, query))
        except (ValueError, KeyError, TypeError) as exc:
            return Reply.ok({"error": str(exc)}, status=400)


# ---------------------------------------------------------------------- control routes


def _ctl_index(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {
        "graph_url": sim.graph_url(),
        "routes": sorted(f"{m} {p}" for m, p in _CONTROL_ROUTES),
    }


def _ctl_add_number(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    required = ("phone_number_id", "waba_id", "token", "app_secret", "display_phone_number")
    missing = [k for k in required if not data.get(k)]
    if missing:
        raise ValueError(f"missing: {', '.join(missing)}")
    number = SimNumber(
        **{k: str(data[k]) for k in required},
        verified_name=str(data.get("verified_name") or "Klaros Demo"),
        webhook_url=data.get("webhook_url") or None,
    )
    return sim.add_number(number).public()


def _ctl_numbers(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": [n.public() for n in sim.numbers()]}


def _ctl_config(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.configure(**data)


def _ctl_get_config(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.config()


def _ctl_inbound(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.inbound(data)


def _ctl_add_fault(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    allowed = {
        "phone_number_id",
        "count",
        "code",
        "http_status",
        "async",
        "delay",
        "drop_connection",
        "non_json",
        "details",
        "scope",
    }
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    fault = Fault(
        phone_number_id=str(data["phone_number_id"]) if data.get("phone_number_id") else None,
        count=int(data.get("count", 1)),
        code=int(data["code"]) if data.get("code") is not None else None,
        http_status=int(data["http_status"]) if data.get("http_status") is not None else None,
        async_=bool(data.get("async", False)),
        delay=float(data.get("delay", 0.0)),
        drop_connection=bool(data.get("drop_connection", False)),
        non_json=bool(data.get("non_json", False)),
        details=data.get("details"),
        scope=str(data.get("scope", "messages")),
    )
    return sim.add_fault(fault).public()


def _ctl_faults(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": [f.public() for f in sim.faults()]}


def _ctl_clear_faults(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_faults()
    return {"success": True}


def _ctl_requests(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {
        "data": sim.requests(
            query.get("phone_number_id"),
            biz_opaque_callback_data=query.get("biz_opaque_callback_data"),
        )
    }


def _ctl_clear_requests(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_requests()
    return {"success": True}


def _ctl_webhooks(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.webhooks(query.get("kind"))}


def _ctl_clear_webhooks(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_webhooks()
    return {"success": True}


def _ctl_set_templates(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("waba_id") or not isinstance(data.get("templates"), list):
        raise ValueError("expected {waba_id, templates: [...]}")
    replace = data.get("replace", True) is not False
    return {"data": sim.set_templates(str(data["waba_id"]), data["templates"], replace=replace)}


def _ctl_templates(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.templates(query["waba_id"])}


def _ctl_template_status(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.send_template_status(
        str(data["waba_id"]),
        str(data["name"]),
        str(data["event"]),
        language=str(data.get("language", "en_US")),
        reason=data.get("reason", "NONE"),
    )


def _ctl_user_preferences(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.send_user_preference(
        data.get("phone_number_id"),
        str(data["wa_id"]),
        str(data.get("value", "stop")),
        category=str(data.get("category", "marketing_messages")),
        user_id=data.get("user_id"),
        name=data.get("name"),
    )


def _ctl_raw_webhook(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not isinstance(data.get("payload"), dict):
        raise ValueError("expected {phone_number_id, payload: {...}}")
    return sim.post_raw_webhook(data.get("phone_number_id"), data["payload"])


def _ctl_media(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    number = sim._number(data.get("phone_number_id"))
    raw = base64.b64decode(data["base64"]) if "base64" in data else str(data["text"]).encode()
    media_id = sim.put_media(
        number.phone_number_id, raw, str(data.get("mime_type", "image/jpeg")), data.get("filename")
    )
    return {
        "id": media_id,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "url": sim.media_download_url(media_id),
    }


def _ctl_sent(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.sent_messages(query.get("biz_opaque_callback_data"))}


def _ctl_window(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("customer") or "last_inbound_at" not in data:
        raise ValueError("expected {phone_number_id, customer, last_inbound_at: seconds or null}")
    when = data["last_inbound_at"]
    if when is not None and (isinstance(when, bool) or not isinstance(when, int | float)):
        raise ValueError("last_inbound_at: unix seconds or null")
    return sim.set_window(data.get("phone_number_id"), str(data["customer"]), when)


def _ctl_get_window(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.window(query.get("phone_number_id"), query["customer"])


def _ctl_opt_out(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("customer"):
        raise ValueError("expected {phone_number_id, customer, value: stop|resume}")
    return sim.set_opt_out(
        data.get("phone_number_id"), str(data["customer"]), str(data.get("value", "stop"))
    )


def _ctl_stats(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    wanted = query.get("callback_data", "").lower() in ("1", "true", "yes")
    stats = sim.stats(with_callback_data=wanted)
    if query.get("phone_number_id"):
        pnid = query["phone_number_id"]
        stats = {pnid: stats[pnid]} if pnid in stats else {}
    return {"data": stats}


def _ctl_clear_stats(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_stats()
    return {"success": True}


def _ctl_wait_idle(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"idle": sim.wait_idle(float(data.get("timeout", 5.0)))}


def _ctl_verify(sim: GraphEndpoints, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.verify_webhook(str(data["verify_token"]), data.get("url"))


_Control = Callable[[GraphEndpoints, dict[str, Any], dict[str, str]], Any]
_CONTROL_ROUTES: dict[tuple[str, str], _Control] = {
    ("GET", "/_sim"): _ctl_index,
    ("GET", "/_sim/numbers"): _ctl_numbers,
    ("POST", "/_sim/numbers"): _ctl_add_number,
    ("GET", "/_sim/config"): _ctl_get_config,
    ("POST", "/_sim/config"): _ctl_config,
    ("POST", "/_sim/inbound"): _ctl_inbound,
    ("GET", "/_sim/faults"): _ctl_faults,
    ("POST", "/_sim/faults"): _ctl_add_fault,
    ("DELETE", "/_sim/faults"): _ctl_clear_faults,
    ("GET", "/_sim/requests"): _ctl_requests,
    ("DELETE", "/_sim/requests"): _ctl_clear_requests,
    ("GET", "/_sim/webhooks"): _ctl_webhooks,
    ("DELETE", "/_sim/webhooks"): _ctl_clear_webhooks,
    ("GET", "/_sim/templates"): _ctl_templates,
    ("POST", "/_sim/templates"): _ctl_set_templates,
    ("POST", "/_sim/template_status"): _ctl_template_status,
    ("POST", "/_sim/user_preferences"): _ctl_user_preferences,
    ("POST", "/_sim/raw_webhook"): _ctl_raw_webhook,
    ("POST", "/_sim/media"): _ctl_media,
    ("GET", "/_sim/sent"): _ctl_sent,
    ("GET", "/_sim/window"): _ctl_get_window,
    ("POST", "/_sim/window"): _ctl_window,
    ("POST", "/_sim/opt_out"): _ctl_opt_out,
    ("GET", "/_sim/stats"): _ctl_stats,
    ("DELETE", "/_sim/stats"): _ctl_clear_stats,
    ("POST", "/_sim/wait_idle"): _ctl_wait_idle,
    ("POST", "/_sim/verify_webhook"): _ctl_verify,
}


# ---------------------------------------------------------------------- helpers


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, str], dict[str, tuple[str | None, str, bytes]]]:
    if "multipart/form-data" not in content_type:
        raise SimError(100, details="Expected a multipart/form-data body.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    assert isinstance(message, EmailMessage)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str | None, str, bytes]] = {}
    if not message.is_multipart():
        raise SimError(100, details="Malformed multipart body.")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (filename, part.get_content_type(), payload)
        else:
            fields[str(name)] = payload.decode("utf-8", "replace")
    return fields, files


def _callback_data(payload: Any) -> str | None:
    if isinstance(payload, Mapping) and payload.get("biz_opaque_callback_data") is not None:
        return str(payload["biz_opaque_callback_data"])
    return None


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode("ascii")
