"""What the simulator is, without its server: :class:`SimulatorCore` combines the parts
(Graph endpoints, customer side, webhook delivery, sending rules, media storage) and holds
the simulator-wide configuration, ``configure()`` and ``config()``. The control API works on
it; :class:`~apps.whatsapp.simulator.MetaSimulator` adds the state and the HTTP server."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .customer import CustomerSide
from .graph import GraphEndpoints
from .state import SimConfig


class SimulatorCore(GraphEndpoints, CustomerSide):
    """Every behaviour of the simulator and its configuration; MetaSimulator creates the
    state and serves it."""

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
