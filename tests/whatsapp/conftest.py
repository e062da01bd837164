"""WhatsApp test fixtures: a real simulator and webhook receiver on loopback."""

import pytest

from apps.whatsapp.graph import GraphClient
from apps.whatsapp.testing import DEMO_NUMBER, running_simulator, running_webhook_receiver


@pytest.fixture
def hooks():
    with running_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def sim(hooks):
    with running_simulator(hooks.url) as simulator:
        yield simulator


@pytest.fixture
def client(sim):
    with GraphClient(sim.graph_url(), DEMO_NUMBER.token, timeout=(2, 5)) as graph:
        yield graph
