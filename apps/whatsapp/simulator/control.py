"""The control API under ``/_sim/``: the routes that let tests and demos register numbers,
configure delivery and the sending rules, make a customer write, inject faults, set
templates, windows and opt-outs, and read back requests, sent messages, webhooks and stats.
Each route is a function of the simulator, the JSON body and the query string."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .core import SimulatorCore
from .state import Fault, Reply, SimNumber


def handle_control(sim: SimulatorCore, method: str, raw_path: str, body: bytes) -> Reply:
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
        return Reply.ok(handler(sim, data, query))
    except (ValueError, KeyError, TypeError) as exc:
        return Reply.ok({"error": str(exc)}, status=400)


def _ctl_index(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {
        "graph_url": sim.graph_url(),
        "routes": sorted(f"{m} {p}" for m, p in _CONTROL_ROUTES),
    }


def _ctl_add_number(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
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


def _ctl_numbers(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": [n.public() for n in sim.numbers()]}


def _ctl_config(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.configure(**data)


def _ctl_get_config(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.config()


def _ctl_inbound(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.inbound(data)


def _ctl_add_fault(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
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


def _ctl_faults(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": [f.public() for f in sim.faults()]}


def _ctl_clear_faults(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_faults()
    return {"success": True}


def _ctl_requests(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {
        "data": sim.requests(
            query.get("phone_number_id"),
            biz_opaque_callback_data=query.get("biz_opaque_callback_data"),
        )
    }


def _ctl_clear_requests(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_requests()
    return {"success": True}


def _ctl_webhooks(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.webhooks(query.get("kind"))}


def _ctl_clear_webhooks(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_webhooks()
    return {"success": True}


def _ctl_set_templates(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("waba_id") or not isinstance(data.get("templates"), list):
        raise ValueError("expected {waba_id, templates: [...]}")
    replace = data.get("replace", True) is not False
    return {"data": sim.set_templates(str(data["waba_id"]), data["templates"], replace=replace)}


def _ctl_templates(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.templates(query["waba_id"])}


def _ctl_template_status(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.send_template_status(
        str(data["waba_id"]),
        str(data["name"]),
        str(data["event"]),
        language=str(data.get("language", "en_US")),
        reason=data.get("reason", "NONE"),
    )


def _ctl_user_preferences(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.send_user_preference(
        data.get("phone_number_id"),
        str(data["wa_id"]),
        str(data.get("value", "stop")),
        category=str(data.get("category", "marketing_messages")),
        user_id=data.get("user_id"),
        name=data.get("name"),
    )


def _ctl_raw_webhook(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not isinstance(data.get("payload"), dict):
        raise ValueError("expected {phone_number_id, payload: {...}}")
    return sim.post_raw_webhook(data.get("phone_number_id"), data["payload"])


def _ctl_media(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    number = sim.number(data.get("phone_number_id"))
    raw = base64.b64decode(data["base64"]) if "base64" in data else str(data["text"]).encode()
    media_id = sim.put_media(
        number.phone_number_id, raw, str(data.get("mime_type", "image/jpeg")), data.get("filename")
    )
    return {
        "id": media_id,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "url": sim.media_download_url(media_id),
    }


def _ctl_sent(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"data": sim.sent_messages(query.get("biz_opaque_callback_data"))}


def _ctl_window(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("customer") or "last_inbound_at" not in data:
        raise ValueError("expected {phone_number_id, customer, last_inbound_at: seconds or null}")
    when = data["last_inbound_at"]
    if when is not None and (isinstance(when, bool) or not isinstance(when, int | float)):
        raise ValueError("last_inbound_at: unix seconds or null")
    return sim.set_window(data.get("phone_number_id"), str(data["customer"]), when)


def _ctl_get_window(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.window(query.get("phone_number_id"), query["customer"])


def _ctl_opt_out(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    if not data.get("customer"):
        raise ValueError("expected {phone_number_id, customer, value: stop|resume}")
    return sim.set_opt_out(
        data.get("phone_number_id"), str(data["customer"]), str(data.get("value", "stop"))
    )


def _ctl_stats(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    wanted = query.get("callback_data", "").lower() in ("1", "true", "yes")
    stats = sim.stats(with_callback_data=wanted)
    if query.get("phone_number_id"):
        pnid = query["phone_number_id"]
        stats = {pnid: stats[pnid]} if pnid in stats else {}
    return {"data": stats, "sends_in_flight": sim.sends_in_flight()}


def _ctl_clear_stats(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_stats()
    return {"success": True}


def _ctl_wait_idle(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return {"idle": sim.wait_idle(float(data.get("timeout", 5.0)))}


def _ctl_verify(sim: SimulatorCore, data: dict[str, Any], query: dict[str, str]) -> Any:
    return sim.verify_webhook(str(data["verify_token"]), data.get("url"))


_Control = Callable[[SimulatorCore, dict[str, Any], dict[str, str]], Any]
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
