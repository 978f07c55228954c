"""The demo's generated installation and events, and `auditlog demo` seeding and reusing a store."""

from __future__ import annotations

import argparse
import io
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from auditlog import demo
from auditlog.demo_data import (
    ANDREA,
    ANDREA_APPS,
    DEVELOPER,
    INFRASTRUCTURE_ID,
    NO_ACCESS,
    PERSONAS,
    PRIYA,
    TEAM_MANAGER,
    TOMAS,
    TOMAS_TEAMS,
    build_directory,
    generate_events,
)
from producers.contract.directory import Directories, Directory
from producers.contract.event import ENTITY_KINDS, parse_event
from producers.contract.permissions import Caller, ReadScope, scope_for
from storage.store import Store
from stream.batch_ingest import BatchIngestor
from stream.messages import Lineage
from stream.transform import process

END = datetime(2026, 3, 2, 17, 30, 12, 345000, tzinfo=UTC)
SEED = 7

EXPECTED_ACTIONS = {
    "application": {
        "create",
        "publish",
        "deploy",
        "update",
        "delete",
        "tag_version",
        "open_debug",
        "set_permission",
    },
    "deployment_plan": {"create", "update", "execute", "abort", "delete"},
    "user": {"create", "update", "deactivate", "login", "password_reset", "role_change"},
    "team": {"create", "update", "member_add", "member_remove", "application_add"},
    "role": {"create", "update", "delete"},
    "environment": {"register", "update", "configure", "sync"},
    "infrastructure": {"update", "configure", "license_update", "backup"},
}


@pytest.fixture(scope="module")
def directory() -> Directory:
    return build_directory(SEED)


@pytest.fixture(scope="module")
def events(directory: Directory) -> list[dict[str, Any]]:
    return list(generate_events(directory, count=6000, days=90, seed=SEED, end=END))


@pytest.fixture(scope="module")
def rows(directory: Directory, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lineage = Lineage(source="test", received_at_ms=int(END.timestamp() * 1000))
    return [process(parse_event(e), Directories([directory]), lineage) for e in events]


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


# -- the directory --------------------------------------------------------------------------


def test_directory_is_a_realistic_installation(directory: Directory) -> None:
    assert {"env-dev", "env-test", "env-qa", "env-prod"} <= set(directory.environments)
    assert [e.name for e in directory.environments.values()][:3] == ["Development", "Test", "Quality"]
    assert list(directory.infrastructures) == ["acme-prod-infra"]
    names = {r.name: r for r in directory.roles.values()}
    assert names["Administrator"].app_level == "full_control"
    assert names["Administrator"].manage_infrastructure and names["Administrator"].manage_teams
    assert names["Developer"].app_level == "change_deploy" and not names["Developer"].manage_teams
    assert names["Team Manager"].manage_teams and not names["Team Manager"].manage_infrastructure
    assert names["No Access"].app_level == "none"
    assert len(directory.teams) >= 10
    assert len(directory.applications) == 60
    assert all(a.team in directory.teams for a in directory.applications.values())
    sizes = sorted(len(p.applications) for p in directory.deployment_plans.values())
    assert sizes[0] == 0 and sizes[1] >= 1 and sizes[-1] <= 5
    assert sum(1 for s in sizes if s) == 15
    assert all(
        a in directory.applications for p in directory.deployment_plans.values() for a in p.applications
    )
    assert 35 <= len(directory.users) <= 45


def test_personas_have_the_intended_grants(directory: Directory) -> None:
    andrea = directory.users[ANDREA]
    assert andrea.name == "Andrea Fleet"
    assert andrea.default_role == NO_ACCESS and andrea.team_roles == {}
    assert andrea.app_roles == {a: DEVELOPER for a in ANDREA_APPS} and len(ANDREA_APPS) == 3
    assert all(a in directory.applications for a in ANDREA_APPS)

    tomas = directory.users[TOMAS]
    assert tomas.default_role == NO_ACCESS and tomas.team_roles == {t: TEAM_MANAGER for t in TOMAS_TEAMS}
    assert directory.roles[directory.users[PRIYA].default_role or ""].name == "Administrator"
    assert [p[0] for p in PERSONAS] == [PRIYA, TOMAS, ANDREA]

    def caller(user_id: str) -> ReadScope:
        return scope_for(Caller(user_id=user_id, infrastructure=INFRASTRUCTURE_ID), Directories([directory]))

    andrea_scope = caller(ANDREA)
    assert andrea_scope.apps == frozenset(ANDREA_APPS)
    assert not (andrea_scope.infra or andrea_scope.all_apps or andrea_scope.all_teams or andrea_scope.teams)
    tomas_scope = caller(TOMAS)
    assert tomas_scope.teams == frozenset(TOMAS_TEAMS) and not tomas_scope.infra
    assert tomas_scope.apps == {a.id for a in directory.applications.values() if a.team in TOMAS_TEAMS}
    assert caller(PRIYA).sees_everything


def test_directory_is_deterministic() -> None:
    assert build_directory(SEED) == build_directory(SEED)


# -- the events -------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed(directory: Directory, events: list[dict[str, Any]]) -> None:
    again = list(generate_events(directory, count=6000, days=90, seed=SEED, end=END))
    assert again == events
    other = list(generate_events(directory, count=6000, days=90, seed=SEED + 1, end=END))
    assert len(other) == 6000
    assert {e["event_id"] for e in other}.isdisjoint({e["event_id"] for e in events})
    assert [e["action"] for e in other] != [e["action"] for e in events]


def test_generates_exactly_count_events_even_when_tiny(directory: Directory) -> None:
    assert len(list(generate_events(directory, count=5, days=1, seed=1, end=END))) == 5
    assert list(generate_events(directory, count=0, days=3, seed=1, end=END)) == []


def test_every_event_passes_the_contract(events: list[dict[str, Any]]) -> None:
    for event in events:
        parsed = parse_event(event)
        assert parsed.schema_version == 1
        # The wire form is already canonical: RFC 3339 with milliseconds and Z.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["occurred_at"])


def test_event_ids_are_unique_time_ordered_uuid7(events: list[dict[str, Any]]) -> None:
    ids = [uuid.UUID(e["event_id"]) for e in events]
    assert len(set(ids)) == len(ids)
    for event, ident in zip(events, ids, strict=True):
        assert ident.version == 7 and ident.variant == uuid.RFC_4122
        assert ident.int >> 80 == int(_time(event).timestamp() * 1000)


def test_events_lie_inside_the_period(events: list[dict[str, Any]]) -> None:
    times = [_time(e) for e in events]
    assert min(times) >= END - timedelta(days=90)
    assert max(times) <= END
    # Spread over the whole period, not bunched at one end.
    assert min(times) < END - timedelta(days=85) and max(times) > END - timedelta(days=2)


def test_weekday_working_hours_are_busier(events: list[dict[str, Any]]) -> None:
    times = [_time(e) for e in events]
    weekday_office = sum(1 for t in times if t.weekday() < 5 and 9 <= t.hour < 17)
    weekend = sum(1 for t in times if t.weekday() >= 5)
    night = sum(1 for t in times if t.hour < 6)
    assert weekday_office > 0.6 * len(times)
    assert weekend < 0.08 * len(times) and night < 0.05 * len(times)


def test_all_kinds_actions_and_outcomes_appear(events: list[dict[str, Any]]) -> None:
    kinds = Counter(e["target"]["kind"] for e in events)
    assert set(kinds) == set(ENTITY_KINDS)
    seen: dict[str, set[str]] = {}
    for e in events:
        kind, _, verb = e["action"].partition(".")
        assert kind == e["target"]["kind"]
        seen.setdefault(kind, set()).add(verb)
    assert seen == EXPECTED_ACTIONS

    outcomes = Counter(e["outcome"] for e in events)
    n = len(events)
    assert 0.89 < outcomes["success"] / n < 0.96
    assert 0.03 < outcomes["failure"] / n < 0.08
    assert 0.01 < outcomes["denied"] / n < 0.035
    for e in events:
        assert (e["outcome"] == "success") == ("reason" not in e), e
    assert any(e["reason"].startswith("Deployment failed:") for e in events if e["outcome"] == "failure")
    assert all(e["reason"].startswith("Insufficient permissions") for e in events if e["outcome"] == "denied")


def test_events_carry_related_entities_changes_and_tracing(events: list[dict[str, Any]]) -> None:
    def refs(e: dict[str, Any], kind: str) -> list[str]:
        return [r["id"] for r in e.get("related", []) if r["kind"] == kind]

    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_action.setdefault(e["action"], []).append(e)
        assert e["source"]["service"] == "lifetime" and e["source"]["host"] and e["source"]["version"]
        assert e["request_id"] and e["correlation_id"]
        if e["actor"]["type"] == "user":
            assert e["actor"]["ip"] and e["actor"]["user_agent"] and e["actor"]["session_id"]
    for e in by_action["application.deploy"]:
        assert refs(e, "environment") == [e["environment"]]
        if e["outcome"] != "denied":
            assert e["details"]["version_tag"]
    for e in by_action["deployment_plan.execute"]:
        assert (refs(e, "application") and refs(e, "environment")) or e["target"][
            "id"
        ] == "plan-maintenance-window"
    for e in by_action["team.member_add"]:
        assert len(refs(e, "user")) == 1
    for e in by_action["user.role_change"]:
        assert refs(e, "role")
    for action in ("application.update", "role.update", "user.update", "environment.configure"):
        assert all(
            e["changes"] and {"field", "old", "new"} <= set(e["changes"][0])
            for e in by_action[action]
            if e["outcome"] == "success"
        )
    # Service and system actors exist besides people; svc-ci deploys.
    assert {e["actor"]["type"] for e in events} == {"user", "service", "system"}
    assert any(e["actor"]["id"] == "svc-ci" for e in by_action["application.deploy"])
    # A successful plan execution deploys each of its applications under the same correlation id.
    executed = [e for e in by_action["deployment_plan.execute"] if e["outcome"] == "success"]
    deploys_by_corr = Counter(e["correlation_id"] for e in by_action["application.deploy"])
    assert any(deploys_by_corr[e["correlation_id"]] == len(refs(e, "application")) > 0 for e in executed)


def test_actors_are_plausible(directory: Directory, events: list[dict[str, Any]]) -> None:
    actors = Counter(e["actor"]["id"] for e in events)
    # The source document's example user is busy enough for a rich activity log.
    assert actors[ANDREA] > 0.03 * len(events)
    for e in events:
        if e["actor"]["type"] == "user":
            assert e["actor"]["id"] in directory.users
        if e["outcome"] != "success" or e["actor"]["id"] != ANDREA:
            continue
        # Andrea only succeeds on her own applications (and plans made of them), or on herself.
        kind = e["target"]["kind"]
        if kind == "application":
            assert e["target"]["id"] in ANDREA_APPS
        elif kind == "deployment_plan":
            assert set(directory.plan_applications(e["target"]["id"]) or ["?"]) <= set(ANDREA_APPS)
        else:
            assert (kind, e["target"]["id"]) == ("user", ANDREA)


def test_the_developer_role_has_a_change_log(rows: list[dict[str, Any]]) -> None:
    log = [r for r in rows if f"role/{DEVELOPER}" in r["entity_keys"]]
    actions = Counter(r["action"] for r in log)
    assert actions["role.update"] >= 3
    assert actions["user.role_change"] >= 1


def test_each_persona_sees_a_different_slice(directory: Directory, rows: list[dict[str, Any]]) -> None:
    visible: dict[str, set[str]] = {}
    for user_id, _, _ in PERSONAS:
        scope = scope_for(Caller(user_id=user_id, infrastructure=INFRASTRUCTURE_ID), Directories([directory]))
        visible[user_id] = {
            r["event_id"] for r in rows if scope.allows_row(r["infrastructure"], r["scope_key"])
        }
    everything = {r["event_id"] for r in rows}
    assert visible[PRIYA] == everything
    assert 0 < len(visible[ANDREA]) < len(visible[TOMAS]) < len(everything)
    # Neither slice contains the other: Andrea has an application outside Tomas's teams.
    assert visible[ANDREA] - visible[TOMAS] and visible[TOMAS] - visible[ANDREA]
    by_id = {r["event_id"]: r for r in rows}
    assert {by_id[i]["target_kind"] for i in visible[ANDREA]} <= {"application", "deployment_plan"}
    assert "team" in {by_id[i]["target_kind"] for i in visible[TOMAS]}
    assert not {by_id[i]["target_kind"] for i in visible[TOMAS]} & {
        "user",
        "role",
        "environment",
        "infrastructure",
    }


# -- `auditlog demo` on a store ------------------------------------------------------------


def _args(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "store": None,
        "events": 3000,
        "days": 30,
        "seed": SEED,
        "host": None,
        "port": None,
        "no_serve": True,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def _run(store: Store, **overrides: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = demo.run_demo(_args(**overrides), store=store, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _loaded(store: Store, infrastructure: str) -> Directory | None:
    found = store.directory.load().get(infrastructure)
    return found.model_copy(update={"version": 0}) if found is not None else None


def _printed_keys(text: str) -> list[str]:
    return re.findall(r"API key[^:]*: (alk_\S+)", text)


def test_run_demo_seeds_then_reuses(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _run(store)
    assert code == 0, err
    assert store.event_count() == 3000
    assert _loaded(store, INFRASTRUCTURE_ID) == build_directory(SEED)
    keys = _printed_keys(out)
    assert len(keys) == 3
    found = [store.keys.lookup(k) for k in keys]
    assert [f.user_id if f else None for f in found] == [PRIYA, TOMAS, ANDREA]
    assert [f.can_ingest if f else None for f in found] == [True, False, False]
    for must in (
        "/docs",
        f"/v1/users/{ANDREA}/activity",
        f"/v1/entities/role/{DEVELOPER}/changes",
        "Authorization: Bearer",
        "http://127.0.0.1:8080/v1/events",
    ):
        assert must in out
    assert "events/s" in err

    def no_ingest(*_a: object, **_k: object) -> None:
        raise AssertionError("a second run must not ingest")

    monkeypatch.setattr(BatchIngestor, "ingest", no_ingest)
    code, out2, err2 = _run(store, port=9999)
    assert code == 0, err2
    assert store.event_count() == 3000
    assert _printed_keys(out2) == keys
    assert "reus" in err2 and "http://127.0.0.1:9999/docs" in out2


def test_run_demo_resumes_an_interrupted_seeding(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "BATCH_EVENTS", 1000)
    real_ingest = BatchIngestor.ingest
    calls = 0

    def ingest_then_crash(self: BatchIngestor, items: Any, *, received_at_ms: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real_ingest(self, items, received_at_ms=received_at_ms)

    monkeypatch.setattr(BatchIngestor, "ingest", ingest_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _run(store)
    assert store.event_count() == 1000
    state = demo.load_state(store)
    assert state is not None and state.status == "seeding" and len(state.keys) == 3

    monkeypatch.setattr(BatchIngestor, "ingest", real_ingest)
    code, out, err = _run(store)
    assert code == 0, err
    assert "resuming" in err
    assert store.event_count() == 3000
    assert _printed_keys(out) == [state.keys[p[0]] for p in PERSONAS]


def test_run_demo_refuses_a_store_holding_other_events(store: Store, directory: Directory) -> None:
    event = next(iter(generate_events(directory, count=1, days=1, seed=99, end=END)))
    served = Directories([directory])
    report = BatchIngestor(store, lambda: served, source="test").ingest(
        [event], received_at_ms=int(END.timestamp() * 1000)
    )
    assert report.stored == 1
    code, _, err = _run(store)
    assert code == 2
    assert "not demo data" in err
    assert store.event_count() == 1


def test_run_demo_refuses_a_store_holding_another_directory(store: Store) -> None:
    other = Directory.model_validate(
        {"infrastructure": "globex", "users": [{"id": "u-1", "name": "Someone Else"}]}
    )
    store.directory.replace(other)
    code, _, err = _run(store)
    assert code == 2
    assert "not demo data" in err
    assert _loaded(store, "globex") == other
    assert store.event_count() == 0
