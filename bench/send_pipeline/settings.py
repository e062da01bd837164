"""Benchmark-only settings: the product's settings plus a URLconf with a bare view (the B5
baseline) and a thin reply view over the reply service. Selected by run.py only."""

from klaros.settings import *  # noqa: F403

ROOT_URLCONF = "bench.send_pipeline.urls"
