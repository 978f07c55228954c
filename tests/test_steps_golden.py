"""Golden-file tests of the pure steps: input events + directory -> stored rows.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_steps_golden.py`
and review the diff of tests/golden/rows_out.ndjson like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from producers.contract import parse_event
from producers.directory import Directory, load_directory
from stream.steps import Lineage, canonical_action, normalize, process

GOLDEN = Path(__file__).parent / "golden"
LINEAGE = Lineage(source="kafka", received_at_ms=1_790_000_000_123, topic="audit.raw", partition=2, offset=41)


def _run(directory: Directory) -> bytes:
    lines = (GOLDEN / "events_in.ndjson").read_bytes().splitlines()
    rows = [process(parse_event(orjson.loads(line)), directory, LINEAGE) for line in lines if line.strip()]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def test_rows_match_golden_file() -> None:
    out = _run(load_directory(GOLDEN / "directory.yaml"))
    golden = GOLDEN / "rows_out.ndjson"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_bytes(out)
    assert out == golden.read_bytes()


def test_replay_gives_identical_rows() -> None:
    directory = load_directory(GOLDEN / "directory.yaml")
    assert _run(directory) == _run(directory)
    # A directory rebuilt from its own snapshots enriches identically.
    assert _run(Directory.from_snapshots(directory.snapshots())) == _run(directory)


def test_normalize_is_idempotent() -> None:
    for line in (GOLDEN / "events_in.ndjson").read_bytes().splitlines():
        once = normalize(parse_event(orjson.loads(line)))
        assert normalize(once) == once


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Application.Deploy", "application.deploy"),
        ("app.deploy", "application.deploy"),
        ("plan.execute", "deployment_plan.execute"),
        ("deployment-plan.create", "deployment_plan.create"),
        ("DeploymentPlan.Abort", "deployment_plan.abort"),
        ("env.sync", "environment.sync"),
        ("infra.license_update", "infrastructure.license_update"),
        ("user.password reset", "user.password_reset"),
        ("team.member--add", "team.member_add"),
        (" role.update ", "role.update"),
    ],
)
def test_canonical_action(raw: str, canonical: str) -> None:
    assert canonical_action(raw) == canonical


def test_enrichment_details() -> None:
    directory = load_directory(GOLDEN / "directory.yaml")
    lines = (GOLDEN / "events_in.ndjson").read_bytes().splitlines()
    rows = {
        r["event_id"][-1]: r
        for r in (process(parse_event(orjson.loads(x)), directory, LINEAGE) for x in lines)
    }
    deploy = rows["1"]
    assert deploy["occurred_at"] == "2026-10-01 06:15:30.123"  # +02:00 to UTC, truncated to ms
    assert deploy["actor_name"] == "Andrea Fleet"  # the directory's name wins over the producer's
    assert deploy["target_name"] == "Billing Portal"
    assert deploy["app_team_id"] == "t-payments"
    assert deploy["related_ids"] == ["env-prod"]  # duplicates and the target itself removed
    assert deploy["environment"] == "env-prod"
    assert deploy["read_scope"] == ["app:app-billing"]
    # A plan known to the directory needs List on every one of its applications.
    assert rows["2"]["plan_app_ids"] == ["app-billing", "app-ledger"]
    assert rows["2"]["read_scope"] == ["app:app-billing", "app:app-ledger"]
    # A plan the directory does not know yet: its related applications stand in.
    assert rows["3"]["read_scope"] == ["app:app-billing", "app:app-x"]
    # An empty plan needs Manage Infrastructure and Users.
    assert rows["4"]["read_scope"] == ["infra"]
    assert rows["5"]["read_scope"] == ["team:t-payments"]
    for key in "6789":
        assert rows[key]["read_scope"] == ["infra"]
    assert rows["7"]["actor_ip"] == "10.0.0.1"  # IPv4-mapped IPv6 shown as IPv4
    assert rows["a"]["actor_name"] == "Former Employee"  # unknown to the directory: the event's name
    assert rows["a"]["target_name"] == "Retired App"
    assert rows["1"]["received_at"] == "2026-09-21 14:13:20.123"
