#!/usr/bin/env python
"""Benchmark B1 + B2 (shared/reference/performance-targets.md) on PostgreSQL.

(a) Signed-webhook acknowledgement: gunicorn (klaros.wsgi, bench URLconf) with a real qcluster
    draining; wrk, pinned to one CPU, POSTs pre-signed ~1.3 KB bodies (3 status : 1 inbound)
    to the real endpoint and, interleaved in the same run, to `/bench/noop` (same server, same
    middleware, no work) and `/bench/insert` (one raw INSERT, no signature, no ORM). Reports
    rates, p50/p99 and the ratios to both baselines, then checks that every acknowledged
    webhook is a stored, processed journal row and reports the lag.
(b) Drain throughput of a preloaded journal (no worker running): statuses batched as Meta does
    (50 per body) and inbound messages (one per body, as Meta sends them), drained with
    `drain_journal()` (batched, `ingest.ingest_batch`) against the one-event-per-transaction
    baseline (`drain_batch(1, batched=False)`: the per-event ORM path over one-event bodies); then a
    replay of the whole journal (0 new rows expected); then SQL statements per item for both
    paths (counted with an execute wrapper, small samples, not timed).

Loopback only; every loop is bounded by a duration or a count. See README.md for the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/klaros_bench"
PNID, WABA, APP_ID = "100000009001", "200000009001", "300000009001"
APP_SECRET = "bench-app-secret"  # noqa: S105 - loopback benchmark only
BASE_TS = 1767225600


def bench_env(db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "bench.webhook_ingest.settings",
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
        "KLAROS_TASKS_SYNC": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }


def ensure_database(db_url: str) -> None:
    import psycopg

    base, name = db_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(db_url: str) -> None:
    os.environ.update(bench_env(db_url))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed():
    from apps.tenants.models import Tenant, WhatsAppNumber
    from apps.tenants.scoping import unscoped
    from apps.tenants.services import NumberCredentials, connect_number, create_tenant

    with unscoped("bench seed"):
        number = WhatsAppNumber.objects.filter(phone_number_id=PNID).first()
        if number:
            return number
    tenant = Tenant.objects.filter(slug="bench").first() or create_tenant(
        "bench", "Bench", actor="bench"
    )
    return connect_number(
        tenant,
        phone_number_id=PNID,
        waba_id=WABA,
        display_phone_number="+1 555 9001",
        app_id=APP_ID,
        credentials=NumberCredentials(  # loopback benchmark only
            access_token="EAA-bench",  # noqa: S106
            app_secret=APP_SECRET,
            verify_token="bench-verify",  # noqa: S106
        ),
        actor="bench",
    )


def reset_inbox() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE conversations_webhookevent, conversations_statusevent, "
            "conversations_metaerrorreport, conversations_message, conversations_conversation, "
            "conversations_contact, conversations_journaldrainflag, billing_charge CASCADE"
        )
        cursor.execute("DELETE FROM django_q_ormq")


# --- Bodies -----------------------------------------------------------------------------------


def _value(messages=None, statuses=None, contacts=None) -> dict:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15559001", "phone_number_id": PNID},
    }
    if contacts:
        value["contacts"] = contacts
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": "messages", "value": value}]}],
    }


def inbound_body(seq: int, wa_id: str, pad: int = 0) -> bytes:
    from apps.whatsapp.signature import dumps_like_meta

    message = {
        "from": wa_id,
        "id": f"wamid.BENCHIN{seq:012d}",
        "timestamp": str(BASE_TS + seq),
        "type": "text",
        "text": {"body": f"Hello number {seq} " + "x" * pad},
    }
    contact = {"profile": {"name": f"Customer {wa_id[-5:]}"}, "wa_id": wa_id}
    return dumps_like_meta(_value(messages=[message], contacts=[contact]))


STATUS_ORDER = ("sent", "delivered", "read")
PRICING = {
    "billable": False,
    "pricing_model": "PMP",
    "type": "free_customer_service",
    "category": "service",
}


def status_item(wamid: str, value: str, seq: int) -> dict:
    item = {
        "id": wamid,
        "status": value,
        "timestamp": str(BASE_TS + seq),
        "recipient_id": "15550000000",
    }
    if value in ("sent", "delivered"):
        item["pricing"] = PRICING
    if value == "sent":
        item["conversation"] = {
            "id": "8f842dbba350821654c9dfed31f5635c",
            "origin": {"type": "service"},
        }
    return item


def status_body(items: list[dict]) -> bytes:
    from apps.whatsapp.signature import dumps_like_meta

    return dumps_like_meta(_value(statuses=items))


# --- (a) ack rate -----------------------------------------------------------------------------


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_services(args, env: dict, logdir: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """The drain worker (qcluster) and gunicorn (`args.workers` sync workers), as B1 runs them."""
    worker = start([sys.executable, "manage.py", "qcluster"], env, logdir / "qcluster.log")
    server = start(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "klaros.wsgi",
            "-w",
            str(args.workers),
            "-b",
            f"127.0.0.1:{args.port}",
            "--log-level",
            "warning",
        ],
        env,
        logdir / "gunicorn.log",
    )
    return worker, server


def wait_drained(timeout: float = 300.0) -> int:
    """Wait (bounded) until the worker has processed every journal row; the rows left."""
    from apps.conversations.models import WebhookEvent, WebhookState

    deadline = time.monotonic() + timeout
    while True:
        left = WebhookEvent.objects.exclude(state=WebhookState.PROCESSED).count()
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(1)


def lag_percentiles(after_id: int = 0) -> tuple:
    """Ingest-to-processed lag (p50, p99, max) of the journal rows after `after_id`."""
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY processed_at - received_at),"
            " percentile_disc(0.99) WITHIN GROUP (ORDER BY processed_at - received_at),"
            " max(processed_at - received_at)"
            " FROM conversations_webhookevent WHERE id > %s",
            [after_id],
        )
        return c.fetchone()


def wait_http(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/bench/noop")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("gunicorn did not answer")


def presign(count: int, shape: str = "meta") -> list[tuple[bytes, str]]:
    """Bodies with unique wamids, each with Meta's signature.

    `meta`: ~1.3 KB bodies, 3 carrying two statuses to 1 carrying an inbound message (B1 1-2).
    `batched`: ~30 KB bodies of 100 statuses each, Meta's batched shape (B1 3).
    """
    from apps.whatsapp.signature import sign_body

    bodies = []
    for i in range(count):
        if shape == "batched":
            items = [
                status_item(f"wamid.BENCHBATCH{i:08d}x{k:03d}", STATUS_ORDER[k % 3], i)
                for k in range(100)
            ]
            body = status_body(items)
        elif i % 4 == 3:
            body = inbound_body(i, f"1555{i % 5000:07d}", pad=1200)
        else:
            item = status_item(f"wamid.BENCHACK{i:012d}", STATUS_ORDER[i % 3], i)
            item["biz_opaque_callback_data"] = "x" * 400
            body = status_body([item, status_item(f"wamid.BENCHACK{i:012d}b", "sent", i)])
        bodies.append((body, sign_body(body, APP_SECRET)))
    return bodies


def write_bodies(bodies: list[tuple[bytes, str]], path: Path) -> None:
    """One request per line for post.lua: signature, tab, body (Meta's JSON has no newline)."""
    with path.open("wb") as out:
        for body, signature in bodies:
            assert b"\n" not in body and b"\t" not in body
            out.write(signature.encode() + b"\t" + body + b"\n")


WRK_LATENCY = {"50%": "p50_ms", "75%": "p75_ms", "90%": "p90_ms", "99%": "p99_ms"}


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)


def wrk_round(args, path: str, bodies_file: Path, start_at: int, seconds: float) -> dict:
    """One closed-loop wrk round, pinned to the last core (harness rule 6.0), with its CPU."""
    command = [
        "wrk",
        "-t1",
        f"-c{args.clients}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(Path(__file__).with_name("post.lua")),
        f"http://127.0.0.1:{args.port}{path}",
        "--",
        str(bodies_file),
        str(start_at),
    ]
    if args.pin is not None:
        command = ["taskset", "-c", str(args.pin), *command]
    before = os.times()
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    after = os.times()
    result: dict = {"non_200": 0, "socket_errors": 0}
    for line in out.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in WRK_LATENCY and len(words) == 2:
            result[WRK_LATENCY[words[0]]] = _ms(words[1])
        elif words[0] == "Requests/sec:":
            result["rate"] = float(words[1])
        elif len(words) > 2 and words[1] == "requests" and words[2] == "in":
            result["requests"] = int(words[0])
        elif words[0] == "issued":
            result["issued"] = int(words[1])
        elif line.strip().startswith("Non-2xx"):
            result["non_200"] = int(words[-1])
        elif words[0] == "Socket" and words[1] == "errors:":
            result["socket_errors"] = sum(int(w.strip(",")) for w in words[3::2])
    loadgen_cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    result["loadgen_cpu_share"] = loadgen_cpu / seconds
    return result


BASELINES = ("/bench/noop", "/bench/insert")
# The /bench/insert baseline's table (bench/webhook_ingest/urls.py): one raw INSERT per request.
BENCH_INSERT_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_insert"
    " (id bigserial PRIMARY KEY, body bytea NOT NULL, received_at timestamptz NOT NULL)"
)
WEBHOOK = "/webhooks/whatsapp/"


def bench_ack(args, env: dict, logdir: Path) -> dict:
    from django.db import connection

    from apps.conversations.models import WebhookEvent

    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    reset_inbox()
    with connection.cursor() as cursor:
        cursor.execute(BENCH_INSERT_TABLE)
        cursor.execute("TRUNCATE bench_insert")
    bodies = presign(args.presign, args.shape)
    bodies_file = logdir / "bodies.txt"
    write_bodies(bodies, bodies_file)
    sizes = sorted(len(b) for b, _ in bodies)
    worker, server = start_services(args, env, logdir)
    rounds: dict[str, list[dict]] = {path: [] for path in (*BASELINES, WEBHOOK)}
    issued = 0
    try:
        wait_http(args.port)
        # Warm-up on the real endpoint: its bodies are journaled and drained like the rest.
        warm = wrk_round(args, WEBHOOK, bodies_file, issued, args.warmup)
        issued += warm["issued"]
        acknowledged = warm["requests"] - warm["non_200"]
        for _ in range(args.repeat):
            for path in rounds:
                result = wrk_round(args, path, bodies_file, issued, args.seconds)
                rounds[path].append(result)
                if path == WEBHOOK:
                    issued += result["issued"]
                    acknowledged += result["requests"] - result["non_200"]
        if issued > len(bodies):
            raise SystemExit(f"{issued} requests need more pre-signed bodies: raise --presign")
        # Every acknowledged webhook must be a journal row, drained by the worker.
        left = wait_drained()
        rows = WebhookEvent.objects.count()
        lag50, lag99, _ = lag_percentiles()
    finally:
        stop(server)
        stop(worker)

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[path])

    def cv(path: str) -> float:
        rates = [r["rate"] for r in rounds[path]]
        return statistics.pstdev(rates) / statistics.mean(rates) if len(rates) > 1 else 0.0

    result = {
        "loadgen": f"wrk -t1 -c{args.clients}, pinned to cpu {args.pin}",
        "shape": args.shape,
        "statuses_per_body": 100 if args.shape == "batched" else None,
        "gunicorn_workers": args.workers,
        "body_bytes_median": sizes[len(sizes) // 2],
        "rounds": rounds,
        "webhook_non_200": sum(r["non_200"] for r in rounds[WEBHOOK]) + warm["non_200"],
        "webhook_socket_errors": sum(r["socket_errors"] for r in rounds[WEBHOOK]),
        "acknowledged": acknowledged,
        "issued": issued,
        "journal_rows": rows,
        "unprocessed_after_drain": left,
        "lag_p50_s": lag50.total_seconds() if lag50 else None,
        "lag_p99_s": lag99.total_seconds() if lag99 else None,
    }
    for path in rounds:
        name = path.strip("/").replace("/", "_")
        for key in ("rate", "p50_ms", "p99_ms", "loadgen_cpu_share"):
            result[f"{name}_{key}"] = median(path, key)
        result[f"{name}_rate_cv"] = cv(path)
    result["ratio"] = result["webhooks_whatsapp_rate"] / result["bench_noop_rate"]
    result["ratio_to_insert"] = result["webhooks_whatsapp_rate"] / result["bench_insert_rate"]
    if args.shape == "batched":
        result["status_events_acknowledged_per_s"] = 100 * result["webhooks_whatsapp_rate"]
    # Zero loss: every acknowledged webhook is a row; rows beyond that are requests still in
    # flight when a wrk round stopped (sent, journaled, their 200 not counted).
    result["zero_loss"] = acknowledged <= rows <= issued
    return result


# --- (a') Meta's profile: a constant rate, open loop ------------------------------------------


def openloop_round(args, path: str, bodies_file: Path, start_at: int, seconds: float) -> dict:
    """`openloop.py` at `args.rate` for `seconds`, pinned like wrk (harness rule 6.0)."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("openloop.py")),
        f"http://127.0.0.1:{args.port}{path}",
        str(bodies_file),
        "--rate",
        str(args.rate),
        "--seconds",
        str(seconds),
        "--start-at",
        str(start_at),
        "--window",
        str(args.window),
    ]
    if args.pin is not None:
        command = ["taskset", "-c", str(args.pin), *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


class CpuSampler:
    """CPU used by each process group (gunicorn, qcluster) and by PostgreSQL (every backend, the
    drain's included, and autovacuum), in cores, over the time between start() and stop().

    Sampled from /proc every `interval` s and summed per process, so a process that exits
    (a backend whose connection reached CONN_MAX_AGE) keeps what it used up to its last sample;
    one that starts meanwhile counts from zero."""

    def __init__(self, groups: dict[str, int], interval: float = 0.5) -> None:
        self.by_pgrp = {pgrp: name for name, pgrp in groups.items()}
        self.totals = dict.fromkeys([*groups, "postgresql"], 0)
        self.last: dict[int, int] = {}
        self.interval = interval
        self.started = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, baseline: bool = False) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            name = self.by_pgrp.get(int(fields[2]))
            if name is None and command.startswith(b"postgres"):
                name = "postgresql"
            if name is None:
                continue
            ticks = int(fields[11]) + int(fields[12])
            if not baseline:
                self.totals[name] += ticks - self.last.get(int(pid), 0)
            self.last[int(pid)] = ticks

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample(baseline=True)
        self.started = time.monotonic()
        self.thread.start()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        self._sample()
        elapsed = time.monotonic() - self.started
        hz = os.sysconf("SC_CLK_TCK")
        return {name: round(ticks / hz / elapsed, 3) for name, ticks in self.totals.items()}


def bench_meta(args, env: dict, logdir: Path) -> dict:
    """B1 target 1: a constant `--rate` of Meta-shaped webhooks for `--seconds`, drain live.

    First `/bench/noop` at the same rate for `--baseline-seconds` (the server's and the
    generator's own latency floor), then the real endpoint. Reports its latency percentiles,
    non-200s, zero loss, the CPU each part used, and the ingest-to-processed lag (B2's target
    under this load) of the rows it journaled."""
    from apps.conversations.models import WebhookEvent

    reset_inbox()
    warm_count = int(args.rate * args.warmup) + 1
    bodies = presign(warm_count + int(args.rate * args.seconds) + 1, "meta")
    bodies_file = logdir / "bodies_meta.txt"
    write_bodies(bodies, bodies_file)
    worker, server = start_services(args, env, logdir)
    try:
        wait_http(args.port)
        warm = openloop_round(args, WEBHOOK, bodies_file, 0, args.warmup)
        noop = openloop_round(args, "/bench/noop", bodies_file, 0, args.baseline_seconds)
        if wait_drained():
            raise SystemExit("the warm-up's webhooks were not processed")
        first_id = WebhookEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        sampler = CpuSampler({"gunicorn": server.pid, "qcluster": worker.pid})
        load_before = loadavg()
        sampler.start()
        real = openloop_round(args, WEBHOOK, bodies_file, warm_count, args.seconds)
        cores = sampler.stop()
        load_after = loadavg()
        left = wait_drained()
        rows = WebhookEvent.objects.filter(id__gt=first_id).count()
        lag50, lag99, lag_max = lag_percentiles(first_id)
    finally:
        stop(server)
        stop(worker)
    acknowledged = real["statuses"].get("200", 0)
    result = {
        "loadgen": f"openloop.py (constant rate, open loop), pinned to cpu {args.pin}",
        "rate": args.rate,
        "seconds": args.seconds,
        "gunicorn_workers": args.workers,
        "warmup_non_200": warm["non_200"] + sum(warm["errors"].values()),
        "noop": noop,
        "webhook": real,
        "cores_used": cores,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "acknowledged": acknowledged,
        "journal_rows": rows,
        "unprocessed_after_drain": left,
        "lag_p50_s": lag50.total_seconds() if lag50 is not None else None,
        "lag_p99_s": lag99.total_seconds() if lag99 is not None else None,
        "lag_max_s": lag_max.total_seconds() if lag_max is not None else None,
    }
    # Zero loss: every 200 is a row. A row beyond that is a request whose answer the generator
    # did not get (counted in its errors), which Meta would have sent again.
    result["zero_loss"] = acknowledged <= rows <= real["due"] and left == 0
    result["targets"] = {
        "p50_le_5ms": real["p50_ms"] is not None and real["p50_ms"] <= 5,
        "p99_le_25ms": real["p99_ms"] is not None and real["p99_ms"] <= 25,
        "p999_le_100ms": real["p999_ms"] is not None and real["p999_ms"] <= 100,
        "no_non_200": real["non_200"] == 0 and not real["errors"],
        "zero_loss": result["zero_loss"],
        "lag_p99_le_2s": result["lag_p99_s"] is not None and result["lag_p99_s"] <= 2,
        "rate_held": real["rate_achieved"] >= 0.98 * args.rate,
    }
    return result


def bench_capacity(args, env: dict, logdir: Path) -> dict:
    """B1 target 2: the highest constant rate of `--rates` whose p99 stays within 100 ms, every
    answer a 200, with the drain live. Each rate runs for `--seconds` on fresh bodies; the
    generator must hold the rate (98 %) for a step to count. `--path /bench/noop` measures the
    noop view the same way, for the ratio at equal p99."""
    from apps.conversations.models import WebhookEvent

    rates = [float(r) for r in args.rates.split(",")]
    reset_inbox()
    warm_count = int(rates[0] * args.warmup) + 1
    bodies = presign(warm_count + int(sum(rates) * args.seconds) + len(rates), "meta")
    bodies_file = logdir / "bodies_capacity.txt"
    write_bodies(bodies, bodies_file)
    worker, server = start_services(args, env, logdir)
    steps, offset = [], warm_count
    try:
        wait_http(args.port)
        args.rate = rates[0]
        openloop_round(args, args.path, bodies_file, 0, args.warmup)
        for rate in rates:
            wait_drained()  # each step starts with an empty journal
            args.rate = rate
            step = openloop_round(args, args.path, bodies_file, offset, args.seconds)
            offset += step["due"]
            step["held"] = step["rate_achieved"] >= 0.98 * rate
            step["within"] = (
                step["held"]
                and step["non_200"] == 0
                and not step["errors"]
                and step["p99_ms"] is not None
                and step["p99_ms"] <= 100
            )
            steps.append(step)
        left = wait_drained()
        rows = WebhookEvent.objects.count()
    finally:
        stop(server)
        stop(worker)
    keep = ("rate_target", "rate_achieved", "p50_ms", "p99_ms", "p999_ms", "max_ms", "non_200")
    passed = [s["rate_target"] for s in steps if s["within"]]
    return {
        "loadgen": f"openloop.py (constant rate, open loop), pinned to cpu {args.pin}",
        "path": args.path,
        "seconds_per_rate": args.seconds,
        "gunicorn_workers": args.workers,
        "steps": [{k: s[k] for k in (*keep, "errors", "held", "within")} for s in steps],
        "highest_rate_p99_le_100ms": max(passed) if passed else None,
        "journal_rows": rows,
        "unprocessed_after_drain": left,
    }


# --- (b) drain throughput ---------------------------------------------------------------------


def preload_outbound(count: int) -> list[str]:
    from apps.conversations.models import Contact, Conversation, Direction, Message
    from apps.tenants.models import WhatsAppNumber
    from apps.tenants.scoping import tenant_scope, unscoped

    with unscoped("bench"):
        number = WhatsAppNumber.objects.get(phone_number_id=PNID)
    with tenant_scope(number.tenant_id):
        contacts = Contact.objects.bulk_create(
            [Contact(tenant_id=number.tenant_id, wa_id=f"1666{i:07d}") for i in range(count // 10)]
        )
        conversations = Conversation.objects.bulk_create(
            [Conversation(tenant_id=number.tenant_id, number=number, contact=c) for c in contacts]
        )
        now = datetime.now(tz=UTC)
        wamids = [f"wamid.BENCHOUT{i:012d}" for i in range(count)]
        Message.objects.bulk_create(
            [
                Message(
                    tenant_id=number.tenant_id,
                    conversation=conversations[i % len(conversations)],
                    direction=Direction.OUTBOUND,
                    wamid=wamid,
                    type="text",
                    content={"body": "hi"},
                    text="hi",
                    status="accepted",
                    status_rank=10,
                    sent_at=now,
                )
                for i, wamid in enumerate(wamids)
            ],
            batch_size=2000,
        )
    return wamids


def journal(bodies: list[bytes]) -> None:
    from apps.conversations.models import WebhookEvent
    from apps.tenants.models import MetaApp

    app = MetaApp.objects.get(app_id=APP_ID)
    WebhookEvent.objects.bulk_create(
        [WebhookEvent(app=app, body=b) for b in bodies], batch_size=1000
    )


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def timed_drain(batch_size: int) -> tuple[int, float]:
    """batch_size 1: the one-event-per-transaction baseline (the per-event ORM path,
    `drain_batch(1, batched=False)`); otherwise `drain_journal` (batched), without the idle
    wait for more webhooks once the journal is empty (`linger=0`): it is not work, and the
    1 s it lasts would be a quarter of a 5,000-message run."""
    from apps.conversations.inbound.ingest import NumberDirectory
    from apps.conversations.inbound.journal import drain_batch, drain_journal

    t0 = time.perf_counter()
    if batch_size == 1:
        directory, rows = NumberDirectory(), 0
        while drain_batch(1, directory, batched=False):
            rows += 1
    else:
        rows = drain_journal(batch_size=batch_size, time_budget=3600, linger=0)
    return rows, time.perf_counter() - t0


def count_statements(batched: bool, batch_size: int) -> tuple[int, int]:
    """(journal rows, SQL statements) to drain the pending journal, counted with a connection
    execute wrapper (CaptureQueriesContext's log stops at 9,000 entries); not timed. Counts
    every statement Django sends, savepoints included; BEGIN/COMMIT are not statements here."""
    from django.db import connection

    from apps.conversations.inbound.ingest import NumberDirectory
    from apps.conversations.inbound.journal import drain_batch

    statements = 0

    def count(execute, sql, params, many, context):
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    directory, rows = NumberDirectory(), 0
    with connection.execute_wrapper(count):
        while True:
            done = drain_batch(batch_size if batched else 1, directory, batched=batched)
            rows += done
            if not done:
                break
    return rows, statements


def counts() -> dict:
    from apps.conversations.models import Contact, Conversation, Message, StatusEvent, WebhookEvent
    from apps.tenants.scoping import unscoped

    with unscoped("bench"):
        return {
            "messages": Message.objects.count(),
            "status_events": StatusEvent.objects.count(),
            "contacts": Contact.objects.count(),
            "conversations": Conversation.objects.count(),
            "not_processed": WebhookEvent.objects.exclude(state="processed").count(),
        }


def mark_pending() -> None:
    from apps.conversations.models import WebhookEvent

    WebhookEvent.objects.update(state="pending", processed_at=None)


def status_bodies(wamids: list[str], total: int, per_body: int) -> list[bytes]:
    items = [status_item(wamids[i // 3], STATUS_ORDER[i % 3], i) for i in range(total)]
    return [status_body(items[i : i + per_body]) for i in range(0, total, per_body)]


def bench_drain(args) -> dict:
    from apps.conversations.models import WebhookEvent

    out: dict = {"loadavg_before": loadavg()}
    reset_inbox()
    wamids = preload_outbound((args.statuses + args.baseline_statuses) // 3 + 3)
    split = args.baseline_statuses // 3 + 1
    # Baseline: one status per body, one transaction per event.
    journal(status_bodies(wamids[:split], args.baseline_statuses, 1))
    vacuum()
    rows, seconds = timed_drain(1)
    out["statuses_per_event"] = {
        "statuses": args.baseline_statuses,
        "seconds": seconds,
        "per_s": args.baseline_statuses / seconds,
        "loadavg_after": loadavg(),
    }
    WebhookEvent.objects.all().delete()
    # Batched: 50 statuses per body, as Meta batches them.
    journal(status_bodies(wamids[split:], args.statuses, args.per_body))
    vacuum()
    rows, seconds = timed_drain(args.batch_size)
    out["statuses_batched"] = {
        "statuses": args.statuses,
        "bodies": rows,
        "seconds": seconds,
        "per_s": args.statuses / seconds,
        "loadavg_after": loadavg(),
    }
    before = counts()
    mark_pending()
    rows, seconds = timed_drain(args.batch_size)
    after = counts()
    out["statuses_replay"] = {
        "seconds": seconds,
        "per_s": args.statuses / seconds,
        "new_rows": {k: after[k] - before[k] for k in before},
    }
    WebhookEvent.objects.all().delete()

    # Inbound: one message per body, 1,000 senders.
    journal([inbound_body(i, f"1777{i % 1000:07d}") for i in range(args.baseline_inbound)])
    vacuum()
    rows, seconds = timed_drain(1)
    out["inbound_per_event"] = {
        "messages": rows,
        "seconds": seconds,
        "per_s": rows / seconds,
        "loadavg_after": loadavg(),
    }
    WebhookEvent.objects.all().delete()
    base = 10_000_000
    journal([inbound_body(base + i, f"1888{i % 1000:07d}") for i in range(args.inbound)])
    vacuum()
    rows, seconds = timed_drain(args.batch_size)
    out["inbound_batched"] = {
        "messages": rows,
        "seconds": seconds,
        "per_s": rows / seconds,
        "loadavg_after": loadavg(),
    }
    before = counts()
    mark_pending()
    rows, seconds = timed_drain(args.batch_size)
    after = counts()
    out["inbound_replay"] = {
        "seconds": seconds,
        "per_s": rows / seconds,
        "new_rows": {k: after[k] - before[k] for k in before},
    }
    out["speedup_statuses"] = out["statuses_batched"]["per_s"] / out["statuses_per_event"]["per_s"]
    out["speedup_inbound"] = out["inbound_batched"]["per_s"] / out["inbound_per_event"]["per_s"]
    out["statements"] = statements_per_item(args)
    return out


def statements_per_item(args) -> dict:
    """SQL statements per item, per-event path vs batched, on small fresh samples (the same
    shapes as the timed runs: statuses 50 per body, inbound one per body)."""
    from apps.conversations.models import WebhookEvent

    out = {}
    reset_inbox()
    wamids = preload_outbound(3 * 1000 + 3)
    n = 600
    journal(status_bodies(wamids[:200], n, 1))
    rows, statements = count_statements(False, 1)
    out["status_per_event"] = {"items": n, "statements": statements, "per_item": statements / n}
    WebhookEvent.objects.all().delete()
    journal(status_bodies(wamids[200:], 2000, args.per_body))
    rows, statements = count_statements(True, args.batch_size)
    out["status_batched"] = {
        "items": 2000,
        "statements": statements,
        "per_item": statements / 2000,
        "batches": -(-rows // args.batch_size),
    }
    WebhookEvent.objects.all().delete()
    journal([inbound_body(20_000_000 + i, f"1999{i % 1000:07d}") for i in range(300)])
    rows, statements = count_statements(False, 1)
    out["inbound_per_event"] = {
        "items": rows,
        "statements": statements,
        "per_item": statements / rows,
    }
    WebhookEvent.objects.all().delete()
    journal([inbound_body(30_000_000 + i, f"1999{i % 1000:07d}") for i in range(1000)])
    rows, statements = count_statements(True, args.batch_size)
    out["inbound_batched"] = {
        "items": rows,
        "statements": statements,
        "per_item": statements / rows,
        "batches": -(-rows // args.batch_size),
        "note": "senders 0-299 already known, 300-999 new",
    }
    WebhookEvent.objects.all().delete()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument(
        "--part", choices=["ack", "meta", "capacity", "drain", "all"], default="all"
    )
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=8, help="wrk connections")
    parser.add_argument(
        "--pin",
        type=int,
        default=(os.cpu_count() or 1) - 1,
        help="CPU to pin wrk to (harness rule: the load generator on one core)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured round")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--presign", type=int, default=60_000)
    parser.add_argument(
        "--shape",
        choices=["meta", "batched"],
        default="meta",
        help="ack bodies: ~1.3 KB, 3 status : 1 inbound (meta) or 100 statuses each (batched)",
    )
    parser.add_argument("--rate", type=float, default=400.0, help="meta: requests per second")
    parser.add_argument(
        "--baseline-seconds", type=float, default=60.0, help="meta: the noop round at --rate"
    )
    parser.add_argument("--window", type=float, default=60.0, help="meta: seconds per p99 window")
    parser.add_argument(
        "--rates", default="800,1000,1200,1400", help="capacity: constant rates to step through"
    )
    parser.add_argument(
        "--path", default=WEBHOOK, choices=[WEBHOOK, *BASELINES], help="capacity: the view"
    )
    parser.add_argument("--statuses", type=int, default=20_000)
    parser.add_argument("--per-body", type=int, default=50)
    parser.add_argument("--inbound", type=int, default=5_000)
    parser.add_argument("--baseline-statuses", type=int, default=2_000)
    parser.add_argument("--baseline-inbound", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    ensure_database(args.database_url)
    setup_django(args.database_url)
    seed()
    logdir = ROOT / "var" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    results = {
        "cpus": os.cpu_count(),
        "database": args.database_url.rsplit("/", 1)[1],
        "loadavg_start": loadavg(),
    }
    if args.part in ("ack", "all"):
        results["ack"] = bench_ack(args, bench_env(args.database_url), logdir)
    if args.part == "meta":
        results["meta"] = bench_meta(args, bench_env(args.database_url), logdir)
    if args.part == "capacity":
        results["capacity"] = bench_capacity(args, bench_env(args.database_url), logdir)
    if args.part in ("drain", "all"):
        results["drain"] = bench_drain(args)
    results["loadavg_end"] = loadavg()
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
