"""Every read is on record before it is answered; an export, when it starts and when it ends."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from auditlog.embedded import Embedded, build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True},
            {"id": "viewer", "name": "Viewer", "app_level": "list"},
        ],
        "users": [
            {"id": "ada", "name": "Ada", "default_role": "admin"},
            {"id": "dev", "name": "Dev", "default_role": "viewer"},
        ],
    }
)


def _event(n: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": f"2026-03-01T10:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "infrastructure": "acme",
        "actor": {"id": "ada"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": f"app-{n % 7}"},
    }


class Install:
    def __init__(self, store: Store, **settings: Any) -> None:
        self.store = store
        self.embedded: Embedded = build_embedded(
            store, api_settings=ApiSettings(export_chunk_rows=100, **settings), directory=DIRECTORY
        )
        self.client = TestClient(self.embedded.app)
        self.ada = {"Authorization": f"Bearer {make_key(store, 'ada', can_ingest=True)}"}
        self.dev = {"Authorization": f"Bearer {make_key(store, 'dev')}"}

    def reads_by(self, user: str) -> list[dict[str, Any]]:
        """The record, read from the table itself: no API call that would add to it."""
        return self.store.engine.query(
            f"SELECT action, details FROM {self.store.database}.audit_events "
            "WHERE startsWith(action, 'audit_log.') AND actor_id = {u:String} ORDER BY occurred_at",
            params={"u": user},
        )


def test_a_read_is_on_record_when_its_answer_arrives(store: Store) -> None:
    inst = Install(store)
    assert inst.client.get("/v1/events", params={"q": "kind:role"}, headers=inst.dev).status_code == 200
    [read] = inst.reads_by("dev")
    assert read["action"] == "audit_log.read" and '"kind:role"' in read["details"]
    assert inst.client.get("/v1/users/ada/activity", headers=inst.dev).status_code == 403
    assert len(inst.reads_by("dev")) == 2  # the refusal too


def test_concurrent_reads_are_all_recorded_in_shared_writes(store: Store) -> None:
    inst = Install(store)
    inserts = 0
    real = inst.embedded.services.ingestor.ingest

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal inserts
        inserts += 1
        return real(*args, **kwargs)

    inst.embedded.services.ingestor.ingest = counting  # type: ignore[method-assign]
    codes: list[int] = []

    def read() -> None:
        codes.append(inst.client.get("/v1/events", headers=inst.dev).status_code)

    threads = [threading.Thread(target=read) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 24
    assert len(inst.reads_by("dev")) == 24
    assert inserts <= 24


def test_a_read_that_cannot_be_recorded_is_refused(store: Store) -> None:
    inst = Install(store)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    inst.embedded.services.ingestor.ingest = broken  # type: ignore[method-assign]
    r = inst.client.get("/v1/events", headers=inst.dev)
    assert r.status_code == 503 and "could not be recorded" in r.json()["detail"]
    assert inst.client.get("/v1/events/export", headers=inst.dev).status_code == 503
    assert inst.embedded.services.auditor is not None and inst.embedded.services.auditor.not_recorded == 2


def test_failing_open_answers_and_says_so(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    inst = Install(store, audit_fail_open=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    inst.embedded.services.ingestor.ingest = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="auditlog.read_audit"):
        assert inst.client.get("/v1/events", headers=inst.dev).status_code == 200
    assert "answered without its record" in caplog.text


def test_an_export_is_recorded_when_it_starts_and_when_it_ends(store: Store) -> None:
    inst = Install(store)
    assert (
        inst.client.post("/v1/events", json=[_event(n) for n in range(450)], headers=inst.ada).status_code
        == 200
    )
    body = inst.client.get("/v1/events/export", params={"format": "ndjson"}, headers=inst.dev).content
    assert len(body.splitlines()) == 450
    started, ended = inst.reads_by("dev")
    assert '"phase":"started"' in started["details"]
    assert '"phase":"ended"' in ended["details"] and '"completed":true' in ended["details"]
    assert '"returned":450' in ended["details"]


def test_an_export_cut_short_by_the_client_is_recorded_as_incomplete(store: Store) -> None:
    inst = Install(store)
    assert (
        inst.client.post("/v1/events", json=[_event(n) for n in range(900)], headers=inst.ada).status_code
        == 200
    )
    with inst.client.stream("GET", "/v1/events/export", headers=inst.dev) as r:
        assert r.status_code == 200
        first = next(r.iter_bytes())
        assert first
    # The client went away after the first chunk; the server closes the export when it notices.
    deadline = time.monotonic() + 10
    while len(records := inst.reads_by("dev")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(records) == 2, records
    ended = records[1]["details"]
    assert '"phase":"ended"' in ended and '"completed":false' in ended
    assert '"returned":900' not in ended


def test_failed_authentication_is_logged_without_the_secret_and_counted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Install(store)
    secret = "alk_" + "s3cret" * 7
    with caplog.at_level(logging.WARNING, logger="auditlog.auth"):
        assert inst.client.get("/v1/events", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
        assert inst.client.get("/v1/events").status_code == 401
        assert inst.client.post("/ui/login", data={"api_key": secret, "next": ""}).status_code == 401
    assert inst.embedded.services.failed_auth.count == 3
    assert secret not in caplog.text and "s3cret" not in caplog.text
    assert "unknown, revoked or expired key (id " in caplog.text and "no credentials" in caplog.text
