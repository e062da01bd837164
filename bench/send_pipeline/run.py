#!/usr/bin/env python
"""Benchmarks B5 (reply latency, no Graph call in the request) and B7 (send pipeline) from
shared/reference/performance-targets.md, on PostgreSQL. See README.md for the command.

(a) B5. WHATSAPP_GRAPH_URL points at a black hole: a loopback TCP listener that accepts and
    never answers (a Graph call inside a request would hang there for 30 s and show up as a
    connection). Replies are timed
      - in-process: the `queue_text_reply` service (gate, outbound row, audit event, dispatcher
        wake-up through the django-q ORM broker), and
      - over HTTP: gunicorn (klaros.wsgi, bench URLconf), alternating rounds of
        `/bench/reply/<conversation>` (a thin view over the same service: the product has no
        reply endpoint yet) and `/bench/noop` (same stack, no work: the baseline).
    The black hole must see 0 connections during the request phase.
(b) B7. N messages (one per recipient: distinct conversations) are queued across 1 and K
    numbers; the dispatcher (`dispatch_outbox`, this process) sends them to the Meta simulator
    (its own process, 80/s per number rule on) with 0 ms latency and with lognormal latency
    (median 300 ms, sigma 0.596: p99 ~1.2 s). Figures come from the simulator's request log:
    per-number sustained rate, the maximum in any 1-s window (sliding, at the simulator),
    130429 count, aggregate rate; plus sender CPU (getrusage) and load average.

Loopback only; every phase is bounded by a duration or a count.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/klaros_bench_send"
PNID_BASE = 100000091000
WABA = "200000091000"
APP_ID = "300000091000"
SIGMA_300 = math.log(4) / 2.3263  # lognormal: p99 = 4 x median (300 ms -> 1.2 s)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_env(db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "bench.send_pipeline.settings",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret-key-0123456789abcdef0123456789abcdef",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "KLAROS_ENCRYPTION_KEYS": os.environ.get(
            "KLAROS_ENCRYPTION_KEYS", "bench1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        ),
        "KLAROS_AUDIT_SIGNING_KEY": os.environ.get(
            "KLAROS_AUDIT_SIGNING_KEY", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
        ),
        "SECURE_SSL_REDIRECT": "false",
        "KLAROS_TASKS_SYNC": "false",  # wake-ups go to the ORM broker; no worker runs here
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }


def ensure_database(db_url: str) -> None:
    import psycopg

    base, name = db_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(db_url: str) -> None:
    os.environ.update(bench_env(db_url))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def token_for(pnid: str) -> str:
    return f"EAA-bench-send-{pnid}"


def seed_numbers(count: int):
    """One tenant with `count` numbers (idempotent); returns (tenant, owner, numbers)."""
    from apps.tenants.models import Membership, Role, Tenant, WhatsAppNumber
    from apps.tenants.scoping import tenant_scope, unscoped
    from apps.tenants.services import NumberCredentials, add_member, connect_number, create_tenant

    tenant = Tenant.objects.filter(slug="bench-send").first()
    if tenant is None:
        tenant = create_tenant("bench-send", "Bench send", actor="bench")
        add_member(
            tenant,
            "agent@bench-send.test",
            role=Role.OWNER,
            password="bench-pw-0123456789",  # noqa: S106
            actor="bench",
        )
    numbers = []
    for index in range(count):
        pnid = str(PNID_BASE + index)
        with unscoped("bench seed"):
            number = WhatsAppNumber.objects.filter(phone_number_id=pnid).first()
        if number is None:
            number = connect_number(
                tenant,
                phone_number_id=pnid,
                waba_id=WABA,
                display_phone_number=f"+1 555 {pnid[-4:]}",
                app_id=APP_ID,
                credentials=NumberCredentials(  # loopback benchmark only
                    access_token=token_for(pnid),
                    app_secret="bench-send-app-secret",  # noqa: S106
                    verify_token="bench-send-verify",  # noqa: S106
                ),
                actor="bench",
            )
        numbers.append(number)
    with tenant_scope(tenant):
        owner = Membership.objects.filter(tenant=tenant).order_by("pk").first().user
    return tenant, owner, numbers


def reset_outbox() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE conversations_statusevent, conversations_message, "
            "conversations_conversation, conversations_contact CASCADE"
        )
        cursor.execute("DELETE FROM django_q_ormq")
        cursor.execute("UPDATE conversations_outboxdrainflag SET scheduled = false")


def make_conversations(tenant, numbers, per_number: int):
    """Distinct recipients, each with an open 24-hour window."""
    from django.utils import timezone

    from apps.conversations.models import Contact, Conversation
    from apps.tenants.scoping import tenant_scope

    now = timezone.now()
    conversations = []
    with tenant_scope(tenant):
        for n, number in enumerate(numbers):
            contacts = Contact.objects.bulk_create(
                [
                    Contact(tenant=tenant, wa_id=f"1{n:03d}{i:07d}", profile_name=f"C{n}-{i}")
                    for i in range(per_number)
                ],
                batch_size=2000,
            )
            conversations += Conversation.objects.bulk_create(
                [
                    Conversation(
                        tenant=tenant,
                        number=number,
                        contact=contact,
                        last_inbound_at=now - timedelta(minutes=5),
                        last_message_at=now - timedelta(minutes=5),
                    )
                    for contact in contacts
                ],
                batch_size=2000,
            )
    return conversations


def queue_directly(tenant, owner, conversations) -> int:
    """Outbound rows exactly as `outbox._queue` writes them (queued, one per conversation),
    inserted in bulk: queueing 20k replies one service call at a time would take minutes."""
    from django.utils import timezone

    from apps.conversations.models import STATUS_RANK, Direction, Message, MessageStatus
    from apps.tenants.scoping import tenant_scope

    now = timezone.now()
    # Interleaved across numbers (as 13 campaigns queued at once), oldest first.
    by_number = defaultdict(list)
    for conversation in conversations:
        by_number[conversation.number_id].append(conversation)
    columns = list(by_number.values())
    conversations = [c for row in itertools.zip_longest(*columns) for c in row if c is not None]
    rows = [
        Message(
            tenant=tenant,
            conversation=conversation,
            direction=Direction.OUTBOUND,
            type="text",
            content={"body": f"Update {i}", "preview_url": False},
            text=f"Update {i}",
            status=MessageStatus.QUEUED,
            status_rank=STATUS_RANK[MessageStatus.QUEUED],
            sent_at=now + timedelta(microseconds=i),
            sent_by=owner,
            send_path="agent_reply",
        )
        for i, conversation in enumerate(conversations)
    ]
    with tenant_scope(tenant):
        Message.objects.bulk_create(rows, batch_size=2000)
    from django.db import connection

    with connection.cursor() as cursor:  # fresh statistics, as §6.0's VACUUM ANALYZE
        cursor.execute(
            "VACUUM ANALYZE conversations_message, conversations_conversation, "
            "conversations_contact"
        )
    return len(rows)


# --- B5 ---------------------------------------------------------------------------------------


class BlackHole:
    """Accepts TCP connections on loopback and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._held = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)

    @property
    def graph_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v25.0"

    def close(self) -> None:
        self._stop = True
        for conn in self._held:
            conn.close()
        self.sock.close()


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port}")


def reply_endpoint(owner, tenant) -> tuple[str, dict[str, str], str]:
    """The product's reply endpoint with a logged-in agent's session and CSRF token (as the
    inbox's htmx form posts it), or the bench view when the product has none."""
    from django.conf import settings
    from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
    from django.test import Client
    from django.urls import NoReverseMatch, reverse
    from django.utils.crypto import get_random_string

    from apps.tenants.middleware import SESSION_KEY

    try:
        probe = uuid.uuid4()
        path = reverse("conversation_reply", args=[probe]).replace(str(probe), "{pk}")
    except NoReverseMatch:
        return "/bench/reply/{pk}", {}, "bench/reply (thin view over queue_text_reply)"
    client = Client()
    client.force_login(owner)
    session = client.session
    session[SESSION_KEY] = str(tenant.pk)
    session.save()
    # A CSRF secret as Django mints one (its cookie value when CSRF_USE_SESSIONS is off).
    csrf = get_random_string(CSRF_SECRET_LENGTH, allowed_chars=CSRF_ALLOWED_CHARS)
    cookie = (
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}; "
        f"{settings.CSRF_COOKIE_NAME}={csrf}"
    )
    headers = {"Cookie": cookie, "X-CSRFToken": csrf, "HX-Request": "true"}
    return path, headers, f"product endpoint {path} (htmx, session + CSRF)"


def run_b5(args, db_url: str) -> dict:
    from django.conf import settings

    from apps.conversations.models import Message
    from apps.conversations.outbound.outbox import queue_text_reply
    from apps.tenants.scoping import tenant_scope, unscoped

    reset_outbox()
    tenant, owner, numbers = seed_numbers(1)
    hole = BlackHole()
    settings.WHATSAPP_GRAPH_URL = hole.graph_url
    conversations = make_conversations(tenant, numbers[:1], 2 * args.b5_requests + 20)
    result: dict = {"graph_url": hole.graph_url}

    # In-process: the service itself.
    times = []
    la_before = loadavg()
    with tenant_scope(tenant):
        for i, conversation in enumerate(conversations[: args.b5_requests]):
            started = time.perf_counter()
            queue_text_reply(conversation, f"Thanks, on it ({i})", actor=owner)
            times.append((time.perf_counter() - started) * 1000)
    result["in_process"] = {
        "n": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(pct(times, 95), 2),
        "loadavg": [la_before, loadavg()],
    }

    # Over HTTP: gunicorn, alternating rounds of reply and noop.
    port = free_port()
    env = {**bench_env(db_url), "WHATSAPP_GRAPH_URL": hole.graph_url}
    server = subprocess.Popen(
        [
            str(Path(sys.executable)),
            "-m",
            "gunicorn",
            "klaros.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.gunicorn_workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_http(port, "/bench/noop")
        http_conversations = conversations[args.b5_requests :]
        reply_path, headers, view = reply_endpoint(owner, tenant)
        reply_ms, noop_ms, statuses = [], [], Counter()
        la_before = loadavg()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        warm = 20
        rounds = 10
        per_round = max(1, args.b5_requests // rounds)
        index = 0
        for r in range(rounds + 1):  # round 0 warms both paths up (not counted)
            for kind in ("reply", "noop"):
                for _ in range(warm if r == 0 else per_round):
                    body = urllib.parse.urlencode({"body": f"Reply {index}"})
                    if kind == "reply":
                        path = reply_path.format(pk=http_conversations[index].pk)
                        index += 1
                    else:
                        path = "/bench/noop"
                    started = time.perf_counter()
                    conn.request(
                        "POST",
                        path,
                        body=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
                    )
                    response = conn.getresponse()
                    response.read()
                    elapsed = (time.perf_counter() - started) * 1000
                    statuses[(kind, response.status)] += 1
                    if r:
                        (reply_ms if kind == "reply" else noop_ms).append(elapsed)
        conn.close()
        result["http"] = {
            "n_each": len(reply_ms),
            "reply_p50_ms": round(statistics.median(reply_ms), 2),
            "reply_p95_ms": round(pct(reply_ms, 95), 2),
            "noop_p50_ms": round(statistics.median(noop_ms), 2),
            "noop_p95_ms": round(pct(noop_ms, 95), 2),
            "statuses": {f"{k}:{s}": n for (k, s), n in statuses.items()},
            "loadavg": [la_before, loadavg()],
            "gunicorn_workers": args.gunicorn_workers,
            "reply_view": view,
        }
    finally:
        server.terminate()
        server.wait(timeout=20)
    with unscoped("bench witness"):
        result["queued_rows"] = Message.objects.filter(direction="out", status="queued").count()
    result["black_hole_connections_during_requests"] = hole.connections
    hole.close()
    return result


# --- B7 ---------------------------------------------------------------------------------------


class SimProcess:
    def __init__(self, numbers, latency_ms: float, sigma: float, seed: int, db_url: str) -> None:
        spec = [
            {
                "phone_number_id": n.phone_number_id,
                "waba_id": n.waba_id,
                "token": token_for(n.phone_number_id),
                "app_secret": "bench-send-app-secret",
                "display_phone_number": "1555" + n.phone_number_id[-4:],
            }
            for n in numbers
        ]
        self._spec = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        json.dump(spec, self._spec)
        self._spec.close()
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.send_pipeline.sim_process",
                str(self.port),
                self._spec.name,
                str(latency_ms),
                str(sigma),
                str(seed),
            ],
            cwd=ROOT,
            env=bench_env(db_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY"):
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.graph_url = line.split()[1]
        self.latency_source = line.split("latency=")[1]

    def requests(self, pnid: str) -> list[dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", f"/_sim/requests?phone_number_id={pnid}")
        data = json.loads(conn.getresponse().read())["data"]
        conn.close()
        return data

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        os.unlink(self._spec.name)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best = low = 0
    for high, t in enumerate(times):
        while times[low] <= t - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def sequential_dispatch(duration: float) -> int:
    """The baseline: the previous, sequential dispatcher (claim 50, then reconcile, gate, wait
    for the number's slot, call, record: one message at a time), kept as `dispatch_one`."""
    from apps.conversations.outbound.dispatcher import NumberThrottle, claim_batch, dispatch_one
    from apps.tenants.scoping import tenant_scope

    throttle, clients, sent = NumberThrottle(), {}, 0
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            batch = claim_batch()
            if not batch:
                break
            for message in batch:
                with tenant_scope(message.tenant_id):
                    sent += dispatch_one(message, throttle, clients)
    finally:
        for client in clients.values():
            client.close()
    return sent


def run_b7(
    args,
    db_url: str,
    *,
    numbers_count: int,
    latency_ms: float,
    duration: float,
    sequential: bool = False,
) -> dict:
    from django.conf import settings

    from apps.conversations.models import Message
    from apps.conversations.outbound.dispatcher import dispatch_outbox
    from apps.tenants.scoping import unscoped

    reset_outbox()
    tenant, owner, numbers = seed_numbers(numbers_count)
    per_number = int(80 * duration * 1.15) + 50  # more than the rate can drain in the run
    conversations = make_conversations(tenant, numbers, per_number)
    queued = queue_directly(tenant, owner, conversations)
    sigma = SIGMA_300 if latency_ms else 0.0
    sim = SimProcess(numbers, latency_ms, sigma, args.seed, db_url)
    try:
        settings.WHATSAPP_GRAPH_URL = sim.graph_url
        settings.KLAROS_SEND_CONCURRENCY = args.concurrency
        la_before = loadavg()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_started = time.monotonic()
        if sequential:
            accepted = sequential_dispatch(duration)
        else:
            accepted = dispatch_outbox(time_budget=duration)
        wall = time.monotonic() - wall_started
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        la_after = loadavg()
        cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
            usage_after.ru_stime - usage_before.ru_stime
        )
        per_number_stats = {}
        all_times = []
        codes = Counter()
        for number in numbers:
            sends = [
                r
                for r in sim.requests(number.phone_number_id)
                if r["method"] == "POST" and r["path"].endswith("/messages")
            ]
            times = [datetime.fromisoformat(r["time"]).timestamp() for r in sends]
            ok = [t for t, r in zip(times, sends, strict=True) if r["status"] == 200]
            for r in sends:
                if r["status"] != 200:
                    codes[str(((r.get("response") or {}).get("error") or {}).get("code"))] += 1
            all_times += ok
            span = (max(ok) - min(ok)) if len(ok) > 1 else float("nan")
            # Steady state: the seconds after the first one (ramp-up) and before the last.
            steady = [t for t in ok if min(ok) + 1 <= t < max(ok) - 1] if ok else []
            steady_span = (max(ok) - min(ok) - 2) if ok else float("nan")
            per_number_stats[number.phone_number_id] = {
                "requests": len(sends),
                "accepted": len(ok),
                "rate": round((len(ok) - 1) / span, 2) if len(ok) > 1 else None,
                "steady_rate": round(len(steady) / steady_span, 2) if steady_span > 0 else None,
                "max_in_any_1s_window": max_in_window(times),
            }
        span = max(all_times) - min(all_times) if len(all_times) > 1 else float("nan")
        with unscoped("bench witness"):
            status_counts = Counter(
                Message.objects.filter(direction="out").values_list("status", flat=True)
            )
        rates = [s["steady_rate"] for s in per_number_stats.values() if s["steady_rate"]]
        result = {
            "dispatcher": "sequential baseline" if sequential else "concurrent",
            "numbers": numbers_count,
            "latency": (
                f"lognormal median {latency_ms:.0f} ms sigma {sigma:.3f}" if latency_ms else "0 ms"
            ),
            "concurrency": args.concurrency,
            "time_budget_s": duration,
            "queued": queued,
            "accepted_by_dispatcher": accepted,
            "wall_s": round(wall, 2),
            "aggregate_rate": round(len(all_times) / span, 1) if span == span else None,
            "per_number_steady_rate_min": min(rates) if rates else None,
            "per_number_steady_rate_median": statistics.median(rates) if rates else None,
            "per_number_steady_rate_max": max(rates) if rates else None,
            "max_in_any_1s_window": max(
                s["max_in_any_1s_window"] for s in per_number_stats.values()
            ),
            "errors_by_code": dict(codes),
            "count_130429": codes.get("130429", 0),
            "sender_cpu_cores": round(cpu / wall, 2),
            "little_in_flight_estimate": (
                round(len(all_times) / span * latency_ms * math.exp(sigma**2 / 2) / 1000, 1)
                if latency_ms and span == span
                else None
            ),
            "row_statuses_after": dict(status_counts),
            "loadavg": [la_before, la_after],
            "per_number": per_number_stats if numbers_count <= 3 else "omitted (see max/min)",
        }
    finally:
        sim.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per B7 run")
    parser.add_argument("--numbers", type=int, default=13, help="numbers in the aggregate run")
    parser.add_argument("--concurrency", type=int, default=64, help="KLAROS_SEND_CONCURRENCY")
    parser.add_argument("--b5-requests", type=int, default=300)
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["b5", "b7"], default=None)
    parser.add_argument(
        "--scenarios",
        default="1:0,1:300,N:0,N:300,1:0:seq,1:300:seq",
        help="B7 runs as numbers:latency_ms[:seq], N = --numbers, seq = sequential baseline",
    )
    parser.add_argument("--out", default=None, help="also write the JSON results here")
    args = parser.parse_args()

    ensure_database(args.db)
    setup_django(args.db)
    results: dict = {
        "started": datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    if args.only in (None, "b5"):
        results["b5"] = run_b5(args, args.db)
        print(json.dumps({"b5": results["b5"]}, indent=2), flush=True)
    if args.only in (None, "b7"):
        results["b7"] = []
        for scenario in args.scenarios.split(","):
            count, latency, *mode = scenario.split(":")
            numbers_count = args.numbers if count == "N" else int(count)
            run = run_b7(
                args,
                args.db,
                numbers_count=numbers_count,
                latency_ms=float(latency),
                duration=args.duration,
                sequential=mode == ["seq"],
            )
            results["b7"].append(run)
            print(json.dumps(run, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
