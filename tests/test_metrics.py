"""Prometheus metrics and health of the API and of the worker's ops server."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from stream.messages import Batch, InvalidMessage, Lineage
from stream.metrics import OpsServer, WorkerMetrics
from tests.grants import make_key


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_api_counts_requests_by_route_and_refused_credentials(store: Store) -> None:
    directory = Directory.model_validate(
        {
            "infrastructure": "acme",
            "roles": [
                {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True}
            ],
            "users": [{"id": "ada", "name": "Ada", "default_role": "admin"}],
        }
    )
    client = TestClient(build_embedded(store, api_settings=ApiSettings(), directory=directory).app)
    headers = {"Authorization": f"Bearer {make_key(store, 'ada')}"}
    for _ in range(3):
        assert client.get("/v1/events", headers=headers).status_code == 200
    assert client.get("/v1/events/not-a-uuid", headers=headers).status_code == 422
    assert client.get("/v1/events", headers={"Authorization": "Bearer alk_wrong"}).status_code == 401
    assert client.get("/readyz").json() == {"status": "ok"}
    got = samples(client.get("/metrics").text)
    assert got["auditlog_api_requests_total", (("route", "/v1/events"), ("status", "200"))] == 3
    assert got["auditlog_api_requests_total", (("route", "/v1/events"), ("status", "401"))] == 1
    assert got["auditlog_api_requests_total", (("route", "/v1/events/{event_id}"), ("status", "422"))] == 1
    assert got["auditlog_api_failed_authentications_total", ()] == 1
    assert got["auditlog_api_request_seconds_count", (("route", "/v1/events"),)] == 4


def test_the_worker_ops_server_reports_batches_and_readiness() -> None:
    metrics = WorkerMetrics()
    problems: dict[str, str | None] = {"alive": None}

    def ready() -> str | None:
        failing = metrics.failing_calls()
        return f"failing: {', '.join(failing)}" if failing else None

    ops = OpsServer(metrics, host="127.0.0.1", port=0, alive=lambda: problems["alive"], ready=ready)
    ops.start()
    try:
        base = f"http://127.0.0.1:{ops.port}"
        lineage = Lineage(source="kafka", received_at_ms=1)
        batch = Batch(messages=2, verdicts=[True, True, False], inserted=1, duplicates=1)
        batch.rejects.append(InvalidMessage(reason="r", code="forged", payload=b"", lineage=lineage))
        metrics.observe_batch(batch)
        assert httpx.get(f"{base}/readyz").status_code == 200
        metrics.call_failed("publish")  # the SIEM topic refuses: not ready until a publish succeeds
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and "publish" in r.text
        metrics.call_done("publish", 0.01)
        assert httpx.get(f"{base}/readyz").status_code == 200
        problems["alive"] = "stuck"
        assert httpx.get(f"{base}/healthz").status_code == 503
        got = samples(httpx.get(f"{base}/metrics").text)
        assert got["auditlog_worker_events_in_total", ()] == 3
        assert got["auditlog_worker_rows_stored_total", ()] == 1
        assert got["auditlog_worker_dead_lettered_total", (("code", "forged"),)] == 1
        assert got["auditlog_worker_call_failures_total", (("call", "publish"),)] == 1
        assert got["auditlog_worker_call_failing", (("call", "publish"),)] == 0
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        ops.stop()


def test_lag_of_a_partition_taken_away_is_dropped() -> None:
    metrics = WorkerMetrics()
    metrics.set_lag({("raw", "0"): 5, ("raw", "1"): 0}, assigned={("raw", "0"), ("raw", "1")})
    metrics.set_lag({("raw", "0"): 2}, assigned={("raw", "0")})  # partition 1 went to another worker
    got = samples(generate_latest(metrics.registry).decode())
    assert got["auditlog_worker_consumer_lag", (("partition", "0"), ("topic", "raw"))] == 2
    assert ("auditlog_worker_consumer_lag", (("partition", "1"), ("topic", "raw"))) not in got


def test_metrics_behind_a_token_when_one_is_set(store: Store) -> None:
    settings = ApiSettings(metrics_token="scrape-me")
    client = TestClient(build_embedded(store, api_settings=settings, directory=None).app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401 and "scrape-me" not in r.text
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "auditlog_api_requests_total" in ok.text
    assert client.get("/healthz").status_code == 200  # probes carry no token

    ops = OpsServer(
        WorkerMetrics(), host="127.0.0.1", port=0, alive=lambda: None, ready=lambda: None, token="w-t"
    )
    ops.start()
    try:
        base = f"http://127.0.0.1:{ops.port}"
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer w-t"})
        assert r.status_code == 200 and "auditlog_worker_events_in_total" in r.text
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        ops.stop()
