"""The retention API: a policy, legal holds and purges of the caller's infrastructure, for its
administrators only, each change and each purge an event of the log."""

from __future__ import annotations

from typing import Any

import pytest

from storage.store import Store
from tests.test_admin_api import Install, auth


@pytest.fixture
def install(store: Store) -> Install:
    return Install(store)


def _actions(install: Install, key: str, action: str) -> list[dict[str, Any]]:
    r = install.client.get("/v1/events", params={"action": action, "fields": "full"}, headers=auth(key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _targets(install: Install, key: str) -> list[str]:
    r = install.client.get("/v1/events", params={"action": "application.deploy"}, headers=auth(key))
    return sorted(i["target"]["id"] for i in r.json()["items"])


def test_only_administrators_reach_retention(install: Install) -> None:
    c, dev = install.client, auth(install.dev)
    assert c.get("/v1/retention", headers=dev).status_code == 403
    assert c.put("/v1/retention", json={"default_days": 30}, headers=dev).status_code == 403
    assert c.post("/v1/retention/purge", headers=dev).status_code == 403
    assert c.get("/v1/legal-holds", headers=dev).status_code == 403
    assert c.post("/v1/legal-holds", json={"name": "x"}, headers=dev).status_code == 403
    assert c.get("/v1/retention").status_code == 401


def test_policy_holds_and_purges_through_the_api(install: Install) -> None:
    c, admin = install.client, auth(install.admin)
    assert c.get("/v1/retention", headers=admin).json()["policy"] is None

    r = c.put(
        "/v1/retention",
        json={"default_days": 30, "rules": [{"environment": "env-x", "days": 9}]},
        headers=admin,
    )
    assert r.status_code == 400 and "env-x" in r.json()["detail"]
    r = c.put("/v1/retention", json={"default_days": 0}, headers=admin)
    assert r.status_code == 422
    policy = {"default_days": 30, "rules": [{"entity_kind": "user", "days": 3650}]}
    r = c.put("/v1/retention", json=policy, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["default_days"] == 30 and r.json()["policy"]["updated_by"] == "admin"
    [update] = _actions(install, install.admin, "audit_log.retention_update")
    assert update["details"]["before"] is None and update["details"]["after"]["default_days"] == 30

    # A hold on app-1: its row is kept, app-2's goes. Bad holds say what is wrong.
    assert (
        c.post("/v1/legal-holds", json={"name": "x", "entity": "nonsense"}, headers=admin).status_code == 422
    )
    r = c.post(
        "/v1/legal-holds",
        json={"name": "x", "since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        headers=admin,
    )
    assert r.status_code == 400 and "before" in r.json()["detail"]
    r = c.post("/v1/legal-holds", json={"name": "case 42", "entity": "application/app-1"}, headers=admin)
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["rows_covered"] == 1 and hold["active"] and hold["created_by"] == "admin"
    assert [
        e["details"]["hold"]["hold_id"]
        for e in _actions(install, install.admin, "audit_log.legal_hold_create")
    ] == [hold["hold_id"]]

    # A dry run (the default) removes nothing.
    r = c.post("/v1/retention/purge", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["dry_run"] and r.json()["rows"] == 1 and r.json()["held_rows"] == 1
    assert _targets(install, install.admin) == ["app-1", "app-2"]

    r = c.post("/v1/retention/purge", params={"dry_run": "false"}, headers=admin)
    assert r.status_code == 200, r.text
    purge = r.json()
    assert purge["rows"] == 1 and not purge["dry_run"] and purge["purge_id"]
    assert _targets(install, install.admin) == ["app-1"]
    [record] = _actions(install, install.admin, "audit_log.purge")
    assert record["event_id"] == purge["purge_id"] and record["actor"]["type"] == "system"
    assert record["details"]["rows"] == 1 and record["details"]["requested_by"] == "admin"
    [listed] = c.get("/v1/retention", headers=admin).json()["purges"]
    assert listed["purge_id"] == purge["purge_id"] and listed["purged_rows"] == 1
    # Another infrastructure's rows and holds are its own.
    globex = auth(install.globex_admin)
    assert _targets(install, install.globex_admin) == ["app-1"]
    assert c.get("/v1/legal-holds", headers=globex).json() == []
    assert c.delete(f"/v1/legal-holds/{hold['hold_id']}", headers=globex).status_code == 404

    # Lifted, the hold keeps nothing; lifting again is a conflict.
    r = c.delete(f"/v1/legal-holds/{hold['hold_id']}", headers=admin)
    assert r.status_code == 200 and not r.json()["active"] and r.json()["lifted_by"] == "admin"
    assert c.delete(f"/v1/legal-holds/{hold['hold_id']}", headers=admin).status_code == 409
    assert len(_actions(install, install.admin, "audit_log.legal_hold_lift")) == 1
    assert c.get("/v1/legal-holds", headers=admin).json() == []
    assert len(c.get("/v1/legal-holds", params={"include_lifted": "true"}, headers=admin).json()) == 1
    r = c.post("/v1/retention/purge", params={"dry_run": "false"}, headers=admin)
    assert r.json()["rows"] == 1 and _targets(install, install.admin) == []
    # The record of retention itself is never purged.
    assert len(_actions(install, install.admin, "audit_log.purge")) == 2
