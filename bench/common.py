"""What the benchmarks share: the product's settings as production runs them (DEBUG off, every
required secret set to a bench-only value), and a throwaway PostgreSQL database."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def production_env(db_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a production-like Klaros process on `db_url` (loopback only)."""
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "klaros.settings",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret-key-0123456789abcdef0123456789abcdef",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "KLAROS_ENCRYPTION_KEYS": os.environ.get(
            "KLAROS_ENCRYPTION_KEYS", "bench1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        ),
        "KLAROS_AUDIT_SIGNING_KEY": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
        "KLAROS_ENV_FILE": "",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **overrides,
    }


def ensure_database(db_url: str) -> None:
    """Create the database named at the end of `db_url` unless it exists."""
    import psycopg

    base, name = db_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
