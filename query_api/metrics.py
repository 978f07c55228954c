"""The API's Prometheus metrics: requests by route and status, their duration, refused
credentials. One registry per application, so that several apps in one process (tests,
`worker --with-api`) keep their own counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SECOND_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Count:
    """A counter kept elsewhere (refused credentials are counted where they are logged)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        self._name, self._documentation, self._value = name, documentation, value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._value())


class ApiMetrics:
    def __init__(self, *, failed_authentications: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "auditlog_api_requests",
            "Requests answered, by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.seconds = Histogram(
            "auditlog_api_request_seconds",
            "Time to the end of the answer (an export: to its last row)",
            ["route"],
            buckets=_SECOND_BUCKETS,
            registry=r,
        )
        r.register(
            _Count(
                "auditlog_api_failed_authentications",
                "Refused credentials (keys, sessions)",
                failed_authentications,
            )
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path, whose
    ids would make a series per entity)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = _route(scope)
            self._metrics.requests.labels(route, str(status[0])).inc()
            self._metrics.seconds.labels(route).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"
