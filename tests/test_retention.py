"""Retention with legal holds: what a purge removes, what it keeps, how it is recorded, and that
`auditlog verify` tells a purge from a deletion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from auditlog.verify_store import LogReport, verify_log
from producers.contract.directory import Directories, load_directory
from producers.contract.tlog.note import Signer
from query_api.read_audit import ReadAuditor
from storage.retention import LegalHold, Policy, Rule
from storage.store import Store
from stream.batch_ingest import BatchIngestor
from stream.checkpointer import Checkpointer
from tests.test_tlog import GOLDEN, _cli

NOW = datetime(2027, 1, 15, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
POLICY = Policy(default_days=365, rules=(Rule(days=2555, environment="env-prod"),))


def _served() -> Directories:
    directory = load_directory(GOLDEN / "directory.yaml")
    return Directories([directory.model_copy(update={"infrastructure": "acme"})])


def _event(
    n: int, when: str, *, env: str | None, actor: str = "u-priya", infra: str = "acme"
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=50_000 + n)),
        "occurred_at": when,
        "infrastructure": infra,
        "actor": {"id": actor},
        "action": "application.deploy",
        "target": {"kind": "application", "id": f"app-{n % 3}"},
        "details": {"n": n},
    }
    if env is not None:
        event["environment"] = env
    return event


# Months two years old: one of development rows only, one mixed; and recent rows.
OLD_DEV = [_event(i, f"2025-01-{10 + i:02d}T10:00:00Z", env="env-dev") for i in range(6)]
MIXED = [
    _event(10 + i, f"2025-02-{10 + i:02d}T10:00:00Z", env="env-prod" if i % 2 else None) for i in range(6)
]
RECENT = [_event(20 + i, f"2026-12-{10 + i:02d}T10:00:00Z", env=None) for i in range(4)]


def _ingest(store: Store, events: list[dict[str, Any]]) -> BatchIngestor:
    ingestor = BatchIngestor(store, _served, source="api")
    report = ingestor.ingest(events, received_at_ms=NOW_MS)
    assert report.stored == len(events) and not report.rejected, report.rejected
    return ingestor


def _auditor(store: Store) -> ReadAuditor:
    return ReadAuditor(BatchIngestor(store, _served, source="api"))


def _record(auditor: ReadAuditor) -> Any:
    def record(infrastructure: str, details: dict[str, Any]) -> str:
        return auditor.record_system(
            infrastructure, actor_id="auditlog-retention", action="audit_log.purge", details=details
        )

    return record


def _ids(store: Store, where: str = "1") -> set[str]:
    rows = store.engine.query(
        f"SELECT toString(event_id) AS id FROM {store.database}.audit_events "
        f"WHERE action = 'application.deploy' AND {where}"
    )
    return {r["id"] for r in rows}


def _verify(store: Store, signer: Signer) -> LogReport:
    return verify_log(store.tree, "local", verifiers=[signer.verifier], origin="auditlog", anchor_dir=None)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("auditlog")


def test_a_purge_removes_what_its_rules_expired_and_verify_calls_it_expired(
    store: Store, signer: Signer
) -> None:
    _ingest(store, OLD_DEV + MIXED + RECENT)
    Checkpointer(store.tree, signer, origin="auditlog", anchor_dir=None).run()
    store.retention.set_policy("acme", POLICY, by="u-priya", now_ms=NOW_MS)

    plan, result = store.retention.purge(NOW_MS, record=_record(_auditor(store)))

    gone = {e["event_id"] for e in OLD_DEV + MIXED if e.get("environment") != "env-prod"}
    kept = {e["event_id"] for e in MIXED + RECENT} - gone
    assert _ids(store) == kept
    assert plan.rows("acme") == len(gone) == result.purged["acme"]
    # A month of nothing but expired rows goes as whole parts; the mixed one by a mutation.
    assert result.partitions_dropped == ["202501"] and result.partitions_mutated == ["202502"]
    assert {(line.rule, line.month) for line in plan.lines} == {
        ("default (365 days)", "202501"),
        ("default (365 days)", "202502"),
    }
    # Their change-log rows went with them; the kept ones' stayed.
    index = store.engine.query(
        f"SELECT DISTINCT toString(event_id) AS id FROM {store.database}.audit_entity_index "
        "WHERE action = 'application.deploy'"
    )
    assert {r["id"] for r in index} == kept
    # The purge is an event of the log, and lists what it removed by rule.
    [purge] = store.retention.purges("acme")
    assert purge["purged_rows"] == len(gone) and purge["plan"]["rows"] == len(gone)
    assert purge["plan"]["policy"] == POLICY.to_json()
    # The tree still verifies: the removed rows are expired, not deleted.
    Checkpointer(store.tree, signer, origin="auditlog", anchor_dir=None).run()
    report = _verify(store, signer)
    assert report.findings == [] and report.expired == len(gone)
    # A replay of a purged event is a duplicate, never a new row.
    again = BatchIngestor(store, _served, source="api").ingest(OLD_DEV[:2], received_at_ms=NOW_MS)
    assert again.duplicates == 2 and again.stored == 0
    # Nothing left to purge: a second run removes nothing and records nothing.
    plan2, result2 = store.retention.purge(NOW_MS, record=_record(_auditor(store)))
    assert plan2.lines == [] and result2.purged == {}
    assert len(store.retention.purges("acme")) == 1


def test_a_legal_hold_keeps_what_it_covers_until_it_is_lifted(store: Store) -> None:
    held_actor = [
        _event(30 + i, f"2025-01-{10 + i:02d}T12:00:00Z", env="env-dev", actor="u-lee") for i in range(3)
    ]
    _ingest(store, OLD_DEV + held_actor)
    store.retention.set_policy("acme", POLICY, by="u-priya", now_ms=NOW_MS)
    hold = store.retention.create_hold(
        LegalHold(
            hold_id="hold-1", infrastructure="acme", name="case 42", reason="litigation",
            created_at_ms=NOW_MS, created_by="u-priya", actor="u-lee",
        )
    )  # fmt: skip
    # A hold of another infrastructure covers nothing here.
    store.retention.create_hold(
        LegalHold(
            hold_id="hold-x",
            infrastructure="other",
            name="x",
            reason="",
            created_at_ms=NOW_MS,
            created_by="a",
        )
    )
    plan, result = store.retention.purge(NOW_MS, record=_record(_auditor(store)))
    assert plan.held == {"acme": 3} and result.purged == {"acme": len(OLD_DEV)}
    assert _ids(store) == {e["event_id"] for e in held_actor}
    # The month still holds the held rows: removed by a mutation, not dropped.
    assert result.partitions_dropped == [] and result.partitions_mutated == ["202501"]

    lifted = store.retention.lift_hold("acme", hold.hold_id, by="u-priya", now_ms=NOW_MS + 1)
    assert lifted is not None and not lifted.active and lifted.lifted_by == "u-priya"
    assert [h.hold_id for h in store.retention.holds("acme")] == []
    assert [h.hold_id for h in store.retention.holds("acme", include_lifted=True)] == ["hold-1"]
    _, result = store.retention.purge(NOW_MS, record=_record(_auditor(store)))
    assert result.purged == {"acme": 3} and _ids(store) == set()


def test_holds_by_entity_environment_and_time_range(store: Store) -> None:
    _ingest(store, OLD_DEV + MIXED)
    store.retention.set_policy("acme", Policy(default_days=30), by="u-priya", now_ms=NOW_MS)
    base: dict[str, Any] = {
        "infrastructure": "acme",
        "reason": "",
        "created_at_ms": NOW_MS,
        "created_by": "u-priya",
    }
    store.retention.create_hold(LegalHold(hold_id="e", name="entity", entity="application/app-1", **base))
    store.retention.create_hold(LegalHold(hold_id="v", name="env", environment="env-prod", **base))
    since = int(datetime(2025, 1, 12, tzinfo=UTC).timestamp() * 1000)
    until = int(datetime(2025, 1, 14, tzinfo=UTC).timestamp() * 1000)
    store.retention.create_hold(LegalHold(hold_id="t", name="range", since_ms=since, until_ms=until, **base))
    store.retention.purge(NOW_MS, record=_record(_auditor(store)))

    def covered(e: dict[str, Any]) -> bool:
        ms = int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000)
        return e["target"]["id"] == "app-1" or e.get("environment") == "env-prod" or since <= ms < until

    assert _ids(store) == {e["event_id"] for e in OLD_DEV + MIXED if covered(e)}


def test_infrastructures_without_a_policy_and_the_records_of_retention_are_kept(store: Store) -> None:
    other = [_event(40 + i, f"2024-03-{10 + i:02d}T10:00:00Z", env=None, infra="globex") for i in range(3)]
    directory = load_directory(GOLDEN / "directory.yaml")
    served = Directories([directory.model_copy(update={"infrastructure": i}) for i in ("acme", "globex")])
    assert (
        BatchIngestor(store, lambda: served, source="api")
        .ingest(other + OLD_DEV, received_at_ms=NOW_MS)
        .stored
        == 9
    )
    auditor = _auditor(store)
    auditor.record_system("acme", actor_id="auditlog-retention", action="audit_log.purge", details={"old": 1})
    # Years later, with a policy of a day: the old purge's record is long past it, and kept.
    later = NOW_MS + 5 * 365 * 86_400_000
    store.retention.set_policy("acme", Policy(default_days=1), by="u-priya", now_ms=NOW_MS)
    store.retention.purge(later, record=_record(auditor))
    assert _ids(store) == {e["event_id"] for e in other}
    purges = store.engine.query(
        f"SELECT count() AS n FROM {store.database}.audit_events WHERE action = 'audit_log.purge'"
    )
    assert int(purges[0]["n"]) == 2  # the old record kept, the new one added


def test_nothing_is_removed_when_the_purge_cannot_be_recorded(store: Store) -> None:
    _ingest(store, OLD_DEV)
    store.retention.set_policy("acme", POLICY, by="u-priya", now_ms=NOW_MS)

    def refuse(infrastructure: str, details: dict[str, Any]) -> str:
        raise RuntimeError("the log did not take it")

    with pytest.raises(RuntimeError):
        store.retention.purge(NOW_MS, record=refuse)
    assert _ids(store) == {e["event_id"] for e in OLD_DEV}
    dry, result = store.retention.purge(NOW_MS, record=refuse, dry_run=True)
    assert dry.rows("acme") == len(OLD_DEV) and result.purged == {}
    assert _ids(store) == {e["event_id"] for e in OLD_DEV}


def test_a_deletion_dressed_as_a_purge_is_still_a_deletion(store: Store, signer: Signer) -> None:
    _ingest(store, OLD_DEV + RECENT)
    Checkpointer(store.tree, signer, origin="auditlog", anchor_dir=None).run()
    db = store.database
    victim, recent = OLD_DEV[0]["event_id"], RECENT[0]["event_id"]
    # Tombstones written by hand: one naming a purge that is no event of the log, one with a
    # cutoff its (recent) row is not older than, under a purge that is on record.
    auditor = _auditor(store)
    real = auditor.record_system("acme", actor_id="auditlog-retention", action="audit_log.purge", details={})
    for event_id, purge_id, cutoff in (
        (victim, str(uuid.uuid4()), "2030-01-01"),
        (recent, real, "2026-01-01"),
    ):
        store.engine.command(
            f"INSERT INTO {db}.purged_rows SELECT log, leaf_index, event_id, occurred_at, infrastructure, "
            "'default (1 days)', toDateTime64({c:String}, 3, 'UTC'), toUUID({p:String}) "
            f"FROM {db}.audit_events WHERE event_id = toUUID({{id:String}})",
            params={"id": event_id, "p": purge_id, "c": cutoff},
        )
        store.engine.command(
            f"ALTER TABLE {db}.audit_events DELETE WHERE event_id = toUUID({{id:String}}) "
            "SETTINGS mutations_sync = 2",
            params={"id": event_id},
        )
    report = _verify(store, signer)
    found = {f.event_id: f for f in report.findings}
    assert {f.kind for f in report.findings} == {"deleted"} and set(found) == {victim, recent}
    assert "no audit_log.purge event" in found[victim].detail
    assert "older than its cutoff" in found[recent].detail
    assert report.expired == 0


def test_a_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="1 to 36500"):
        Policy(default_days=0)
    with pytest.raises(ValueError, match="names an environment"):
        Policy(default_days=10, rules=(Rule(days=5),))
    rule = Rule(days=90, environment="env-dev", entity_kind="user")
    assert Policy.from_json(Policy(None, (rule,)).to_json()) == Policy(None, (rule,))


def test_the_command_line_sets_shows_and_purges_and_verify_agrees(tmp_path: Path) -> None:
    folder, anchor, events = tmp_path / "data", tmp_path / "tlog", tmp_path / "events.ndjson"
    old = [
        _event(60 + i, f"2026-06-{10 + i:02d}T10:00:00Z", env="env-prod" if i % 2 else None) for i in range(8)
    ]
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in old))
    where = ["--store", str(folder)]
    run = _cli("directory", "load", *where, "--infrastructure", "acme", str(GOLDEN / "directory.yaml"))
    assert run.returncode == 0, run.stderr
    assert _cli("ingest", *where, str(events), anchor=anchor).returncode == 0
    run = _cli(
        "retention",
        "set",
        *where,
        "--infrastructure",
        "acme",
        "--default-days",
        "30",
        "--rule",
        "environment=env-typo:90",
    )
    assert run.returncode == 2 and "env-typo" in run.stderr
    run = _cli(
        "retention",
        "set",
        *where,
        "--infrastructure",
        "acme",
        "--default-days",
        "30",
        "--rule",
        "environment=env-prod:3650",
    )
    assert run.returncode == 0, run.stderr
    run = _cli("retention", "show", *where)
    lines = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert lines[0]["policy"]["rules"] == [{"days": 3650, "environment": "env-prod"}]
    assert lines[-1]["due"]["rows"] == 4
    run = _cli("retention", "purge", *where, "--dry-run")
    assert orjson.loads(run.stdout)["planned"] == {"acme": 4} and orjson.loads(run.stdout)["purged"] == {}
    run = _cli("retention", "purge", *where, anchor=anchor)
    assert run.returncode == 0, run.stderr
    assert orjson.loads(run.stdout)["purged"] == {"acme": 4}
    assert _cli("checkpoint", *where, "--checkpoint-dir", str(anchor)).returncode == 0
    run = _cli("verify", *where, "--checkpoint-dir", str(anchor))
    assert run.returncode == 0, run.stdout + run.stderr
    [local] = [r for r in map(orjson.loads, run.stdout.splitlines()) if r["log"] == "local"]
    assert local["expired"] == 4 and local["ok"]


def test_a_hold_placed_while_a_purge_runs_keeps_what_it_covers(store: Store) -> None:
    _ingest(store, OLD_DEV)
    store.retention.set_policy("acme", POLICY, by="u-priya", now_ms=NOW_MS)
    plan = store.retention.plan(NOW_MS)
    assert plan.rows("acme") == len(OLD_DEV)
    # Placed after the plan was made and recorded, before the rows are removed.
    store.retention.create_hold(
        LegalHold(
            hold_id="late", infrastructure="acme", name="late", reason="", created_at_ms=NOW_MS,
            created_by="u-priya", entity="application/app-1",
        )
    )  # fmt: skip
    purge_id = _auditor(store).record_system(
        "acme", actor_id="auditlog-retention", action="audit_log.purge", details=plan.details("acme")
    )
    result = store.retention.execute(plan, {"acme": purge_id})
    kept = {e["event_id"] for e in OLD_DEV if e["target"]["id"] == "app-1"}
    assert kept and _ids(store) == kept and result.purged == {"acme": len(OLD_DEV) - len(kept)}
