"""Golden-file tests of the pure steps: input events + directory -> stored rows.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_steps_golden.py`
and review the diff of tests/golden/rows_out.ndjson like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from producers.contract.directory import Directories, Directory, load_directory
from producers.contract.event import InvalidEvent, parse_event
from storage.record import ENRICHED_COLUMNS
from stream.messages import Lineage
from stream.transform import canonical_action, normalize, process

GOLDEN = Path(__file__).parent / "golden"
LINEAGE = Lineage(source="kafka", received_at_ms=1_792_000_000_123, topic="audit.raw", partition=2, offset=41)


def _run(directory: Directory) -> bytes:
    lines = (GOLDEN / "events_in.ndjson").read_bytes().splitlines()
    served = Directories([directory])
    rows = [process(parse_event(orjson.loads(line)), served, LINEAGE) for line in lines if line.strip()]
    assert all(tuple(r) == ENRICHED_COLUMNS for r in rows), "enrich must emit every stored column, in order"
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
    rebuilt = Directory.from_snapshots(directory.snapshots(), infrastructure=directory.infrastructure)
    assert _run(rebuilt) == _run(directory)


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
        for r in (process(parse_event(orjson.loads(x)), Directories([directory]), LINEAGE) for x in lines)
    }
    deploy = rows["1"]
    assert deploy["occurred_at"] == "2026-10-01 06:15:30.123"  # +02:00 to UTC, truncated to ms
    assert deploy["actor_name"] == "Andrea Fleet"  # the directory's name wins over the producer's
    assert deploy["target_name"] == "Billing Portal"
    assert deploy["app_team_id"] == "t-payments"
    assert deploy["related_ids"] == ["env-prod"]  # duplicates and the target itself removed
    assert deploy["environment"] == "env-prod"
    assert deploy["scope_key"] == "app:app-billing"
    # A plan's row names the plan: what it requires is resolved against the directory when read.
    # Its applications at ingest are kept for reading, from the directory when it knows the plan...
    assert rows["2"]["plan_app_ids"] == ["app-billing", "app-ledger"]
    assert rows["2"]["scope_key"] == "plan:plan-q4"
    # ... or, for a plan the directory does not know yet, from the event's related applications.
    assert rows["3"]["plan_app_ids"] == ["app-billing", "app-x"]
    assert rows["4"]["scope_key"] == "plan:plan-empty"
    assert rows["5"]["scope_key"] == "team:t-payments"
    for key in "6789":
        assert rows[key]["scope_key"] == "infra"
    assert rows["7"]["actor_ip"] == "10.0.0.1"  # IPv4-mapped IPv6 shown as IPv4
    assert rows["a"]["actor_name"] == "Former Employee"  # unknown to the directory: the event's name
    assert rows["a"]["target_name"] == "Retired App"
    assert rows["1"]["received_at"] == "2026-10-14 17:46:40.123"


def test_an_infrastructure_not_served_is_a_reject() -> None:
    directory = load_directory(GOLDEN / "directory.yaml")
    line = (GOLDEN / "events_in.ndjson").read_bytes().splitlines()[0]
    event = parse_event({**orjson.loads(line), "infrastructure": "globex-other-tenant"})
    with pytest.raises(InvalidEvent, match="'globex-other-tenant' is not served by this installation") as err:
        process(event, Directories([directory]), LINEAGE)
    assert "served: acme" in err.value.reason
    assert [e.field for e in err.value.errors] == ["infrastructure"]
