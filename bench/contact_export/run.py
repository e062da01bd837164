#!/usr/bin/env python
"""Benchmark B6 (shared/reference/performance-targets.md): the contact-book export, streamed.

Seeds (once, in PostgreSQL itself with generate_series) two tenants of 100k and 1M contacts,
each contact with a conversation, a tenth of them with a consent event and an outbound message.
Then, in the same run:
- the product's endpoint (`GET /inbox/export/contacts.csv`, a logged-in owner's session) served
  by gunicorn with one sync worker: time to first byte, rows/s, and the worker's peak RSS growth
  (its high-water mark is reset before each run through /proc/PID/clear_refs);
- the baselines: `psql \\copy` of the contacts' own columns to /dev/null, and the same export
  iterating model instances in-process (`Contact.objects.iterator()` and csv).

Loopback only; every loop is bounded. Run:
    .venv/bin/python bench/contact_export/run.py [--db URL] [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import ensure_database, production_env  # noqa: E402 (after the path)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/klaros_bench_export"
PASSWORD = "bench-owner-password-0123"  # noqa: S105 - loopback benchmark only
PORT = 8765


def bench_env(db_url: str) -> dict[str, str]:
    return production_env(db_url, SESSION_COOKIE_SECURE="false")


def setup_django(db_url: str) -> None:
    os.environ.update(bench_env(db_url))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def ensure_tenant(slug: str, size: int, index: int):
    """The tenant with `size` contacts (seeded in SQL the first time) and its owner."""
    from django.db import connection

    from apps.conversations.models import Contact
    from apps.tenants.models import Role, Tenant, WhatsAppNumber
    from apps.tenants.scoping import tenant_scope
    from apps.tenants.services import NumberCredentials, add_member, connect_number, create_tenant

    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        tenant = create_tenant(slug, f"Bench {size}", actor="command:bench")
        add_member(tenant, f"owner@{slug}.bench", role=Role.OWNER, password=PASSWORD, actor="bench")
        pnid = f"1000000090{index:02d}"
        connect_number(
            tenant,
            phone_number_id=pnid,
            waba_id=f"2000000090{index:02d}",
            display_phone_number=f"+1 555 90{index:02d}",
            app_id=f"3000000090{index:02d}",
            credentials=NumberCredentials("bench-token", "bench-secret", "bench-verify"),
            actor="command:bench",
        )
    with tenant_scope(tenant):
        if Contact.objects.filter(tenant=tenant).count() == size:
            return tenant
        number = WhatsAppNumber.objects.get(tenant=tenant)
    started = time.monotonic()
    t, n = str(tenant.pk), str(number.pk)
    base = 10_000_000_000 * (index + 1)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO conversations_contact "
            "(id, tenant_id, wa_id, user_id, profile_name, username, created_at, updated_at) "
            "SELECT gen_random_uuid(), %s, (%s + g)::text, '', 'Contact ' || g, '', "
            "now() - g * interval '1 second', now() FROM generate_series(1, %s) g",
            [t, base, size],
        )
        cursor.execute(
            "INSERT INTO conversations_conversation (id, tenant_id, number_id, contact_id, "
            "status, last_inbound_at, last_message_at, last_message_preview, unread_count, "
            "created_at) SELECT gen_random_uuid(), %s, %s, c.id, 'open', c.created_at, "
            "c.created_at, 'Hello', 0, now() FROM conversations_contact c WHERE c.tenant_id = %s",
            [t, n, t],
        )
        cursor.execute(
            "INSERT INTO consent_consentevent (id, tenant_id, contact_id, kind, scope, source, "
            "evidence, actor_type, actor_id, occurred_at, created_at, dedupe_key) "
            "SELECT gen_random_uuid(), %s, c.id, 'opt_in', 'marketing', 'form', '{}', "
            "'system', '', c.created_at, now(), '' FROM conversations_contact c "
            "WHERE c.tenant_id = %s AND ('x' || substr(c.wa_id, length(c.wa_id))) = 'x7'",
            [t, t],
        )
        cursor.execute(
            "INSERT INTO conversations_message (id, tenant_id, conversation_id, direction, wamid, "
            "type, content, text, status, status_rank, sent_at, created_at, context_wamid, "
            "forwarded, frequently_forwarded, error_title, error_details, send_path, attempts, "
            "idempotency_key) SELECT gen_random_uuid(), %s, v.id, 'out', NULL, 'text', "
            "'{\"body\": \"Thanks\"}', 'Thanks', 'sent', 3, now(), now(), '', false, false, '', "
            "'', 'bench', 1, '' FROM conversations_conversation v JOIN conversations_contact c "
            "ON c.id = v.contact_id WHERE v.tenant_id = %s "
            "AND substr(c.wa_id, length(c.wa_id)) = '3'",
            [t, t],
        )
    # As autovacuum leaves a table in production: statistics and the visibility map (which
    # lets PostgreSQL answer from an index alone) up to date. VACUUM refuses a transaction.
    with connection.cursor() as cursor:
        for table in (
            "conversations_contact",
            "conversations_conversation",
            "conversations_message",
            "consent_consentevent",
        ):
            cursor.execute(f"VACUUM ANALYZE {table}")
    print(f"seeded {slug}: {size:,} contacts in {time.monotonic() - started:.0f} s", flush=True)
    return tenant


def session_cookie(tenant) -> str:
    from django.conf import settings
    from django.test import Client

    from apps.tenants.middleware import SESSION_KEY
    from apps.tenants.models import Membership

    owner = Membership.objects.filter(tenant=tenant).select_related("user").first().user
    client = Client()
    client.force_login(owner)
    session = client.session
    session[SESSION_KEY] = str(tenant.pk)
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def start_gunicorn(db_url: str) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "klaros.wsgi",
            "--bind",
            f"127.0.0.1:{PORT}",
            "--workers",
            "1",
            "--timeout",
            "300",
        ],
        env=bench_env(db_url),
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    import requests

    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise RuntimeError("gunicorn did not answer")
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return server, int(children[0])


def endpoint_run(cookie: str, worker: int) -> dict:
    import requests

    # Reset the worker's peak RSS so VmHWM is this run's peak (Linux: clear_refs 5).
    Path(f"/proc/{worker}/clear_refs").write_text("5")
    before = proc_kb(worker, "VmRSS")
    started = time.perf_counter()
    first = None
    rows = -1  # the header
    size = 0
    with requests.get(
        f"http://127.0.0.1:{PORT}/inbox/export/contacts.csv",
        headers={"Cookie": cookie},
        stream=True,
        timeout=600,
    ) as response:
        response.raise_for_status()
        for piece in response.iter_content(chunk_size=1 << 16):
            if first is None:
                first = time.perf_counter() - started
            rows += piece.count(b"\n")
            size += len(piece)
    took = time.perf_counter() - started
    peak = proc_kb(worker, "VmHWM")
    return {
        "rows": rows,
        "seconds": took,
        "rows_per_s": rows / took,
        "first_byte_ms": (first or took) * 1000,
        "rss_growth_mb": (peak - before) / 1024,
        "mb": size / 1e6,
    }


def copy_baseline(db_url: str, tenant) -> dict:
    # The tenant id is a UUID from the database, not input.
    sql = (
        "\\copy (SELECT id, wa_id, user_id, username, profile_name, created_at "  # noqa: S608
        f"FROM conversations_contact WHERE tenant_id = '{tenant.pk}' ORDER BY id) "
        "TO STDOUT WITH CSV"
    )
    started = time.perf_counter()
    out = subprocess.run(
        ["psql", db_url, "-Atc", sql], capture_output=True, check=True, timeout=600
    ).stdout
    took = time.perf_counter() - started
    rows = out.count(b"\n")
    return {"rows": rows, "seconds": took, "rows_per_s": rows / took}


def instances_baseline(tenant) -> dict:
    """The naive variant: model instances through the ORM iterator, csv in memory pieces."""
    from apps.conversations.models import Contact
    from apps.tenants.scoping import tenant_scope

    started = time.perf_counter()
    rows = 0
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    with tenant_scope(tenant):
        for contact in Contact.objects.filter(tenant=tenant).order_by("pk").iterator(2000):
            writer.writerow(
                [
                    contact.pk,
                    contact.wa_id,
                    contact.user_id,
                    contact.profile_name,
                    contact.created_at,
                ]
            )
            rows += 1
            if rows % 1000 == 0:
                buffer.seek(0)
                buffer.truncate()
    took = time.perf_counter() - started
    return {"rows": rows, "seconds": took, "rows_per_s": rows / took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ensure_database(args.db)
    setup_django(args.db)
    tenants = [ensure_tenant(f"export-{size}", size, i) for i, size in enumerate(sizes)]
    server, worker = start_gunicorn(args.db)
    try:
        for tenant, size in zip(tenants, sizes, strict=True):
            cookie = session_cookie(tenant)
            endpoint_run(cookie, worker)  # warm-up: imports, connection, plans
            result = endpoint_run(cookie, worker)
            assert result["rows"] == size, result
            copy = copy_baseline(args.db, tenant)
            naive = instances_baseline(tenant)
            print(
                f"{size:>9,} contacts: endpoint {result['rows_per_s']:>9,.0f} rows/s "
                f"({result['seconds']:.2f} s, {result['mb']:.0f} MB), first byte "
                f"{result['first_byte_ms']:.0f} ms, worker peak RSS growth "
                f"{result['rss_growth_mb']:.1f} MB | psql \\copy {copy['rows_per_s']:>9,.0f} "
                f"rows/s (ratio {result['rows_per_s'] / copy['rows_per_s']:.2f}) | model "
                f"instances {naive['rows_per_s']:>9,.0f} rows/s "
                f"(ratio {result['rows_per_s'] / naive['rows_per_s']:.2f})",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
