#!/usr/bin/env python
"""Benchmark `verify_audit` on PostgreSQL: events per second and peak memory at a million events.

Seeds a throwaway database (dropped and created by this script, then migrated) with `--events`
audit events over `--chains` chains, hashed and chained exactly as `record()` does and loaded
with COPY; signs one checkpoint; then times, each in its own child process:

* `manage.py verify_audit` (the product: keyset pages, hash recomputed per event, checkpoints);
* the baseline: a plain psycopg server-side cursor reading the same columns in the same order,
  turning them into Python values (JSON parsed, timestamps built) and doing nothing else;
* `psql \\copy (...) TO /dev/null`: what the server and the wire alone cost.

Peak RSS of each child comes from `os.wait4` (its own rusage, not the parent's). Only ratios
against the baselines of the same run mean anything on a shared machine.

    .venv/bin/python bench/audit_verify/run.py --events 1000000 --json var/bench/audit_verify.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import production_env  # noqa: E402 (after the path)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/klaros_bench_audit"
GENESIS = "0" * 64
COLUMNS = (
    "chain, seq, prev_hash, created_at, action, actor_type, actor_id, object_type, object_id, "
    "data, hash"
)
BASELINE = """
import sys, psycopg
n = 0
with psycopg.connect(sys.argv[1]) as conn, conn.cursor(name="audit_baseline") as cur:
    cur.itersize = int(sys.argv[2])
    cur.execute("SELECT {columns} FROM audit_auditevent ORDER BY chain, seq")
    for row in cur:
        n += 1
print(n)
""".replace("{columns}", COLUMNS)


def bench_env(db_url: str, var: Path) -> dict[str, str]:
    return production_env(db_url, KLAROS_MEDIA_ROOT=str(var / "media"))


def recreate_database(db_url: str) -> None:
    import psycopg

    base, name = db_url.rsplit("/", 1)
    if not name.startswith("klaros_bench"):
        raise SystemExit(f"refusing to drop {name!r}: the bench database must be klaros_bench*")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def seed(db_url: str, events: int, chains: int) -> dict[str, float]:
    """COPY `events` chained events, spread round-robin over `chains` chains, and their heads."""
    import psycopg

    from apps.audit.models import canonical_event  # the product's own hashing format

    names = ["deployment"] + [str(uuid.UUID(int=i + 1)) for i in range(chains - 1)]
    heads = {name: (0, GENESIS) for name in names}
    start_time = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    with psycopg.connect(db_url) as conn:
        with conn.cursor().copy(f"COPY audit_auditevent (tenant_id, {COLUMNS}) FROM STDIN") as copy:
            buffer = io.StringIO()
            for i in range(events):
                chain = names[i % chains]
                seq, prev = heads[chain]
                seq += 1
                created_at = start_time + timedelta(microseconds=i * 1_003)
                data = {"message_id": i, "status": "delivered", "attempt": i % 3}
                fields = {
                    "chain": chain,
                    "seq": seq,
                    "prev_hash": prev,
                    "created_at": created_at,
                    "action": "send.accepted",
                    "actor_type": "system",
                    "actor_id": "",
                    "object_type": "conversations.Message",
                    "object_id": str(i),
                    "data": data,
                }
                digest = hashlib.sha256(canonical_event(**fields)).hexdigest()
                heads[chain] = (seq, digest)
                tenant = "\\N" if chain == "deployment" else chain
                buffer.write(
                    "\t".join(
                        [
                            tenant,
                            chain,
                            str(seq),
                            prev,
                            created_at.isoformat(),
                            "send.accepted",
                            "system",
                            "",
                            "conversations.Message",
                            str(i),
                            json.dumps(data).replace("\\", "\\\\"),
                            digest,
                        ]
                    )
                    + "\n"
                )
                if buffer.tell() > 1 << 20:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
        with conn.cursor().copy("COPY audit_auditchainhead (chain, seq, hash) FROM STDIN") as copy:
            for name, (seq, digest) in heads.items():
                copy.write_row((name, seq, digest))
        conn.commit()
    seeded = time.perf_counter() - started
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_auditevent")
        conn.execute("VACUUM ANALYZE audit_auditchainhead")
    return {"seed_seconds": round(seeded, 1)}


# Forks from this process would carry its memory into the child's peak RSS until exec (Linux
# keeps the high-water mark across exec), so a small launcher forks and reaps each child.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nBENCH-RSS-KB %d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(args: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run a child to its end: wall time, exit status, its own peak RSS and its output. The
    RSS floor is the launcher's (a bare interpreter, about 10 MB)."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    stderr, _, rss = result.stderr.rpartition("\nBENCH-RSS-KB ")
    return {
        "seconds": round(elapsed, 2),
        "status": result.returncode,
        "max_rss_mb": round(int(rss.strip() or 0) / 1024, 1),
        "stdout": result.stdout,
        "stderr": stderr,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chains", type=int, default=5, help="deployment + N-1 tenant chains")
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()

    var = ROOT / "var" / "bench" / "audit_verify"
    var.mkdir(parents=True, exist_ok=True)
    env = bench_env(options.database_url, var)
    py = sys.executable
    os.environ.update(env)
    import django

    django.setup()

    recreate_database(options.database_url)
    migrate = run_child([py, "manage.py", "migrate", "--verbosity", "0"], env)
    if migrate["status"] != 0:
        print(migrate["stderr"], file=sys.stderr)
        return 1
    figures: dict[str, object] = {"events": options.events, "chains": options.chains}
    figures.update(seed(options.database_url, options.events, options.chains))
    for old in (var / "media" / "audit-checkpoints").glob("*.json"):
        old.unlink()
    checkpoint = run_child([py, "manage.py", "audit_checkpoint"], env)
    if checkpoint["status"] != 0:
        print(checkpoint["stderr"], file=sys.stderr)
        return 1

    with open("/proc/loadavg") as handle:
        figures["loadavg_before"] = handle.read().split()[:3]
    verify = run_child(
        [py, "manage.py", "verify_audit", "--chunk-size", str(options.chunk_size)], env
    )
    baseline = run_child([py, "-c", BASELINE, options.database_url, str(options.chunk_size)], env)
    psql = run_child(
        [
            "psql",
            options.database_url,
            "-qc",
            f"\\copy (SELECT {COLUMNS} FROM audit_auditevent ORDER BY chain, seq) TO /dev/null",  # noqa: S608 - constant columns
        ],
        env,
    )
    with open("/proc/loadavg") as handle:
        figures["loadavg_after"] = handle.read().split()[:3]

    verified = sum(
        int(line.split(": ")[1].split()[0])
        for line in verify["stdout"].splitlines()
        if line.endswith(tuple("0123456789abcdef")) and " events verified, head " in line
    )
    if verify["status"] != 0 or verified != options.events:
        print(verify["stdout"], verify["stderr"], file=sys.stderr)
        return 1
    if int(baseline["stdout"].strip()) != options.events or psql["status"] != 0:
        print(baseline, psql, file=sys.stderr)
        return 1
    for name, result in (("verify_audit", verify), ("server_cursor", baseline), ("psql", psql)):
        figures[name] = {
            "seconds": result["seconds"],
            "events_per_second": round(options.events / result["seconds"]),
            "max_rss_mb": result["max_rss_mb"],
        }
    figures["ratio_verify_to_server_cursor"] = round(baseline["seconds"] / verify["seconds"], 3)
    figures["ratio_verify_to_psql"] = round(psql["seconds"] / verify["seconds"], 3)
    figures["verify_stdout"] = verify["stdout"].splitlines()
    print(json.dumps(figures, indent=2))
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
