"""``manage.py meta_simulator``: run the local Meta stand-in in the foreground until Ctrl-C."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.whatsapp.simulator import MetaSimulator, parse_number_spec


class Command(BaseCommand):
    help = (
        "Run a local stand-in for Meta's WhatsApp Cloud API: Graph endpoints under /vNN.N/, "
        "signed webhooks to --webhook-url, and a control API under /_sim/. Development only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
        parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
        parser.add_argument(
            "--webhook-url",
            default=None,
            help="where to POST webhooks, e.g. http://127.0.0.1:8000/webhooks/whatsapp/",
        )
        parser.add_argument(
            "--number",
            action="append",
            default=[],
            metavar="PNID:WABA_ID:TOKEN:APP_SECRET:DISPLAY_NUMBER",
            help="a business number to serve (repeatable); fake credentials only",
        )
        parser.add_argument(
            "--chaos",
            action="store_true",
            help="batch, duplicate and reorder status webhooks now and then, like Meta",
        )
        parser.add_argument("--seed", type=int, default=None, help="seed for --chaos randomness")
        parser.add_argument(
            "--status-delay",
            type=float,
            default=0.5,
            help="seconds between the sent/delivered/read webhooks of a message (default 0.5)",
        )
        parser.add_argument(
            "--no-enforce-window",
            dest="enforce_window",
            action="store_false",
            help="deliver free-form sends even outside the customer's 24-hour window "
            "(by default they fail with 131047, like Meta; the simulator forgets windows "
            "when it restarts)",
        )
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=80,
            help="accepted sends per number per rolling second before 130429 (default 80, 0 off)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            numbers = [parse_number_spec(spec) for spec in options["number"]]
        except ValueError as exc:
            raise CommandError(f"--number: {exc}") from exc
        sim = MetaSimulator(
            options["host"],
            options["port"],
            options["webhook_url"],
            numbers=numbers,
            seed=options["seed"],
            chaos=options["chaos"],
            enforce_window=options["enforce_window"],
        )
        try:
            sim.configure(
                status_delay=options["status_delay"],
                rate_limit_per_second=options["rate_limit"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            sim.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc
        self.stdout.write(f"Meta simulator on {sim.url}  (Graph base URL: {sim.graph_url()})")
        self.stdout.write(f"Webhooks go to {sim.webhook_url or '(nowhere: set --webhook-url)'}")
        for number in numbers:
            self.stdout.write(
                f"  number {number.phone_number_id} ({number.display_phone_number}), "
                f"WABA {number.waba_id}"
            )
        config = sim.config()
        self.stdout.write(
            f"24-hour window {'enforced' if config['enforce_window'] else 'not enforced'}, "
            f"rate limit {config['rate_limit_per_second'] or 'off'}/s per number"
        )
        self.stdout.write(f"Control API: {sim.url}/_sim/   Ctrl-C to stop.")
        try:
            sim.serve_until_interrupted()
        finally:
            self.stdout.write("Meta simulator stopped.")
