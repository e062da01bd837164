"""The simulator's optional Meta-like latency on sends (benchmark B7): lognormal answers to
`POST /{phone_number_id}/messages`, applied after the call was processed and logged (the rate
limit and the request log see the arrival), off by default, deterministic with the seed, and
never serialising concurrent callers."""

import threading
import time
from datetime import datetime

import pytest
import requests

from apps.whatsapp.graph import GraphClient
from apps.whatsapp.simulator import MetaSimulator
from apps.whatsapp.testing import DEMO_NUMBER, running_simulator, wait_until

PNID = DEMO_NUMBER.phone_number_id
TEXT = {"to": "+15551234567", "type": "text", "text": {"body": "Hi"}}


def timed_send(sim) -> float:
    with GraphClient(sim.graph_url(), DEMO_NUMBER.token) as client:
        started = time.monotonic()
        client.send_message(PNID, TEXT)
        return time.monotonic() - started


def test_it_answers_sends_without_latency_by_default():
    with running_simulator() as sim:
        assert sim.config()["latency_median_ms"] == 0
        timed_send(sim)
        [request] = sim.requests(PNID)
        assert request["latency"] == 0  # answered as soon as it was processed


def test_it_holds_send_answers_for_the_configured_latency_after_logging_the_arrival():
    with running_simulator(latency_median_ms=250, latency_sigma=0) as sim:
        took = timed_send(sim)
        assert took >= 0.25  # a lower bound: a busy machine can only make it longer
        [request] = sim.requests(PNID)
        assert request["latency"] == pytest.approx(0.25)  # held for the latency, no longer
        logged = datetime.fromisoformat(request["time"]).timestamp()
        assert time.time() - logged >= 0.24  # logged on arrival, answered later
        with GraphClient(sim.graph_url(), DEMO_NUMBER.token) as client:
            client.list_message_templates(DEMO_NUMBER.waba_id)  # not a send: no latency
        [listing] = [r for r in sim.requests() if r["path"].endswith("/message_templates")]
        assert listing["latency"] == 0


def test_it_does_not_serialise_concurrent_sends():
    with running_simulator(latency_median_ms=300, latency_sigma=0, rate_limit_per_second=0) as sim:
        ready = threading.Barrier(8)

        def send_with_the_others():
            with GraphClient(sim.graph_url(), DEMO_NUMBER.token) as client:
                ready.wait(timeout=10)  # all eight start together
                client.send_message(PNID, TEXT)

        threads = [threading.Thread(target=send_with_the_others) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # One at a time, the simulator would never hold more than one send: all eight were
        # held at once, each for its 300 ms.
        assert sim.sends_in_flight() == {"now": 0, "max": 8}
        assert [r["latency"] for r in sim.requests(PNID)] == [pytest.approx(0.3)] * 8


def test_it_counts_the_sends_it_holds_in_flight_and_how_long_it_held_each():
    with running_simulator(latency_median_ms=200, latency_sigma=0) as sim:
        assert sim.sends_in_flight() == {"now": 0, "max": 0}
        sending = threading.Thread(target=timed_send, args=(sim,))
        sending.start()
        wait_until(lambda: sim.sends_in_flight()["now"] == 1, message="the send never arrived")
        sending.join()
        assert sim.sends_in_flight() == {"now": 0, "max": 1}
        [request] = sim.requests(PNID)
        assert request["latency"] == pytest.approx(0.2)
        response = requests.get(f"{sim.url}/_sim/stats", timeout=10)
        assert response.json()["sends_in_flight"] == {"now": 0, "max": 1}
        assert requests.delete(f"{sim.url}/_sim/stats", timeout=10).status_code == 200
        assert sim.sends_in_flight() == {"now": 0, "max": 0}


def test_its_latency_draws_are_lognormal_and_deterministic_with_the_seed():
    def draws(seed):
        sim = MetaSimulator(seed=seed)
        sim.configure(latency_median_ms=300, latency_sigma=0.6)
        with sim._lock:
            return [sim._latency() for _ in range(2000)]

    first, again, other = draws(7), draws(7), draws(8)
    assert first == again
    assert first != other
    ordered = sorted(first)
    assert 0.27 <= ordered[1000] <= 0.33  # median 300 ms
    assert 1.0 <= ordered[1980] <= 1.5  # p99 = median x exp(2.326 x 0.6) ~ 1.2 s


def test_it_refuses_a_negative_latency():
    sim = MetaSimulator()
    with pytest.raises(ValueError):
        sim.configure(latency_median_ms=-1)
    with pytest.raises(ValueError):
        sim.configure(latency_sigma=-0.1)
