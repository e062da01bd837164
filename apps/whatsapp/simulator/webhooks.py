"""Webhook delivery: signing bodies with the number's app secret, posting them to the webhook
URL (the number's own or the simulator's), the status webhooks scheduled after each accepted
send (sent, delivered, read, or failed, with pricing), batching, duplicates and reordering
(chaos), retries with backoff, the dispatch thread's loop, and the log of every attempt."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from ..signature import SIGNATURE_HEADER, dumps_like_meta, sign_body
from .errors import async_error
from .state import Fault, SimNumber, SimulatorState, now_iso, random_digits

logger = logging.getLogger("klaros.whatsapp.simulator")


@dataclass
class Delivery:
    """A webhook waiting for the dispatcher: status dicts to build, or a body to resend."""

    number: SimNumber
    not_before: float
    statuses: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[dict[str, Any]] | None = None
    body: bytes | None = None
    kind: str = "statuses"
    attempt: int = 1
    retry: bool = True


class WebhookDelivery(SimulatorState):
    """Posts webhooks now (customer side, tests) or later (statuses) and keeps their log."""

    _webhooks: list[dict[str, Any]]
    _pending: list[Delivery]
    _held: bool
    _inflight: int  # deliveries being posted by the dispatch thread
    _stopping: bool
    _session: requests.Session

    # ------------------------------------------------------------------ log and waiting

    def webhooks(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every webhook POST attempt made (oldest first), with Klaros's answer."""
        with self._lock:
            return [dict(w) for w in self._webhooks if kind is None or w["kind"] == kind]

    def clear_webhooks(self) -> None:
        """Forget the webhook log."""
        with self._lock:
            self._webhooks.clear()

    @contextmanager
    def webhooks_held(self) -> Iterator[None]:
        """Queue status webhooks without posting them until the block ends (to force batches)."""
        self.configure(hold_webhooks=True)
        try:
            yield
        finally:
            self.configure(hold_webhooks=False)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no webhook is pending or being posted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # ------------------------------------------------------------------ posting now

    def post_raw_webhook(
        self, phone_number_id: str | None, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Sign any payload with a number's app secret and post it (for odd shapes)."""
        number = self.number(phone_number_id)
        return self._post_now(number, payload, kind="raw")

    def verify_webhook(self, verify_token: str, url: str | None = None) -> dict[str, Any]:
        """Do Meta's subscription handshake (GET with hub.* parameters) against the webhook."""
        target = url or self.webhook_url
        if not target:
            raise ValueError("no webhook_url configured")
        challenge = random_digits(10)
        params = {
            "hub.mode": "subscribe",
            "hub.challenge": challenge,
            "hub.verify_token": verify_token,
        }
        try:
            response = self._session.get(target, params=params, timeout=10)
        except requests.RequestException as exc:
            return {"verified": False, "status": None, "error": type(exc).__name__}
        verified = response.status_code == 200 and response.text == challenge
        return {"verified": verified, "status": response.status_code, "body": response.text[:200]}

    def _target(self, number: SimNumber) -> str | None:
        return number.webhook_url or self.webhook_url

    def _encode(self, payload: Mapping[str, Any]) -> bytes:
        return dumps_like_meta(payload, escape_slashes=self._config.escape_slashes)

    def _post_now(
        self,
        number: SimNumber,
        payload: Mapping[str, Any],
        *,
        kind: str,
        sign: bool = True,
        signature: str | None = None,
        deliver: bool = True,
    ) -> dict[str, Any]:
        body = self._encode(payload)
        header = signature if signature is not None else sign_body(body, number.app_secret)
        result: dict[str, Any] = {
            "body": body.decode("ascii"),
            "signature": header if sign else None,
        }
        if not deliver:
            result.update({"status": None, "delivered": False})
            return result
        record = self._post(number, body, header if sign else None, kind=kind, attempt=1)
        result.update({"status": record["status"], "error": record["error"], "delivered": True})
        # Meta retries anything but 200; forged or unsigned test posts are not Meta's, no retry.
        if record["status"] != 200 and sign and signature is None and self._target(number):
            self._retry_later(Delivery(number, 0.0, body=body, kind=kind, attempt=1))
        return result

    def _post(
        self, number: SimNumber, body: bytes, signature: str | None, *, kind: str, attempt: int
    ) -> dict[str, Any]:
        target = self._target(number)
        status: int | None = None
        error: str | None = None
        if not target:
            error = "no webhook_url configured"
        else:
            headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
            if signature is not None:
                headers[SIGNATURE_HEADER] = signature
            try:
                response = self._session.post(
                    target, data=body, headers=headers, timeout=self._config.webhook_timeout
                )
                status = response.status_code
                response.close()
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        record = {
            "time": now_iso(),
            "kind": kind,
            "url": target,
            "phone_number_id": number.phone_number_id,
            "attempt": attempt,
            "status": status,
            "error": error,
            "signature": signature,
            "body": body.decode("ascii", "replace"),
            "json": parsed,
            "statuses": _status_pairs(parsed),
        }
        with self._lock:
            record["id"] = len(self._webhooks) + 1
            self._webhooks.append(record)
            stats = self._stats_for(number.phone_number_id)
            stats.webhooks_posted += 1
            stats.webhooks_ok += status == 200
            stats.webhooks_by_kind[kind] += 1
        if error:
            logger.warning("webhook %s to %s failed: %s", kind, target, error)
        return record

    # ------------------------------------------------------------------ posting later

    def _retry_later(self, delivery: Delivery) -> None:
        if delivery.attempt >= self._config.max_attempts:
            return
        delay = self._config.retry_delay * (2 ** (delivery.attempt - 1))
        retry = Delivery(
            delivery.number,
            time.monotonic() + delay,
            body=delivery.body,
            kind=delivery.kind,
            attempt=delivery.attempt + 1,
        )
        with self._cond:
            self._pending.append(retry)
            self._cond.notify_all()

    def _schedule_for_send(
        self,
        number: SimNumber,
        payload: Mapping[str, Any],
        wamid: str,
        wa_id: str | None,
        template: Mapping[str, Any] | None,
        fault: Fault | None,
        failure: int | None = None,
    ) -> None:
        cfg = self._config
        base: dict[str, Any] = {"id": wamid}
        if wa_id:
            base["recipient_id"] = wa_id
        else:
            base["recipient_user_id"] = str(payload.get("recipient"))
        if payload.get("biz_opaque_callback_data") is not None:
            base["biz_opaque_callback_data"] = payload["biz_opaque_callback_data"]
        pricing = _pricing(template)
        now = int(time.time())
        statuses: list[dict[str, Any]] = []
        error: dict[str, Any] | None = None
        if fault is not None and fault.async_ and fault.code is not None:
            error = async_error(fault.code, fault.details)  # an injected fault wins
        elif failure is not None:
            error = async_error(failure)
        if error is not None:
            statuses.append({**base, "status": "failed", "timestamp": str(now), "errors": [error]})
            with self._lock:
                self._stats_for(number.phone_number_id).failed[str(error["code"])] += 1
        else:
            names = list(cfg.statuses)
            if payload.get("type") == "reaction":
                names = [n for n in names if n == "sent"]  # reactions only ever get "sent"
            if "delivered" in names and self._rng.random() < cfg.skip_delivered_rate:
                names.remove("delivered")
            audio = payload.get("audio")
            if "played" in names and not (isinstance(audio, Mapping) and audio.get("voice")):
                names.remove("played")
            priced = 0
            for offset, name in enumerate(names):
                status = {**base, "status": name, "timestamp": str(now + offset)}
                # Pricing rides on "sent" and on one of delivered/read, never both.
                if name == "sent" or (name in ("delivered", "read") and priced < 2):
                    status["pricing"] = dict(pricing)
                    priced += 1
                statuses.append(status)
        contacts: list[dict[str, Any]] = []
        if wa_id:
            contact: dict[str, Any] = {"wa_id": wa_id}
            name = self._customers.get(wa_id)
            if name:
                contact = {"profile": {"name": name}, "wa_id": wa_id}
            contacts.append(contact)
        self._schedule_statuses(number, statuses, contacts)

    def _schedule_statuses(
        self, number: SimNumber, statuses: list[dict[str, Any]], contacts: list[dict[str, Any]]
    ) -> None:
        delay = self._config.status_delay
        now = time.monotonic()
        with self._cond:
            for i, status in enumerate(statuses):
                with_contacts = contacts if status["status"] != "failed" else None
                self._pending.append(Delivery(number, now + i * delay, [status], with_contacts))
            self._cond.notify_all()

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take_ready()
                while batch is None:
                    if self._stopping:
                        return
                    wait = self._next_wait()
                    self._cond.wait(wait)
                    if self._stopping:
                        return
                    batch = self._take_ready()
                self._inflight += 1
            try:
                self._deliver(batch)
            except Exception:  # the delivery thread must survive anything
                logger.exception("simulator webhook delivery failed")
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    def _next_wait(self) -> float:
        if not self._pending:
            return 1.0
        soonest = min(d.not_before for d in self._pending)
        return max(0.001, min(1.0, soonest - time.monotonic()))

    def _take_ready(self) -> list[Delivery] | None:
        if self._held:
            return None
        now = time.monotonic()
        ready = [i for i, d in enumerate(self._pending) if d.not_before <= now]
        if not ready:
            return None
        cfg = self._config
        index = ready[0]
        if len(ready) > 1 and self._rng.random() < cfg.reorder_rate:
            index = ready[1]  # send a later update first
        first = self._pending.pop(index)
        batch = [first]
        if first.body is None and self._rng.random() < cfg.batch_rate:
            for i in reversed(range(len(self._pending))):
                other = self._pending[i]
                if (
                    other.not_before <= now
                    and other.body is None
                    and other.number.app_secret == first.number.app_secret
                    and self._target(other.number) == self._target(first.number)
                    and len(batch) < 10
                ):
                    batch.insert(1, self._pending.pop(i))
        return batch

    def _deliver(self, batch: list[Delivery]) -> None:
        first = batch[0]
        body = first.body if first.body is not None else self._encode(_status_payload(batch))
        signature = sign_body(body, first.number.app_secret)
        record = self._post(first.number, body, signature, kind=first.kind, attempt=first.attempt)
        if record["status"] != 200 and record["url"]:
            self._retry_later(
                Delivery(first.number, 0.0, body=body, kind=first.kind, attempt=first.attempt)
            )
        elif first.body is None and self._rng.random() < self._config.duplicate_rate:
            # Meta delivers the same update twice now and then; re-send the identical bytes.
            with self._cond:
                self._pending.append(
                    Delivery(first.number, time.monotonic(), body=body, kind=first.kind, attempt=1)
                )
                self._cond.notify_all()


def webhook_metadata(number: SimNumber) -> dict[str, str]:
    """The ``metadata`` of a change: which business number it is about."""
    return {
        "display_phone_number": number.display_phone_number,
        "phone_number_id": number.phone_number_id,
    }


def webhook_envelope(
    waba_id: str, changes: list[tuple[str, dict[str, Any]]], *, time_: int | None = None
) -> dict[str, Any]:
    """A webhook body: one WABA entry with ``changes`` as (field, value) pairs."""
    entry: dict[str, Any] = {"id": waba_id}
    if time_ is not None:
        entry["time"] = time_
    entry["changes"] = [{"value": value, "field": name} for name, value in changes]
    return {"object": "whatsapp_business_account", "entry": [entry]}


def _status_payload(batch: list[Delivery]) -> dict[str, Any]:
    """One body for several status deliveries: an entry per WABA, a change per number."""
    by_waba: dict[str, dict[str, dict[str, Any]]] = {}
    for delivery in batch:
        number = delivery.number
        changes = by_waba.setdefault(number.waba_id, {})
        value = changes.get(number.phone_number_id)
        if value is None:
            value = {"messaging_product": "whatsapp", "metadata": webhook_metadata(number)}
            changes[number.phone_number_id] = value
        if delivery.contacts:
            known = value.setdefault("contacts", [])
            for contact in delivery.contacts:
                if contact not in known:
                    known.append(contact)
        value.setdefault("statuses", []).extend(delivery.statuses)
    entries = []
    for waba_id, changes in by_waba.items():
        entries.append(
            {
                "id": waba_id,
                "changes": [{"value": v, "field": "messages"} for v in changes.values()],
            }
        )
    return {"object": "whatsapp_business_account", "entry": entries}


def _status_pairs(parsed: Any) -> list[list[str]]:
    pairs: list[list[str]] = []
    if not isinstance(parsed, dict):
        return pairs
    for entry in parsed.get("entry") or []:
        for change in entry.get("changes") or []:
            for status in (change.get("value") or {}).get("statuses") or []:
                pairs.append([status.get("id"), status.get("status")])
    return pairs


def _pricing(template: Mapping[str, Any] | None) -> dict[str, Any]:
    if template is None:
        return {
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
    category = str(template.get("category") or "UTILITY").lower()
    return {"billable": True, "pricing_model": "PMP", "category": category, "type": "regular"}
