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
``GET /_sim/stats`` counts accepted, rejected and failed sends and webhooks per number, and the
most sends the simulator held in flight at once; the request log says how long each answer was
held.

Run it in-process (``MetaSimulator(...).start()``, see :mod:`apps.whatsapp.testing`) or with
``manage.py meta_simulator``. It binds to loopback by default and has no authentication on the
control API: it is a development tool, never expose it.

The package has one module per concern; :class:`MetaSimulator` combines their mixins:

- ``server``: ``MetaSimulator`` itself (the shared state, start/stop) and the HTTP handler;
- ``core``: ``SimulatorCore``, every behaviour combined, with ``configure()``/``config()``;
- ``graph``: the Graph endpoints, token auth, fault injection, latency, the request log;
- ``rules``: Meta's sending rules (24-hour window, templates, opt-outs, rate limit);
- ``webhooks``: signing, posting, scheduled statuses, batching, retries, the dispatch loop;
- ``customer``: the simulated customer (inbound messages, preferences) and template events;
- ``media``: stored media and its signed download links;
- ``control``: the ``/_sim/`` routes;
- ``state`` and ``errors``: the shared state, dataclasses and Meta's error catalogue.
"""

from .errors import ERROR_CATALOG, SimError
from .server import MetaSimulator
from .state import Fault, SimNumber, parse_number_spec

__all__ = [
    "ERROR_CATALOG",
    "Fault",
    "MetaSimulator",
    "SimError",
    "SimNumber",
    "parse_number_spec",
]
