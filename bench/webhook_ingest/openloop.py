#!/usr/bin/env python
"""Open-loop load at a constant rate: B1's Meta profile (performance-targets.md, B1 1).

    python openloop.py URL BODIES_FILE --rate 400 --seconds 600 [--start-at N] [--json OUT]

Request i is due at `start + i / rate`, whatever happened to the requests before it: a slow
answer does not delay the next send, unlike a closed-loop tool such as wrk, which waits for a
connection to be free and so hides the queueing a stall causes (coordinated omission). The
latency of a request is measured from the moment it was due, not from when it was sent, so a
request the generator itself sent late is charged with that delay too.

Each request goes on its own connection, as Meta's do against gunicorn's sync workers (they close
the connection after every response), so connecting is part of the latency. BODIES_FILE has
one request per line, "<X-Hub-Signature-256>\\t<body>" (run.py writes it); line START_AT + i is
used for request i, wrapping around at the end of the file.

Prints JSON: requests due, completed, per status, errors, latency percentiles (p50, p90, p99,
p99.9, max), the achieved rate, the generator's own CPU, how late it sent (p99 and max), the
p99 of each `--window` seconds and the five seconds with the slowest answers, so a stall shows
when it happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

# Bounded: a server that stops answering must not make the generator open sockets until the
# file descriptors run out. Requests beyond this wait for a slot, and the wait counts as latency.
MAX_IN_FLIGHT = 1000
RESPONSE_TIMEOUT = 30.0


def load_requests(path: Path, url: str) -> list[bytes]:
    parts = urlsplit(url)
    host = parts.netloc
    target = parts.path or "/"
    requests = []
    with path.open("rb") as lines:
        for line in lines:
            signature, _, body = line.rstrip(b"\n").partition(b"\t")
            head = (
                f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"X-Hub-Signature-256: {signature.decode('ascii')}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            requests.append(head.encode("ascii") + body)
    if not requests:
        raise SystemExit(f"{path} holds no request")
    return requests


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when it is empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class _Exchange(asyncio.Protocol):
    """One request on a fresh connection; resolves `done` with the response's status code once
    the whole response (headers and Content-Length bytes, or up to EOF) has arrived."""

    def __init__(self, payload: bytes, done: asyncio.Future) -> None:
        self.payload, self.done = payload, done
        self.buffer = bytearray()
        self.status: int | None = None
        self.expected: int | None = None  # total response bytes, once the headers are in
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            words = head[0].split()
            if len(words) < 2 or not words[1].isdigit():
                self._finish(ConnectionError(f"bad status line {head[0][:40]!r}"))
                return
            self.status = int(words[1])
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.expected = end + 4 + int(value.strip())
            if self.expected is None:
                return  # the body ends at EOF
        if len(self.buffer) >= self.expected:
            self._finish(None)

    def connection_lost(self, exc) -> None:
        if self.status is not None and self.expected is None:
            self._finish(None)  # a body delimited by EOF
        else:
            self._finish(exc or ConnectionError("connection closed before the response ended"))

    def _finish(self, error: BaseException | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(self.status)
            else:
                self.done.set_exception(error)
        if self.transport is not None:
            self.transport.close()


async def _exchange(host: str, port: int, payload: bytes) -> int:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Exchange(payload, done), host, port)
    try:
        return await done
    finally:
        transport.close()


async def generate(
    url: str, requests: list[bytes], rate: float, seconds: float, start_at: int, window: float
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    total = int(rate * seconds)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    latencies: list[float] = []
    windows: dict[int, list[float]] = {}
    seconds_max: dict[int, float] = {}  # second of the run -> worst latency due in it
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    late: list[float] = []
    # perf_counter, not loop.time(): uvloop's loop clock is libuv's, cached per loop iteration
    # in whole milliseconds, too coarse for latencies of a few milliseconds.
    clock = time.perf_counter

    async def one(index: int, due: float) -> None:
        async with slots:
            late.append(clock() - due)
            try:
                status = await asyncio.wait_for(
                    _exchange(host, port, requests[(start_at + index) % len(requests)]),
                    RESPONSE_TIMEOUT,
                )
            except (TimeoutError, OSError) as exc:
                errors[type(exc).__name__] += 1
                return
        elapsed_ms = (clock() - due) * 1000.0
        statuses[status] += 1
        latencies.append(elapsed_ms)
        windows.setdefault(int((due - start) // window), []).append(elapsed_ms)
        second = int(due - start)
        seconds_max[second] = max(seconds_max.get(second, 0.0), elapsed_ms)

    cpu_before = time.process_time()
    started_at = datetime.now(tz=UTC)
    start = clock() + 0.05
    tasks = []
    for index in range(total):
        due = start + index / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index, due)))
        if len(tasks) >= 5000:  # keep the list short; finished tasks need no reference
            tasks = [t for t in tasks if not t.done()]
    sent_by = clock()
    await asyncio.gather(*tasks)
    finished = clock()
    cpu = time.process_time() - cpu_before

    latencies.sort()
    late.sort()
    completed = len(latencies)
    return {
        "url": url,
        "rate_target": rate,
        "seconds": seconds,
        "due": total,
        "completed": completed,
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "non_200": completed - statuses.get(200, 0),
        "errors": dict(errors),
        "rate_achieved": completed / (finished - start) if finished > start else 0.0,
        "send_span_s": sent_by - start,
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "p999_ms": percentile(latencies, 0.999),
        "max_ms": latencies[-1] if latencies else None,
        "sent_late_p99_ms": (percentile(late, 0.99) or 0.0) * 1000.0,
        "sent_late_max_ms": (late[-1] if late else 0.0) * 1000.0,
        "loadgen_cpu_share": cpu / (finished - start) if finished > start else 0.0,
        "started_at": started_at.isoformat(),
        # The five seconds with the slowest answer, as seconds since started_at: a stall can
        # be matched with the server's logs (a PostgreSQL checkpoint, say).
        "worst_seconds": [
            {"second": second, "max_ms": worst}
            for second, worst in sorted(seconds_max.items(), key=lambda kv: -kv[1])[:5]
        ],
        "window_s": window,
        "window_p99_ms": [
            percentile(sorted(values), 0.99) for _, values in sorted(windows.items())
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start-at", type=int, default=0, help="first line of the file to use")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per p99 window")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    requests = load_requests(args.bodies, args.url)
    # uvloop: the generator shares the machine with the server it measures, and uvloop's event
    # loop costs about half the CPU per request of asyncio's (0.18 against 0.27 ms here).
    result = uvloop.run(
        generate(args.url, requests, args.rate, args.seconds, args.start_at, args.window)
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
