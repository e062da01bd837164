"""The sending rules the simulator enforces like Meta before it accepts a send: the customer's
24-hour window (131047), message templates (known, approved, with the right number of body
parameters: 132001, 132015, 132016, 132000), marketing opt-outs (131050) and each number's
throughput (130429). Also the Python API to set templates, windows and opt-outs."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import SimError
from .state import SimNumber, SimulatorState, random_digits


class SendingRules(SimulatorState):
    """Templates, windows, opt-outs and the rate limit, and the checks of a send against them."""

    # (phone_number_id, customer key) -> unix time of the customer's last inbound message.
    _windows: dict[tuple[str, str], float]
    _opted_out: set[tuple[str, str]]
    # phone_number_id -> monotonic times of the sends accepted in the last second.
    _send_times: dict[str, deque[float]]

    # ------------------------------------------------------------------ templates

    def set_templates(
        self, waba_id: str, templates: Iterable[Mapping[str, Any]], *, replace: bool = True
    ) -> list[dict[str, Any]]:
        """Set (or add to) a WABA's message templates; missing ids and defaults are filled in."""
        with self._lock:
            current = [] if replace else list(self._templates.get(waba_id, []))
            for raw in templates:
                if not raw.get("name"):
                    raise ValueError("every template needs a name")
                tpl = {
                    "name": raw["name"],
                    "parameter_format": raw.get("parameter_format", "POSITIONAL"),
                    "components": raw.get("components")
                    or [{"type": "BODY", "text": f"Hello from {raw['name']}"}],
                    "language": raw.get("language", "en_US"),
                    "status": raw.get("status", "APPROVED"),
                    "category": raw.get("category", "UTILITY"),
                    "id": str(raw.get("id") or random_digits(16)),
                }
                tpl.update({k: v for k, v in raw.items() if k not in tpl})
                current = [
                    t
                    for t in current
                    if (t["name"], t["language"]) != (tpl["name"], tpl["language"])
                ]
                current.append(tpl)
            self._templates[waba_id] = current
            return [dict(t) for t in current]

    def templates(self, waba_id: str) -> list[dict[str, Any]]:
        """A WABA's templates."""
        with self._lock:
            return [dict(t) for t in self._templates.get(waba_id, [])]

    # ------------------------------------------------------------------ windows and opt-outs

    def set_window(
        self, phone_number_id: str | None, customer: str, last_inbound_at: float | None
    ) -> dict[str, Any]:
        """Set when ``customer`` (wa_id or user_id) last wrote to a number, in unix seconds;
        ``None`` forgets it (window never opened). E.g. ``time.time() - 25 * 3600``."""
        number = self.number(phone_number_id)
        key = (number.phone_number_id, _customer_key(customer))
        with self._lock:
            if last_inbound_at is None:
                self._windows.pop(key, None)
            else:
                self._windows[key] = float(last_inbound_at)
        return self.window(number.phone_number_id, customer)

    def window(self, phone_number_id: str | None, customer: str) -> dict[str, Any]:
        """The customer-service window (and marketing opt-out) of one customer."""
        number = self.number(phone_number_id)
        key = (number.phone_number_id, _customer_key(customer))
        with self._lock:
            last = self._windows.get(key)
            opted_out = key in self._opted_out
            length = self._config.window_seconds
        expires = None if last is None else last + length
        return {
            "phone_number_id": number.phone_number_id,
            "customer": key[1],
            "last_inbound_at": last,
            "expires_at": expires,
            "open": expires is not None and time.time() < expires,
            "opted_out_marketing": opted_out,
        }

    def set_opt_out(self, phone_number_id: str | None, customer: str, value: str) -> dict[str, Any]:
        """Record a marketing ``stop`` or ``resume`` without posting a webhook."""
        if value not in ("stop", "resume"):
            raise ValueError("value: expected 'stop' or 'resume'")
        number = self.number(phone_number_id)
        self._record_preference(number.phone_number_id, [customer], value)
        return self.window(number.phone_number_id, customer)

    def _record_inbound(self, phone_number_id: str, customers: Iterable[str], ts: float) -> None:
        with self._lock:
            for customer in customers:
                key = (phone_number_id, _customer_key(customer))
                self._windows[key] = max(ts, self._windows.get(key, ts))

    def _record_preference(
        self, phone_number_id: str, customers: Iterable[str | None], value: str
    ) -> None:
        with self._lock:
            for customer in customers:
                if not customer:
                    continue
                key = (phone_number_id, _customer_key(customer))
                if value == "stop":
                    self._opted_out.add(key)
                elif value == "resume":
                    self._opted_out.discard(key)

    def _window_open(self, phone_number_id: str, customer: str) -> bool:
        with self._lock:
            last = self._windows.get((phone_number_id, _customer_key(customer)))
            length = self._config.window_seconds
        return last is not None and time.time() < last + length

    # ------------------------------------------------------------------ checks of a send

    def _rule_failure(
        self, number: SimNumber, customer: str, template: Mapping[str, Any] | None
    ) -> int | None:
        """The code a send will fail with asynchronously under Meta's rules, if any (a sync
        131047 is raised here when ``window_sync_error`` is on)."""
        cfg = self._config
        pnid = number.phone_number_id
        if template is None:
            if cfg.enforce_window and not self._window_open(pnid, customer):
                if cfg.window_sync_error:
                    raise SimError(131047)
                return 131047
            return None
        if cfg.enforce_opt_out and str(template.get("category") or "").upper() == "MARKETING":
            with self._lock:
                if (pnid, _customer_key(customer)) in self._opted_out:
                    return 131050
        return None

    def _check_rate(self, number: SimNumber) -> None:
        """Admit one send under the number's throughput, or raise 130429 (reference §14.1)."""
        limit = self._config.rate_limit_per_second
        if limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            times = self._send_times.setdefault(number.phone_number_id, deque())
            while times and times[0] <= now - 1.0:
                times.popleft()
            if len(times) >= limit:
                raise SimError(130429)
            times.append(now)

    def _check_template(self, number: SimNumber, tpl: Mapping[str, Any]) -> dict[str, Any]:
        name = tpl.get("name")
        language = tpl.get("language")
        code = language.get("code") if isinstance(language, Mapping) else None
        if not name or not code:
            raise SimError(131008, details="template.name and template.language.code are required.")
        with self._lock:
            found = next(
                (
                    t
                    for t in self._templates.get(number.waba_id, [])
                    if t["name"] == name and t["language"] == code
                ),
                None,
            )
        if found is None or found.get("status") not in ("APPROVED", "LOCKED"):
            if found is not None and found.get("status") == "PAUSED":
                raise SimError(132015)
            if found is not None and found.get("status") == "DISABLED":
                raise SimError(132016)
            raise SimError(132001, details=f"template name ({name}) does not exist in {code}")
        expected = 0
        for component in found.get("components") or []:
            if str(component.get("type", "")).upper() == "BODY":
                expected = len(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", component.get("text", ""))))
        given = 0
        for component in tpl.get("components") or []:
            if isinstance(component, Mapping) and component.get("type") == "body":
                given = len(component.get("parameters") or [])
        if expected != given:
            raise SimError(
                132000,
                details=f"body: number of localizable_params ({given}) does not match the "
                f"expected number of params ({expected})",
            )
        return found


def _customer_key(customer: str) -> str:
    """A phone number as its digits (``+1 555-123`` == ``1555123``); a user id as given."""
    text = str(customer).strip()
    if re.fullmatch(r"[\d\s+\-().]+", text):
        return re.sub(r"\D", "", text)
    return text
