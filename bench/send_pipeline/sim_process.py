"""The Meta simulator in its own process (so it does not share the sender's GIL), with
Meta-like latency on `POST /{phone_number_id}/messages` answers.

    python -m bench.send_pipeline.sim_process PORT NUMBERS_JSON LATENCY_MEDIAN_MS SIGMA SEED

Latency is the simulator's own option (`configure(latency_median_ms=..., latency_sigma=...)`):
applied after the call was processed and logged (the 130429 rule and the request log see the
arrival time, as Meta's would), before the answer goes back; lognormal, seeded. Status
webhooks are off (nobody receives them here); the 80/s per number rule is on. Stops when its
stdin closes (the benchmark exits).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from apps.whatsapp.simulator import MetaSimulator, SimNumber


def main() -> None:
    port, numbers_file, median, sigma, seed = sys.argv[1:6]
    numbers = [SimNumber(**n) for n in json.loads(Path(numbers_file).read_text())]
    sim = MetaSimulator("127.0.0.1", int(port), None, numbers=numbers, seed=int(seed))
    sim.configure(
        statuses=[],
        rate_limit_per_second=80,
        latency_median_ms=float(median),
        latency_sigma=float(sigma),
    )
    sim.start()
    print(f"READY {sim.graph_url()} latency=simulator", flush=True)
    try:
        sys.stdin.read()  # until the parent closes it
    finally:
        sim.stop()


if __name__ == "__main__":
    import django

    django.setup()
    main()
