"""The Graph endpoints the simulator serves under any ``/vNN.N/`` prefix: sends and
mark-as-read (``POST /{phone_number_id}/messages``), media upload, lookup, download and
delete, the phone number object and ``GET /{waba_id}/message_templates``. Each request is
authenticated by its bearer token, routed, checked against the sending rules, answered like
Meta (ids, error JSON, HTTP statuses) and logged; injected faults are applied on the way,
and the optional Meta-like latency holds a send's answer after it was logged."""

from __future__ import annotations

import base64
import hmac
import json
import math
import random
import re
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .errors import SimError, token_error, unknown_object
from .media import DOWNLOAD_PATH, MEDIA_LIMITS, MediaStore
from .rules import SendingRules
from .state import Fault, Reply, SimNumber, new_wamid, now_iso
from .webhooks import WebhookDelivery

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


class GraphEndpoints(WebhookDelivery, SendingRules, MediaStore):
    """The Graph API Klaros calls, with the request log and the faults to inject."""

    _faults: list[Fault]
    _fault_seq: int
    _requests: list[dict[str, Any]]
    # wamid -> the accepted send, for sent_messages().
    _sent: dict[str, dict[str, Any]]
    _latency_rng: random.Random

    # ------------------------------------------------------------------ faults

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
        ``biz_opaque_callback_data`` (sends whose JSON body carried it). Each says when it
        arrived (``time``), what was answered (``status``, ``response``) and for how many
        seconds the answer was held after it was logged (``latency``)."""
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
        is_send = method == "POST" and len(segments) == 2 and segments[1] == "messages"
        if is_send:
            self._send_arrived()
        try:
            reply = self._route(method, parts.path, segments, query, headers, body, entry)
            entry["status"] = reply.status
            entry["response"] = reply.json_body
            with self._lock:
                entry["id"] = len(self._requests) + 1
                self._requests.append(entry)
                if is_send:
                    self._count_send(
                        entry.get("phone_number_id") or segments[0], entry, body, reply
                    )
                    delay = self._latency()
                else:
                    delay = 0.0
                # Seconds the answer is held after logging: what a caller waits for at least.
                entry["latency"] = delay
            if delay:
                time.sleep(delay)
            return reply
        finally:
            if is_send:
                self._send_answered()

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
