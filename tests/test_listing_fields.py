"""Listings answer summaries by default and whole events on request; the search box and the
listing's own parameters take names as well as ids and mean the same thing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from query_api.models import Event, EventPage, EventSummary
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True}
        ],
        "users": [
            {"id": "u-admin", "name": "Admin", "default_role": "admin"},
            {"id": "u-andrea", "name": "Andrea Fleet"},
            {"id": "u-priya", "name": "Priya Raman"},
        ],
        "applications": [{"id": "app-billing", "name": "Billing"}, {"id": "app-crm", "name": "CRM"}],
        "environments": [{"id": "env-prod", "name": "Production"}, {"id": "env-test", "name": "Test"}],
    }
)


def _event(i: int, actor: str, env: str, app: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "occurred_at": f"2026-11-{10 + i:02d}T10:00:00Z",
        "infrastructure": "acme",
        "environment": env,
        "actor": {"id": actor, "ip": "10.0.0.7", "user_agent": "console/1"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": app},
        "related": [{"kind": "environment", "id": env}],
        "changes": [{"field": "version", "old": "1", "new": "2"}],
        "details": {"ticket": "CHG-1"},
    }


@pytest.fixture
def api(store: Store) -> Iterator[tuple[TestClient, dict[str, str]]]:
    embedded = build_embedded(store, api_settings=ApiSettings(audit_reads=False), directory=DIRECTORY)
    admin = {"Authorization": "Bearer " + make_key(store, "u-admin", can_ingest=True)}
    with TestClient(embedded.app) as client:
        events = [
            _event(0, "u-andrea", "env-prod", "app-billing"),
            _event(1, "u-priya", "env-test", "app-crm"),
            _event(2, "u-andrea", "env-test", "app-billing"),
        ]
        assert client.post("/v1/events", json=events, headers=admin).status_code == 200
        yield client, admin


def _ids(client: TestClient, headers: dict[str, str], params: dict[str, str]) -> list[int]:
    r = client.get("/v1/events", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(int(item["event_id"][-12:]) for item in r.json()["items"])


def test_a_listing_is_summaries_by_default_and_whole_events_on_request(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    for path in ("/v1/events", "/v1/users/u-andrea/activity", "/v1/entities/application/app-billing/changes"):
        summary = client.get(path, headers=admin).json()
        EventPage.model_validate(summary)
        assert summary["items"], path
        for item in summary["items"]:
            assert set(item) == set(EventSummary.model_fields), path
            assert item["actor"] == {"id": item["actor"]["id"], "name": item["actor"]["name"], "type": "user"}
        full = client.get(path, params={"fields": "full"}, headers=admin).json()
        assert [i["event_id"] for i in full["items"]] == [i["event_id"] for i in summary["items"]]
        for whole, short in zip(full["items"], summary["items"], strict=True):
            assert set(whole) == set(Event.model_fields)
            assert whole["details"] == {"ticket": "CHG-1"} and whole["actor"]["ip"] == "10.0.0.7"
            # A summary is the whole event's fields, unchanged.
            assert {k: whole[k] for k in ("event_id", "occurred_at", "action", "target", "outcome")} == {
                k: short[k] for k in ("event_id", "occurred_at", "action", "target", "outcome")
            }
        one = client.get(f"/v1/events/{summary['items'][0]['event_id']}", headers=admin).json()
        assert one == full["items"][0]
    r = client.get("/v1/events", params={"fields": "some"}, headers=admin)
    assert r.status_code == 422


def test_actor_and_environment_mean_the_same_in_the_search_and_the_parameters(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    for params in (
        {"actor": "u-andrea"},
        {"actor": "Andrea Fleet"},
        {"actor": "andrea fleet"},
        {"q": "actor:u-andrea"},
        {"q": 'actor:"ANDREA FLEET"'},
    ):
        assert _ids(client, admin, params) == [0, 2], params
    for params in (
        {"environment": "env-test"},
        {"environment": "Test"},
        {"q": "env:test"},
        {"q": "env:ENV-TEST"},
    ):
        assert _ids(client, admin, params) == [1, 2], params
    assert _ids(client, admin, {"q": "entity:application/billing"}) == [0, 2]
    assert _ids(client, admin, {"entity": "application/Billing", "actor": "Priya Raman"}) == []


def test_a_search_that_matches_nothing_says_what_the_directory_does_not_know(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    body = client.get("/v1/events", params={"q": "env:staging actor:nobody"}, headers=admin).json()
    assert body["items"] == []
    assert body["notes"] == [
        "no environment has the id or name 'staging'",
        "no user has the id or name 'nobody'",
    ]
    body = client.get("/v1/events", params={"q": "env:prod,staging"}, headers=admin).json()
    assert body["items"] == [] and "no environment has the id or name 'prod'" in body["notes"]
    # A search that finds rows carries no notes.
    body = client.get("/v1/events", params={"q": "env:production,staging"}, headers=admin).json()
    assert len(body["items"]) == 1 and "notes" not in body
