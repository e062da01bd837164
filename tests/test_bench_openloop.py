"""The open-loop load generator of benchmark B1's Meta profile (bench/webhook_ingest/openloop.py),
against a small local HTTP server: it counts every answer by status, tells errors apart, and
charges a request with the time since it was due, not since it was sent."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import uvloop

from bench.webhook_ingest.openloop import generate, load_requests, percentile


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, as gunicorn's sync workers

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, self.headers["X-Hub-Signature-256"], body))
        if self.path == "/drop":
            self.connection.close()  # no answer at all
            return
        if self.path == "/slow":
            time.sleep(0.2)
        status = 503 if self.path == "/busy" else 200
        payload = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 64  # a burst of connections must not be refused on a busy machine


@pytest.fixture
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def bodies(tmp_path):
    path = tmp_path / "bodies.txt"
    path.write_bytes(b"".join(b'sha256=%064d\t{"n":%d}\n' % (i, i) for i in range(5)))
    return path


def run(server, bodies, path, rate, seconds, start_at=0):
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    requests = load_requests(bodies, url)
    results = []
    # In a thread of its own, with its own event loop: the browser tests leave Playwright's
    # loop running in the main thread.
    thread = threading.Thread(
        target=lambda: results.append(
            uvloop.run(generate(url, requests, rate, seconds, start_at, window=0.5))
        )
    )
    thread.start()
    thread.join(timeout=60)
    assert results, "the generator did not finish"
    return results[0]


def test_the_lines_from_start_at_are_each_sent_once(server, bodies):
    result = run(server, bodies, "/ok", rate=40, seconds=0.25, start_at=3)

    assert result["due"] == result["completed"] == 10
    assert result["statuses"] == {"200": 10} and result["non_200"] == 0
    assert result["errors"] == {}
    sent = sorted(body for _, _, body in server.seen)
    # Lines 3, 4, then around the file: 0..4, 0..2 (each body names its line).
    expected = [b'{"n":%d}' % ((3 + i) % 5) for i in range(10)]
    assert sent == sorted(expected)
    assert {signature for _, signature, _ in server.seen} == {f"sha256={i:064d}" for i in range(5)}


def test_answers_other_than_200_and_lost_connections_are_counted(server, bodies):
    busy = run(server, bodies, "/busy", rate=50, seconds=0.1)
    dropped = run(server, bodies, "/drop", rate=50, seconds=0.1)

    assert busy["statuses"] == {"503": 5} and busy["non_200"] == 5
    assert dropped["completed"] == 0 and sum(dropped["errors"].values()) == 5


def test_latency_runs_from_when_a_request_was_due(server, bodies):
    # 20 requests due within 0.1 s, each answered after 0.2 s: the last ones are due early and
    # answered late, so every latency is at least the server's delay.
    result = run(server, bodies, "/slow", rate=200, seconds=0.1)

    assert result["completed"] == 20
    assert result["p50_ms"] >= 200
    assert result["max_ms"] >= result["p99_ms"] >= result["p50_ms"]
    assert result["rate_achieved"] < 200  # the answers took longer than the sending


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 0.999) == 100
    assert percentile([], 0.5) is None
