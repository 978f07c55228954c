"""The worker's Prometheus metrics and its liveness and readiness, served on one port.

`/metrics` (prometheus-client's text format), `/healthz` (the event loop beats: the
process is not wedged) and `/readyz` (no step is failing: the store and the SIEM
output take batches). A tiny threaded HTTP server of the standard library: the worker
has no web framework, and faust's own web server is off.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from stream.messages import Batch

log = logging.getLogger("auditlog.worker")

_EVENT_BUCKETS = (1, 10, 100, 1_000, 5_000, 20_000, 50_000, 100_000, 500_000)
_SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_in = Counter(
            "auditlog_worker_events_in", "Events taken in (accepted or refused)", registry=r
        )
        self.stored = Counter("auditlog_worker_rows_stored", "Rows inserted into the store", registry=r)
        self.duplicates = Counter(
            "auditlog_worker_duplicates", "Events already stored with the same content (replays)", registry=r
        )
        self.conflicts = Counter(
            "auditlog_worker_conflicts", "Events refused: their id is stored with other content", registry=r
        )
        self.dead_lettered = Counter(
            "auditlog_worker_dead_lettered",
            "Refused input kept as dead letters, by reason code",
            ["code"],
            registry=r,
        )
        self.produced = Counter(
            "auditlog_worker_produced_records",
            "Records acknowledged on audit.events.v1 and audit.dlq",
            registry=r,
        )
        self.batch_events = Histogram(
            "auditlog_worker_batch_events", "Events per batch", buckets=_EVENT_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "auditlog_worker_batch_seconds",
            "A batch from fetch to commit",
            buckets=_SECOND_BUCKETS,
            registry=r,
        )
        self.call_seconds = Histogram(
            "auditlog_worker_call_seconds",
            "One successful call of a step to its service: insert, publish (SIEM produce), dead-letter",
            ["call"],
            buckets=_SECOND_BUCKETS,
            registry=r,
        )
        self.call_failures = Counter(
            "auditlog_worker_call_failures",
            "Failed calls of a step to its service (retried; the batch stays uncommitted)",
            ["call"],
            registry=r,
        )
        self.failing = Gauge(
            "auditlog_worker_call_failing", "1 while a step's calls fail and it retries", ["call"], registry=r
        )
        self.lag = Gauge(
            "auditlog_worker_consumer_lag",
            "Messages behind the partition's end, as of this worker's last commit",
            ["topic", "partition"],
            registry=r,
        )
        self.commits_refused = Counter(
            "auditlog_worker_commits_refused", "Commits of partitions a rebalance took away", registry=r
        )
        self.directory_age = Gauge(
            "auditlog_worker_directory_age_seconds",
            "Seconds since the directory follower last knew it had read audit.directory to its end",
            registry=r,
        )
        self._failing: set[str] = set()
        self._lag_labels: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def set_lag(self, lags: dict[tuple[str, str], int], *, assigned: set[tuple[str, str]]) -> None:
        """The lag of the partitions just committed; partitions a rebalance took away are dropped,
        so that two workers never both report one."""
        with self._lock:
            for gone in self._lag_labels - assigned:
                self.lag.remove(*gone)
            self._lag_labels = (self._lag_labels & assigned) | set(lags)
        for labels, lag in lags.items():
            self.lag.labels(*labels).set(lag)

    def observe_batch(self, batch: Batch) -> None:
        self.events_in.inc(batch.received)
        self.stored.inc(batch.inserted)
        self.duplicates.inc(batch.duplicates)
        self.conflicts.inc(batch.conflicts)
        for reject in batch.rejects:
            self.dead_lettered.labels(reject.code).inc()
        self.produced.inc(batch.produced)
        self.batch_events.observe(batch.received)

    def call_failed(self, call: str) -> None:
        self.call_failures.labels(call).inc()
        self.failing.labels(call).set(1)
        with self._lock:
            self._failing.add(call)

    def call_done(self, call: str, seconds: float) -> None:
        self.call_seconds.labels(call).observe(seconds)
        with self._lock:
            if call in self._failing:
                self._failing.discard(call)
                self.failing.labels(call).set(0)

    def failing_calls(self) -> list[str]:
        with self._lock:
            return sorted(self._failing)


class OpsServer:
    """`/metrics`, `/healthz`, `/readyz` on `port`, in a daemon thread."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        host: str,
        port: int,
        alive: Callable[[], str | None],
        ready: Callable[[], str | None],
        token: str | None = None,
    ) -> None:
        """`alive()` / `ready()`: None when all is well, else why not (the answer's body).
        `token`: when given, `/metrics` asks for it as a bearer token (the counts tell how busy
        the installation is); the probes stay open, they tell nothing but up or down."""
        registry = metrics.registry
        expected = f"Bearer {token}".encode() if token else None

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    given = (self.headers.get("Authorization") or "").encode()
                    if expected is not None and not hmac.compare_digest(given, expected):
                        self._answer(401, b"a bearer token is required\n", "text/plain; charset=utf-8")
                    else:
                        self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    problem = (alive if path == "/healthz" else ready)()
                    body = (problem or "ok").encode() + b"\n"
                    self._answer(503 if problem else 200, body, "text/plain; charset=utf-8")
                else:
                    self._answer(
                        404, b"not found: /metrics, /healthz, /readyz\n", "text/plain; charset=utf-8"
                    )

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # scraped every few seconds: not worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="worker-ops", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and health on port %d (/metrics, /healthz, /readyz)", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Heartbeat:
    """The event loop's pulse: stale when faust's loop stops running its timers."""

    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def problem(self) -> str | None:
        age = time.monotonic() - self._last
        if age > self._stale_after_s:
            return f"the worker's event loop has not run for {age:.0f}s"
        return None
