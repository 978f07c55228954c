"""The analysts' views: friendly columns over the stored rows, and the data dictionary that names them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directories, Directory
from query_api.settings import ApiSettings
from storage import analyst_view
from storage.store import Store
from stream.batch_ingest import BatchIngestor
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True}
        ],
        "users": [{"id": "u-admin", "name": "Ada Admin", "default_role": "admin"}],
        "environments": [{"id": "env-prod", "name": "Production"}],
        "applications": [{"id": "app-1", "name": "Billing"}],
    }
)


def _event(i: int, **kw: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "occurred_at": f"2026-10-01T08:00:{i:02d}.000Z",
        "infrastructure": "acme",
        "actor": {"id": "u-admin"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-1"},
        **kw,
    }


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return store.engine.query(sql.replace("{db}", store.database))


def test_the_views_have_friendly_columns_and_leave_the_reads_apart(store: Store) -> None:
    embedded = build_embedded(store, api_settings=ApiSettings(), directory=DIRECTORY)
    report = BatchIngestor(store, lambda: Directories([DIRECTORY]), source="api").ingest(
        [
            _event(
                1,
                environment="env-prod",
                related=[{"kind": "environment", "id": "env-prod"}],
                changes=[{"field": "version", "old": "1.2", "new": 3}],
                details={"version_tag": "3"},
            ),
            _event(2, action="application.update", changes=[{"field": "owner", "old": None, "new": "t-1"}]),
        ],
        received_at_ms=1_791_000_000_000,
    )
    assert report.stored == 2
    client = TestClient(embedded.app)
    assert client.get(
        "/v1/events", headers={"Authorization": "Bearer " + make_key(store, "u-admin")}
    ).is_success

    rows = {
        r["event_id"]: r
        for r in _rows(
            store,
            "SELECT toString(event_id) AS event_id, environment, environment_name, actor_name, related, "
            "changes, tupleElement(related[1], 'kind') AS first_kind, reason, "
            "JSONExtractString(details, 'version_tag') AS tag FROM {db}.analyst_events",
        )
    }
    deploy, update = (
        rows["00000000-0000-4000-8000-000000000001"],
        rows["00000000-0000-4000-8000-000000000002"],
    )
    assert len(rows) == 2  # the record of the read above is not a task
    assert (deploy["environment"], deploy["environment_name"], deploy["actor_name"]) == (
        "env-prod",
        "Production",
        "Ada Admin",
    )
    assert (update["environment"], update["environment_name"], update["reason"]) == (None, None, None)
    assert deploy["related"] == [{"kind": "environment", "id": "env-prod", "name": "Production"}]
    assert deploy["first_kind"] == "environment" and deploy["tag"] == "3"
    assert deploy["changes"] == [{"field": "version", "old": '"1.2"', "new": "3"}]
    assert update["changes"] == [{"field": "owner", "old": "null", "new": '"t-1"'}]
    [read] = _rows(store, "SELECT action, actor_id, ingest_source FROM {db}.analyst_log_reads")
    assert (read["action"], read["actor_id"], read["ingest_source"]) == (
        "audit_log.read",
        "u-admin",
        "read-audit",
    )
    # The same columns in the same order in both views, as the dictionary lists them.
    for view in analyst_view.VIEWS:
        described = _rows(
            store,
            "SELECT name, type FROM system.columns "
            f"WHERE database = '{{db}}' AND table = '{view}' ORDER BY position",
        )
        assert [(c["name"], c["type"]) for c in described] == [(c.name, c.type) for c in analyst_view.COLUMNS]


def test_schema_describe_prints_the_data_dictionary_that_the_docs_carry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", "schema", "--describe"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == analyst_view.describe()
    for column in analyst_view.COLUMNS:
        assert f"| `{column.name}` | `{column.type}` |" in out
    doc = (Path(__file__).parent.parent / "docs" / "analyst-views.md").read_text()
    assert analyst_view.describe() in doc
