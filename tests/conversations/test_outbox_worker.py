"""Crash recovery with a real django-q2 worker (test plan R1): the worker is SIGKILLed while
it is inside a send; after a restart every message ends accepted (or further), none is left
queued or sending, and the simulator received at most one send per message id.

PostgreSQL only: the worker is another process sharing the test database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from apps.conversations.models import Message
from apps.conversations.outbound.dispatcher import sweep_outbox
from apps.tenants.scoping import unscoped
from apps.whatsapp.simulator import Fault
from apps.whatsapp.testing import running_simulator, wait_until

from .sim_fixtures import (  # noqa: F401 (fixtures)
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    reload,
    sim_number,
)

ON_POSTGRES = django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(
        not ON_POSTGRES,
        reason="needs PostgreSQL: a worker process shares the "
        "test database (SQLite's in-file test database is not shared safely)",
    ),
    pytest.mark.usefixtures("fast_password_hashing"),
]

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 2
GRACE_SECONDS = 10
# Short lease and grace so the test does not wait 90 s; read by dispatcher._lease() and
# dispatcher._reconcile_grace() in the worker process. The grace must cover the time Meta's status
# webhook takes to come back and be drained (the "common case" of R1).
WORKER_SETTINGS = f"""
from klaros.settings import *  # noqa: F403
KLAROS_OUTBOX_LEASE_SECONDS = {LEASE_SECONDS}
KLAROS_OUTBOX_RECONCILE_GRACE_SECONDS = {GRACE_SECONDS}
"""


def database_url() -> str:
    db = django_settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """`manage.py qcluster` in its own process group (so SIGKILL takes its children too)."""

    def __init__(self, graph_url: str, tmp_path: Path) -> None:
        (tmp_path / "worker_settings.py").write_text(WORKER_SETTINGS)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_SETTINGS_MODULE": "worker_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "KLAROS_ENV_FILE": "",
            "KLAROS_TASKS_SYNC": "false",
            "KLAROS_WORKERS": "1",
            "WHATSAPP_GRAPH_URL": graph_url,
            "DATABASE_CONN_MAX_AGE": "0",
            "LOG_LEVEL": "WARNING",
        }
        self.log = tmp_path / "worker.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def outbound() -> list[Message]:
    with unscoped("test witness"):
        return list(Message.objects.filter(direction="out").order_by("created_at"))


@pytest.fixture
def enqueue_to_the_broker(monkeypatch):
    """This process enqueues tasks for the worker instead of running them inline."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)


def test_it_recovers_every_message_after_the_worker_is_killed_mid_send(
    transactional_db, acme, live_server, tmp_path, enqueue_to_the_broker
):
    from apps.conversations.outbound.outbox import queue_text_reply
    from apps.tenants.scoping import tenant_scope

    count = 6
    webhook_url = f"{live_server.url}/webhooks/whatsapp/"
    with running_simulator(webhook_url, numbers=[sim_number(acme)]) as sim:
        worker = Worker(sim.graph_url(), tmp_path)
        # The first send hangs at "Meta" long enough to kill the worker inside it; Meta still
        # processes it afterwards and reports statuses carrying our message id.
        sim.add_fault(Fault(acme.number.phone_number_id, delay=2.0))
        conversation = make_conversation(acme)
        try:
            worker.start()
            with tenant_scope(acme.tenant):
                for index in range(count):
                    queue_text_reply(conversation, f"Update {index}", actor=acme.owner)
            wait_until(
                lambda: any(m.status == "sending" and m.attempts == 1 for m in outbound()),
                timeout=60,
                interval=0.1,
                message="the worker never started sending",
            )
            time.sleep(0.5)
            worker.kill()  # inside the delayed Graph call: "Meta" has not answered yet
            assert graph_sends(sim) == []
            assert any(m.status == "sending" for m in outbound())

            worker.start()

            def settled():
                sweep_outbox()  # what the minutely schedule does
                return all(m.status_rank >= 10 for m in outbound())

            wait_until(
                settled,
                timeout=90,
                interval=1.0,
                message=f"messages did not settle: {[m.status for m in outbound()]}",
            )
        finally:
            worker.stop()
            worker.kill()
        messages = outbound()
        sends = Counter(r["json"]["biz_opaque_callback_data"] for r in graph_sends(sim))
    assert len(messages) == count
    assert {m.status for m in messages} <= {"accepted", "sent", "delivered", "read"}
    assert all(m.wamid for m in messages)
    assert set(sends) == {str(m.pk) for m in messages}
    assert max(sends.values()) == 1, sends  # nothing sent twice
