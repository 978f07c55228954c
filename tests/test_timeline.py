"""The timeline counts what the listing would show, per interval and outcome, in the caller's scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from producers.contract.event import parse_event
from query_api.models import Timeline
from query_api.settings import ApiSettings
from storage.reader import INTERVALS_MS, EventFilter, View
from storage.store import Store
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, make_key, scope, served

BASE = datetime(2026, 11, 1, tzinfo=UTC)
DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True},
            {"id": "lister", "name": "Lister", "app_level": "list"},
        ],
        "users": [
            {"id": "u-admin", "name": "Admin", "default_role": "admin"},
            {"id": "u-dev", "name": "Dev", "app_roles": {"app-1": "lister"}},
        ],
        "applications": [{"id": "app-1", "name": "One"}, {"id": "app-2", "name": "Two"}],
    }
)


def _event(i: int, hours: float, app: str, outcome: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "occurred_at": (BASE + timedelta(hours=hours)).isoformat(),
        "infrastructure": "acme",
        "actor": {"id": "u-admin"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": app},
        "outcome": outcome,
    }


EVENTS = [
    _event(0, 0.5, "app-1", "success"),
    _event(1, 0.7, "app-2", "failure"),
    _event(2, 2.2, "app-1", "denied"),
    _event(3, 2.9, "app-1", "success"),
    _event(4, 47.0, "app-2", "success"),
]


def _store(store: Store) -> Store:
    store.writer.write([process(parse_event(e), served(), Lineage("t", 0)) for e in EVENTS])
    return store


def test_buckets_count_each_outcome_over_the_range(store: Store) -> None:
    reader = _store(store).reader
    now = int((BASE + timedelta(hours=48)).timestamp() * 1000)
    t = reader.timeline(scope=ALL, view=View(), filters=EventFilter(), now_ms=now, buckets=60)
    # 47.5 hours from the oldest row to now fit 60 buckets of an hour.
    assert t.interval_ms == 3_600_000 and t.since_ms == int((BASE + timedelta(minutes=30)).timestamp() * 1000)
    counted = {b.start_ms: b.counts for b in t.buckets if b.counts}
    hour = 3_600_000
    start = int(BASE.timestamp() * 1000)
    assert counted == {
        start: {"success": 1, "failure": 1},
        start + 2 * hour: {"denied": 1, "success": 1},
        start + 47 * hour: {"success": 1},
    }
    assert len(t.buckets) == 48 and all(b.start_ms % hour == 0 for b in t.buckets)
    # A narrower scope counts only what it may read; the range of a search bounds the buckets.
    dev = scope(apps=["app-1"])
    t = reader.timeline(scope=dev, view=View(), filters=EventFilter(), now_ms=now, buckets=60)
    assert sum(sum(b.counts.values()) for b in t.buckets) == 3
    since = int((BASE + timedelta(hours=2)).timestamp() * 1000)
    t = reader.timeline(
        scope=ALL,
        view=View(),
        filters=EventFilter(since_ms=since, until_ms=since + hour),
        now_ms=now,
        buckets=4,
    )
    assert t.interval_ms == 15 * 60_000 and [sum(b.counts.values()) for b in t.buckets] == [1, 0, 0, 1]
    assert INTERVALS_MS[0] == 60_000


def test_an_empty_scope_has_no_buckets(store: Store) -> None:
    reader = _store(store).reader
    t = reader.timeline(
        scope=scope(apps=["app-9"]), view=View(), filters=EventFilter(), now_ms=10**12, buckets=10
    )
    assert t.buckets == []


def test_the_api_answers_the_listings_rows_per_interval(store: Store) -> None:
    embedded = build_embedded(_store(store), api_settings=ApiSettings(audit_reads=False), directory=DIRECTORY)
    with TestClient(embedded.app) as client:
        for user, total in (("u-admin", 5), ("u-dev", 3)):
            headers = {"Authorization": "Bearer " + make_key(store, user)}
            body = client.get("/v1/events/timeline", params={"buckets": 10}, headers=headers).json()
            Timeline.model_validate(body)
            assert body["total"] == total and len(body["buckets"]) <= 10
            listed = client.get("/v1/events", params={"limit": 1000}, headers=headers).json()["items"]
            assert len(listed) == total
            failures = client.get("/v1/events/timeline", params={"q": "outcome:failure"}, headers=headers)
            assert failures.json()["total"] == (1 if user == "u-admin" else 0)
