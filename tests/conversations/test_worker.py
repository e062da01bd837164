"""The real pipeline: gunicorn-like live server → journal → a real `manage.py qcluster` process
draining it, including a SIGKILL of the worker in the middle of a burst (plan B7, R4).

Needs a database the worker process can open too: PostgreSQL (CI) or a file SQLite test DB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection
from django_q.conf import Conf

from apps.conversations.models import Conversation, Message, WebhookEvent, WebhookState
from apps.tenants.scoping import tenant_scope

from .payload_builders import encode, post_signed, text_body  # noqa: F401 - shared builders

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if connection.vendor == "postgresql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    name = str(db["NAME"])
    if connection.vendor != "sqlite" or "memory" in name or name.startswith("file:"):
        pytest.skip(
            "the qcluster subprocess must open the test database; SQLite test databases are "
            "in-memory here, so this runs on PostgreSQL (set DATABASE_URL, as CI does)"
        )
    return f"sqlite:///{name}"


@pytest.fixture
def worker_env(tmp_path, monkeypatch):
    # Queue tasks on the ORM broker instead of running them inline in the live server.
    monkeypatch.setattr(Conf, "SYNC", False)
    # Same settings as production except a short broker redelivery (`retry`), so a task the
    # killed cluster had prefetched comes back within the test's deadline instead of 180 s.
    (tmp_path / "worker_test_settings.py").write_text(
        textwrap.dedent("""
        from klaros.settings import *  # noqa: F403
        Q_CLUSTER = {**Q_CLUSTER, "timeout": 15, "retry": 20, "workers": 2}  # noqa: F405
    """)
    )
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "KLAROS_TASKS_SYNC": "false",
        "DJANGO_SETTINGS_MODULE": "worker_test_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    return env


class Worker:
    def __init__(self, env: dict, log: Path) -> None:
        self.env, self.log, self.proc = env, log, None

    def start(self) -> Worker:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches every child
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(worker_env, tmp_path):
    started = Worker(worker_env, tmp_path / "qcluster.log")
    yield started
    started.kill()  # before the transactional test flushes the tables


def _post_many(url: str, world, texts: list[str]) -> list[str]:
    def one(value: str) -> str:
        payload, wamid = text_body(world, value, from_=f"1555{hash(value) % 10**7:07d}")
        body = encode(payload)
        from apps.whatsapp.signature import sign_body

        response = requests.post(
            url,
            data=body,
            timeout=10,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": sign_body(body, world.credentials.app_secret),
            },
        )
        assert response.status_code == 200, response.text
        return wamid

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, texts))


def _wait_until_drained(expected_rows: int, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        states = dict.fromkeys(WebhookState.values, 0)
        for state in WebhookEvent.objects.values_list("state", flat=True):
            states[state] += 1
        if states[WebhookState.PROCESSED] == expected_rows:
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"journal not drained within {DEADLINE}s: {states}\n--- qcluster log ---\n{tail}")


def test_it_drains_webhooks_through_a_real_worker_and_survives_a_sigkill_mid_burst(
    live_server, acme, worker
):
    url = f"{live_server.url}/webhooks/whatsapp/"
    worker.start()
    first = _post_many(url, acme, [f"first {i}" for i in range(20)])
    _wait_until_drained(20, worker.log)

    # A burst, with the worker killed half-way through it (mid-drain in most runs).
    with ThreadPoolExecutor(max_workers=1) as background:
        burst = background.submit(_post_many, url, acme, [f"burst {i}" for i in range(150)])
        time.sleep(0.6)
        worker.kill()
        second = burst.result(timeout=120)  # the endpoint keeps acknowledging meanwhile
    assert WebhookEvent.objects.exclude(state=WebhookState.PROCESSED).exists()
    worker.start()
    third = _post_many(url, acme, [f"after restart {i}" for i in range(10)])
    _wait_until_drained(180, worker.log)

    wamids = first + second + third
    assert len(set(wamids)) == 180
    with tenant_scope(acme.tenant):
        stored = list(Message.objects.values_list("wamid", flat=True))
        assert sorted(stored) == sorted(wamids)  # every one, once
        # Each conversation counted each of its messages once (no double processing).
        for conversation in Conversation.objects.all():
            assert conversation.unread_count == conversation.messages.count()
