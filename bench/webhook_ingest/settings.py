"""Benchmark-only settings: the product's settings plus a URLconf that adds a bare 200 view.

Selected with DJANGO_SETTINGS_MODULE=bench.webhook_ingest.settings by run.py only; the product
never imports this module.
"""

from klaros.settings import *  # noqa: F403

ROOT_URLCONF = "bench.webhook_ingest.urls"
