"""Property tests: what the query API shows each caller, against an independent reference model.

The reference model below is re-derived from DESIGN sections 1, 4 and 5; it does
not import `producers.contract.permissions` or `storage.scope_predicate`. Hypothesis draws small
directories (roles, users, teams, applications, deployment plans) and batches of
events of all seven entity kinds, ingests them once per example through
`POST /v1/events`, and then, for every caller (one API key per user, plus a key
whose user the directory does not know), compares every view with the model:

- the global log, paged with a small `limit`, returns exactly the rows the model allows;
- the user activity log is 403 without *Manage Infrastructure and Users*, else exact;
- an entity change log is 403 without the right to read that entity, else exact
  (the entity as target or as related entity, each row still filtered);
- `GET /v1/events/{id}` is 404 for a row the caller may not read;
- no endpoint (activity, change log, one event, export, facets, totals, the viewer's
  log pages) returns a row the global log hides from the same caller (the invariant);
- reads recorded as `audit_log.read` events obey the same row rule;
- a change of the directory after ingest applies at once to old rows, for every kind: roles,
  team membership and ownership, a plan's applications (gained, lost, emptied, the plan
  deleted or never known), deleted applications, teams and users;
- several infrastructures, each with its own directory (the same user and entity ids in
  both): a caller sees rows of their own infrastructure only, and an event for an
  infrastructure the installation does not serve is rejected and kept as a dead letter;
- filters combined with permissions give exactly model ∩ filter.

One store per test function; each example empties the event tables and replaces
the directories, which is much faster than a fresh database per example.
"""

from __future__ import annotations

import copy
import csv
import io
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from auditlog.embedded import Embedded, build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

# --------------------------------------------------------------------------------------
# Reference model (DESIGN sections 1, 4, 5), written independently of the product.
# --------------------------------------------------------------------------------------

LEVELS = ("none", "list", "open_debug", "change_deploy", "full_control")
LIST = LEVELS.index("list")
KINDS = ("application", "deployment_plan", "user", "team", "role", "environment", "infrastructure")
INFRA_GATED_KINDS = frozenset({"user", "role", "infrastructure", "environment"})


@dataclass(frozen=True)
class RefRole:
    level: int
    manage_infra: bool
    manage_teams: bool


@dataclass
class RefUser:
    default_role: str | None = None
    team_roles: dict[str, str] = field(default_factory=dict)
    app_roles: dict[str, str] = field(default_factory=dict)


@dataclass
class RefDirectory:
    roles: dict[str, RefRole]
    users: dict[str, RefUser]
    teams: list[str]
    apps: dict[str, str | None]
    """application id -> owning team (None: no team)."""
    plans: dict[str, list[str]]
    """deployment plan id -> its applications."""

    def _role(self, role_id: str | None) -> RefRole | None:
        return None if role_id is None else self.roles.get(role_id)

    def level(self, user_id: str, app_id: str) -> int:
        """Highest of the default role, the owning team's role and the application's role."""
        user = self.users.get(user_id)
        if user is None:
            return 0
        candidates = [0]
        default = self._role(user.default_role)
        if default is not None:
            candidates.append(default.level)
        owner = self.apps.get(app_id)
        if owner is not None:
            team_role = self._role(user.team_roles.get(owner))
            if team_role is not None:
                candidates.append(team_role.level)
        app_role = self._role(user.app_roles.get(app_id))
        if app_role is not None:
            candidates.append(app_role.level)
        return max(candidates)

    def manages_infra(self, user_id: str) -> bool:
        """*Manage Infrastructure and Users* comes from the default role only."""
        user = self.users.get(user_id)
        role = self._role(user.default_role) if user else None
        return bool(role and role.manage_infra)

    def manages_team(self, user_id: str, team_id: str) -> bool:
        """Default role: every team. A team role: that team only."""
        user = self.users.get(user_id)
        if user is None:
            return False
        default = self._role(user.default_role)
        if default is not None and default.manage_teams:
            return True
        team_role = self._role(user.team_roles.get(team_id))
        return bool(team_role and team_role.manage_teams)

    def may_read(self, user_id: str, kind: str, ident: str) -> bool:
        """The row rule for a task performed to (kind, ident), judged on this directory as it is.

        A plan needs List on every application it has now; a plan with none, or one the
        directory does not know, needs Manage Infrastructure.
        """
        if user_id not in self.users:
            return False
        if kind == "application":
            return self.level(user_id, ident) >= LIST
        if kind == "deployment_plan":
            plan_apps = self.plans.get(ident)
            if not plan_apps:
                return self.manages_infra(user_id)
            return all(self.level(user_id, a) >= LIST for a in plan_apps)
        if kind == "team":
            return self.manages_team(user_id, ident)
        assert kind in INFRA_GATED_KINDS
        return self.manages_infra(user_id)

    def may_read_change_log(self, user_id: str, kind: str, ident: str) -> bool:
        """The gate of an entity change log: the row rule for that entity."""
        return self.may_read(user_id, kind, ident)

    def to_directory(self, infrastructure: str) -> Directory:
        """The same directory in the product's input format, for `infrastructure`."""
        return Directory.model_validate(
            {
                "infrastructure": infrastructure,
                "roles": [
                    {
                        "id": rid,
                        "name": f"Role {rid}",
                        "app_level": LEVELS[r.level],
                        "manage_infrastructure": r.manage_infra,
                        "manage_teams": r.manage_teams,
                    }
                    for rid, r in self.roles.items()
                ],
                "users": [
                    {
                        "id": uid,
                        "name": f"User {uid}",
                        "default_role": u.default_role,
                        "team_roles": dict(u.team_roles),
                        "app_roles": dict(u.app_roles),
                    }
                    for uid, u in self.users.items()
                ],
                "teams": [{"id": t, "name": f"Team {t}"} for t in self.teams],
                "applications": [{"id": a, "name": f"App {a}", "team": t} for a, t in self.apps.items()],
                "deployment_plans": [
                    {"id": p, "name": f"Plan {p}", "applications": list(apps)}
                    for p, apps in self.plans.items()
                ],
                "environments": [{"id": "prod", "name": "Production"}, {"id": "dev", "name": "Development"}],
                "infrastructures": [{"id": infrastructure, "name": f"Infrastructure {infrastructure}"}],
            }
        )


BASE_MS = int(datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp() * 1000)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RefEvent:
    event_id: str
    occurred_ms: int
    actor: str
    action: str
    kind: str
    target: str
    related: tuple[tuple[str, str], ...]
    outcome: str
    environment: str | None
    infrastructure: str

    def touches(self, kind: str, ident: str) -> bool:
        """The entity is the target or one of the related entities."""
        return (self.kind, self.target) == (kind, ident) or (kind, ident) in self.related

    def wire(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": self.event_id,
            "occurred_at": rfc3339(self.occurred_ms),
            "infrastructure": self.infrastructure,
            "actor": {"id": self.actor, "type": "service" if self.actor.startswith("svc") else "user"},
            "action": self.action,
            "target": {"kind": self.kind, "id": self.target},
            "related": [{"kind": k, "id": i} for k, i in self.related],
            "outcome": self.outcome,
        }
        if self.environment is not None:
            event["environment"] = self.environment
        return event


Stored = dict[str, RefEvent]
"""event id -> event, for the events of served infrastructures."""
Installation = dict[str, RefDirectory]
"""infrastructure id -> its directory: what the installation serves."""
Caller = tuple[str, str]
"""(infrastructure, user id) of an API key."""


def visible(inst: Installation, caller: Caller, stored: Stored) -> set[str]:
    """A caller sees rows of their own infrastructure only, each by that directory's rule."""
    infra, user = caller
    d = inst[infra]
    return {
        eid for eid, e in stored.items() if e.infrastructure == infra and d.may_read(user, e.kind, e.target)
    }


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

ROLE_IDS = ("r0", "r1", "r2", "r3")
TEAM_IDS = ("t0", "t1", "t2")
APP_IDS = ("a0", "a1", "a2", "a3")
GHOST_APP = "a9"  # named by plans and grants, never in the directory
GHOST_TEAM = "t9"  # owns applications and carries grants, never listed in the directory
PLAN_IDS = ("p0", "p1", "p2")
USER_IDS = ("u0", "u1", "u2", "u3")
STRANGER = "u9"  # has an API key, never in the directory
SERVED = ("infra-1", "infra-2")
NOT_SERVED = "infra-9"
# The same user ids in both infrastructures, with grants drawn apart: one key per (infra, user).
CALLERS: tuple[Caller, ...] = tuple((i, u) for i in SERVED for u in (*USER_IDS, STRANGER))
ACTORS = (*USER_IDS, STRANGER, "svc-deployer")

ENTITY_POOLS: dict[str, tuple[str, ...]] = {
    "application": (*APP_IDS, GHOST_APP, "a8"),
    "deployment_plan": (*PLAN_IDS, "p9"),
    "team": (*TEAM_IDS, GHOST_TEAM),
    "user": (*USER_IDS, STRANGER),
    "role": ROLE_IDS,
    "environment": ("prod", "dev"),
    "infrastructure": SERVED,
}
VERBS = ("create", "update", "delete", "deploy", "member_add")
OUTCOMES = ("success", "failure", "denied")
ENVIRONMENTS = ("prod", "dev", "staging")
INFRASTRUCTURES = (*SERVED, NOT_SERVED)


def entity_refs() -> st.SearchStrategy[tuple[str, str]]:
    return st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), st.sampled_from(ENTITY_POOLS[k])))


# Levels biased toward none, so that many callers see only part of the log.
levels = st.sampled_from((0, 0, 1, 2, 3, 4))


@st.composite
def directories(draw: st.DrawFn) -> RefDirectory:
    role_ids = draw(st.lists(st.sampled_from(ROLE_IDS), min_size=1, max_size=4, unique=True))
    roles = {
        rid: RefRole(level=draw(levels), manage_infra=draw(st.booleans()), manage_teams=draw(st.booleans()))
        for rid in role_ids
    }
    teams = draw(st.lists(st.sampled_from(TEAM_IDS), max_size=3, unique=True))
    # Applications and grants may name a team the directory does not list.
    team_refs = (*teams, GHOST_TEAM)
    owners: st.SearchStrategy[str | None] = st.none() | st.sampled_from(team_refs)
    apps = {a: draw(owners) for a in draw(st.lists(st.sampled_from(APP_IDS), max_size=4, unique=True))}
    plan_apps = st.lists(st.sampled_from((*APP_IDS, GHOST_APP)), max_size=3, unique=True)
    plans = {p: draw(plan_apps) for p in draw(st.lists(st.sampled_from(PLAN_IDS), max_size=3, unique=True))}
    role_choice = st.sampled_from(role_ids)
    users = {}
    for uid in USER_IDS:
        team_roles = draw(st.dictionaries(st.sampled_from(team_refs), role_choice, max_size=2))
        users[uid] = RefUser(
            default_role=draw(st.none() | role_choice),
            team_roles=team_roles,
            app_roles=draw(st.dictionaries(st.sampled_from((*APP_IDS, GHOST_APP)), role_choice, max_size=2)),
        )
    return RefDirectory(roles=roles, users=users, teams=teams, apps=apps, plans=plans)


@st.composite
def installations(draw: st.DrawFn) -> Installation:
    return {infra: draw(directories()) for infra in SERVED}


@st.composite
def event_batches(draw: st.DrawFn, max_size: int = 12) -> list[RefEvent]:
    n = draw(st.integers(2, max_size))
    ids = draw(st.lists(st.uuids(), min_size=n, max_size=n, unique=True))
    out = []
    for event_id in ids:
        kind, target = draw(entity_refs())
        related = draw(st.lists(entity_refs(), max_size=3))
        if kind == "deployment_plan":
            # Plans usually name their applications; the directory wins when it knows the plan.
            apps = draw(st.lists(st.sampled_from(ENTITY_POOLS["application"]), max_size=3))
            related = [("application", a) for a in apps] + related
        action_kind = kind if draw(st.integers(0, 4)) else draw(st.sampled_from(KINDS))
        out.append(
            RefEvent(
                event_id=str(event_id),
                # Few distinct instants: ties in occurred_at exercise the keyset cursor.
                occurred_ms=BASE_MS + draw(st.integers(0, 5)) * 1000 + draw(st.sampled_from((0, 500))),
                actor=draw(st.sampled_from(ACTORS)),
                action=f"{action_kind}.{draw(st.sampled_from(VERBS))}",
                kind=kind,
                target=target,
                related=tuple(related),
                outcome=draw(st.sampled_from(OUTCOMES)),
                environment=draw(st.none() | st.sampled_from(ENVIRONMENTS)),
                infrastructure=draw(st.sampled_from(INFRASTRUCTURES)),
            )
        )
    return out


MUTATIONS = (
    "move_app",
    "drop_team_role",
    "drop_app_role",
    "grant_team_role",
    "grant_app_role",
    "set_default_role",
    "delete_user",
    "edit_role",
    "edit_plan",
    "delete_plan",
    "plan_gains_app",
    "plan_loses_app",
    "empty_plan",
    "delete_app",
    "delete_team",
)


@st.composite
def mutated(draw: st.DrawFn, d: RefDirectory) -> tuple[RefDirectory, list[str]]:
    """`d` after a few random changes, and a log of them (for failure messages)."""
    new = copy.deepcopy(d)
    log: list[str] = []
    role_ids = sorted(new.roles)
    for op in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4)):
        uid = draw(st.sampled_from(sorted(new.users))) if new.users else None
        user = new.users.get(uid) if uid is not None else None
        if op == "move_app" and new.apps:
            app = draw(st.sampled_from(sorted(new.apps)))
            new.apps[app] = draw(st.none() | st.sampled_from((*new.teams, GHOST_TEAM)))
            log.append(f"app {app} -> team {new.apps[app]}")
        elif op == "drop_team_role" and user is not None and user.team_roles:
            team = draw(st.sampled_from(sorted(user.team_roles)))
            del user.team_roles[team]
            log.append(f"{uid} loses team role on {team}")
        elif op == "drop_app_role" and user is not None and user.app_roles:
            app = draw(st.sampled_from(sorted(user.app_roles)))
            del user.app_roles[app]
            log.append(f"{uid} loses app role on {app}")
        elif op == "grant_team_role" and user is not None:
            team = draw(st.sampled_from((*new.teams, GHOST_TEAM)))
            user.team_roles[team] = draw(st.sampled_from(role_ids))
            log.append(f"{uid} gets {user.team_roles[team]} on team {team}")
        elif op == "grant_app_role" and user is not None:
            app = draw(st.sampled_from((*APP_IDS, GHOST_APP)))
            user.app_roles[app] = draw(st.sampled_from(role_ids))
            log.append(f"{uid} gets {user.app_roles[app]} on app {app}")
        elif op == "set_default_role" and user is not None:
            user.default_role = draw(st.none() | st.sampled_from(role_ids))
            log.append(f"{uid} default role -> {user.default_role}")
        elif op == "delete_user" and uid is not None:
            del new.users[uid]
            log.append(f"{uid} deleted")
        elif op == "edit_role":
            rid = draw(st.sampled_from(role_ids))
            new.roles[rid] = RefRole(draw(levels), draw(st.booleans()), draw(st.booleans()))
            log.append(f"role {rid} -> {new.roles[rid]}")
        elif op == "edit_plan":
            plan = draw(st.sampled_from(PLAN_IDS))
            new.plans[plan] = draw(st.lists(st.sampled_from((*APP_IDS, GHOST_APP)), max_size=3, unique=True))
            log.append(f"plan {plan} -> {new.plans[plan]}")
        elif op == "delete_plan" and new.plans:
            plan = draw(st.sampled_from(sorted(new.plans)))
            del new.plans[plan]
            log.append(f"plan {plan} deleted")
        elif op == "plan_gains_app" and new.plans:
            plan = draw(st.sampled_from(sorted(new.plans)))
            app = draw(st.sampled_from((*APP_IDS, GHOST_APP)))
            if app not in new.plans[plan]:
                new.plans[plan].append(app)
            log.append(f"plan {plan} gains {app}")
        elif op == "plan_loses_app" and any(new.plans.values()):
            plan = draw(st.sampled_from(sorted(p for p, a in new.plans.items() if a)))
            app = draw(st.sampled_from(new.plans[plan]))
            new.plans[plan].remove(app)
            log.append(f"plan {plan} loses {app}")
        elif op == "empty_plan" and new.plans:
            plan = draw(st.sampled_from(sorted(new.plans)))
            new.plans[plan] = []
            log.append(f"plan {plan} emptied")
        elif op == "delete_app" and new.apps:
            app = draw(st.sampled_from(sorted(new.apps)))
            del new.apps[app]
            log.append(f"app {app} deleted")
        elif op == "delete_team" and new.teams:
            team = draw(st.sampled_from(new.teams))
            new.teams.remove(team)
            log.append(f"team {team} deleted")
    return new, log


@dataclass(frozen=True)
class RefFilter:
    actors: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    """exact actions, or prefixes ending in *"""
    kinds: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    infrastructures: tuple[str, ...] = ()
    entities: tuple[tuple[str, str], ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None

    def params(self) -> list[tuple[str, str]]:
        out = [("actor", a) for a in self.actors]
        out += [("action", a) for a in self.actions]
        out += [("entity_kind", k) for k in self.kinds]
        out += [("outcome", o) for o in self.outcomes]
        out += [("environment", e) for e in self.environments]
        out += [("infrastructure", i) for i in self.infrastructures]
        out += [("entity", f"{k}/{i}") for k, i in self.entities]
        if self.since_ms is not None:
            out.append(("since", rfc3339(self.since_ms)))
        if self.until_ms is not None:
            out.append(("until", rfc3339(self.until_ms)))
        return out

    def _action_matches(self, action: str) -> bool:
        return any(action.startswith(a[:-1]) if a.endswith("*") else action == a for a in self.actions)

    def matches(self, e: RefEvent) -> bool:
        return (
            (not self.actors or e.actor in self.actors)
            and (not self.actions or self._action_matches(e.action))
            and (not self.kinds or e.kind in self.kinds)
            and (not self.outcomes or e.outcome in self.outcomes)
            and (not self.environments or (e.environment or "") in self.environments)
            and (not self.infrastructures or e.infrastructure in self.infrastructures)
            and (not self.entities or any(e.touches(k, i) for k, i in self.entities))
            and (self.since_ms is None or e.occurred_ms >= self.since_ms)
            and (self.until_ms is None or e.occurred_ms < self.until_ms)
        )


ACTION_FILTERS = (
    "application.deploy",
    "team.member_add",
    "role.update",
    "application.*",
    "deployment_plan.*",
    "team.*",
    "user.*",
    "r*",
    "deployment_plan.de*",
)


FILTER_DIMENSIONS = (
    "actor",
    "action",
    "kind",
    "outcome",
    "environment",
    "infrastructure",
    "entity",
    "since",
    "until",
)
# The instants events occur at (and one before, one after): range bounds fall on events.
instants = st.integers(-1, 6).flatmap(
    lambda s: st.sampled_from((0, 500)).map(lambda ms: BASE_MS + s * 1000 + ms)
)


@st.composite
def filters(draw: st.DrawFn) -> RefFilter:
    """A few constrained dimensions at a time, so that results are often not empty."""
    dims = draw(st.sets(st.sampled_from(FILTER_DIMENSIONS), max_size=3))

    def values(dim: str, pool: Sequence[str]) -> tuple[str, ...]:
        if dim not in dims:
            return ()
        return tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True)))

    since = draw(instants) if "since" in dims else None
    until = draw(instants) if "until" in dims else None
    if since is not None and until is not None:
        since, until = min(since, until), max(since, until)
        if since == until:
            until = None
    entities = draw(st.lists(entity_refs(), min_size=1, max_size=2, unique=True)) if "entity" in dims else []
    return RefFilter(
        actors=values("actor", ACTORS),
        actions=values("action", ACTION_FILTERS),
        kinds=values("kind", KINDS),
        outcomes=values("outcome", OUTCOMES),
        environments=values("environment", ENVIRONMENTS),
        infrastructures=values("infrastructure", INFRASTRUCTURES),
        entities=tuple(entities),
        since_ms=since,
        until_ms=until,
    )


# --------------------------------------------------------------------------------------
# Harness: one store and one app per test function, reloaded per example
# --------------------------------------------------------------------------------------


@dataclass
class Harness:
    store: Store
    embedded: Embedded
    client: TestClient
    ingest_keys: dict[str, str]
    """infrastructure -> a key that may ingest its events (a key writes its own infrastructure's)."""
    keys: dict[Caller, str]
    sessions: dict[str, str] = field(default_factory=dict)

    def load(self, inst: Installation, events: Sequence[RefEvent]) -> Stored:
        """Empty the tables, install every directory of `inst`, ingest `events` through the API."""
        self.clear_events()
        self.set_directories(inst)
        served = [e for e in events if e.infrastructure in inst]
        for infra in INFRASTRUCTURES:
            group = [e for e in events if e.infrastructure == infra]
            if not group:
                continue
            r = self.client.post(
                "/v1/events", json=[e.wire() for e in group], headers=auth(self.ingest_keys[infra])
            )
            assert r.status_code == (200 if infra in inst else 207), r.text
            body = r.json()
            assert body["stored"] == (len(group) if infra in inst else 0), r.text
            # An event for an infrastructure not served is refused with that reason, and kept.
            if infra not in inst:
                assert [x["event_id"] for x in body["rejected"]] == [e.event_id for e in group]
                assert all("is not served by this installation" in x["reason"] for x in body["rejected"])
        assert self.store.event_count() == len(served)
        letters = self.store.engine.query(f"SELECT count() AS n FROM {self.store.database}.dead_letters")
        assert int(letters[0]["n"]) == len(events) - len(served)
        return {e.event_id: e for e in served}

    def clear_events(self) -> None:
        """Empty every table the events land in (the event table and what is derived from it)."""
        db = self.store.database
        kept = ["directory_entities", "api_keys", "schema_migrations"]
        tables = self.store.engine.query(
            "SELECT name FROM system.tables WHERE database = {db:String} "
            "AND engine LIKE '%MergeTree%' AND name NOT IN {kept:Array(String)}",
            params={"db": db, "kept": kept},
        )
        assert any(t["name"] == "audit_events" for t in tables)
        for table in tables:
            self.store.engine.command(f"TRUNCATE TABLE {db}.{table['name']}")

    def set_directories(self, inst: Installation) -> None:
        for infra, d in inst.items():
            self.embedded.services.directory.replace(d.to_directory(infra))

    def session(self, key: str) -> str:
        """A viewer session opened with `key` (the cookie holds its id, never the key)."""
        if key not in self.sessions:
            r = self.client.post("/ui/login", data={"api_key": key, "next": ""}, follow_redirects=False)
            assert r.status_code == 303, r.text
            self.sessions[key] = r.cookies["auditlog_session"]
            self.client.cookies.clear()
        return self.sessions[key]


@pytest.fixture
def harness(store: Store) -> Iterator[Harness]:
    # Reads are audited as events of their own; off here so that the table holds exactly the
    # events of the example (test_read_audit_rows_obey_the_row_rule covers them).
    embedded = build_embedded(store, api_settings=ApiSettings(audit_reads=False, sql_enabled=True))
    with TestClient(embedded.app) as client:
        yield Harness(
            store=store,
            embedded=embedded,
            client=client,
            ingest_keys={
                i: make_key(store, "ingest-bot", infrastructure=i, can_ingest=True) for i in INFRASTRUCTURES
            },
            keys={c: make_key(store, c[1], infrastructure=c[0]) for c in CALLERS},
        )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def fetch_all(
    client: TestClient, path: str, key: str, params: Sequence[tuple[str, str]] = (), limit: int = 1000
) -> tuple[int, list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor. A gate answers on the first page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        # Whole events: every view is compared field by field with the global log and one event.
        query = [*params, ("limit", str(limit)), ("fields", "full")] + (
            [("cursor", cursor)] if cursor else []
        )
        r = client.get(path, params=query, headers=auth(key))
        if r.status_code != 200:
            assert not items, f"{path} answered {r.status_code} after {len(items)} rows: {r.text}"
            return r.status_code, []
        body = r.json()
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    else:
        pytest.fail(f"{path}: paging did not end")
    ids = [i["event_id"] for i in items]
    assert len(ids) == len(set(ids)), f"{path}: a row came twice across pages"
    times = [i["occurred_at"] for i in items]
    assert times == sorted(times, reverse=True), f"{path}: not newest first"
    return 200, items


def id_set(items: Sequence[dict[str, Any]]) -> set[str]:
    return {i["event_id"] for i in items}


def assert_within_global(
    items: Sequence[dict[str, Any]], global_rows: dict[str, dict[str, Any]], what: str
) -> None:
    """The invariant: a row shown anywhere is shown, identically, by the global log."""
    for item in items:
        assert item["event_id"] in global_rows, f"{what} returned a row the global log hides"
        assert item == global_rows[item["event_id"]], f"{what} returned a row unlike the global log's"


FACETS: dict[str, Callable[[RefEvent], str]] = {
    "action": lambda e: e.action,
    "actor_id": lambda e: e.actor,
    "target_kind": lambda e: e.kind,
    "environment": lambda e: e.environment or "",
    "outcome": lambda e: e.outcome,
}


def check_export_and_counts(
    client: TestClient,
    key: str,
    params: Sequence[tuple[str, str]],
    expected: Sequence[RefEvent],
    global_rows: dict[str, dict[str, Any]],
    fmt: str,
    why: str,
) -> None:
    """Export, facets and totals: the same rows as the global log, no more."""
    expected_ids = {e.event_id for e in expected}
    r = client.get("/v1/events/export", params=[*params, ("format", fmt)], headers=auth(key))
    assert r.status_code == 200, r.text
    if fmt == "ndjson":
        exported = [orjson.loads(line) for line in r.content.splitlines() if line.strip()]
        assert_within_global(exported, global_rows, "export")
        ids = [e["event_id"] for e in exported]
    else:
        ids = [row["event_id"] for row in csv.DictReader(io.StringIO(r.text))]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids, f"export: {why}"
    if not params:
        # An analyst's SQL reads the same rows through the scoped views, by another path.
        query = "SELECT toString(event_id) AS event_id FROM analyst_events"
        r = client.post("/v1/sql", json={"query": query}, headers=auth(key))
        assert r.status_code == 200, r.text
        sql_ids = [row["event_id"] for row in r.json()["rows"]]
        assert len(sql_ids) == len(set(sql_ids)) and set(sql_ids) == expected_ids, f"sql: {why}"

    r = client.get("/v1/events/facets", params=[*params, ("size", "100")], headers=auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert int(body["total"]) == len(expected), f"facets total: {why}"
    for column, value_of in FACETS.items():
        got = {f["value"]: int(f["count"]) for f in body["facets"][column]}
        assert got == Counter(value_of(e) for e in expected), f"facet {column}: {why}"

    r = client.get(
        "/v1/events", params=[*params, ("include_total", "true"), ("limit", "1")], headers=auth(key)
    )
    assert r.status_code == 200, r.text
    assert r.json()["total"] == len(expected), f"include_total: {why}"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_ui_pages(
    harness: Harness,
    key: str,
    actor: str,
    entity: tuple[str, str],
    example_ids: set[str],
    allowed: set[str],
    d: RefDirectory,
    user: str,
    why: str,
) -> None:
    """The web viewer's log pages: never an event the global log hides from the same caller."""
    cookie = {"Cookie": f"auditlog_session={harness.session(key)}"}
    kind, ident = entity
    pages = [
        ("/ui/", True),
        (f"/ui/users/{quote(actor, safe='')}", d.manages_infra(user)),
        (f"/ui/entities/{kind}/{quote(ident, safe='')}", d.may_read_change_log(user, kind, ident)),
    ]
    for path, may in pages:
        r = harness.client.get(path, headers=cookie, follow_redirects=False)
        if user not in d.users and path == "/ui/":
            # A key whose user the directory does not know signs in and sees an empty log.
            assert r.status_code == 200, f"{path}: {r.status_code} {why}"
        else:
            assert r.status_code == (200 if may else 403), f"{path}: {r.status_code} {why}"
        shown = set(_UUID.findall(r.text)) & example_ids
        assert shown <= allowed, f"{path} shows {shown - allowed}: {why}"


def user_path(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/activity"


def entity_path(kind: str, ident: str) -> str:
    return f"/v1/entities/{kind}/{quote(ident, safe='')}/changes"


def describe(inst: Installation, stored: Stored, caller: Caller) -> str:
    infra, user = caller
    d = inst[infra]
    rows = [(e.event_id[:8], e.infrastructure, e.kind, e.target, e.related) for e in stored.values()]
    return (
        f"caller={caller} user={d.users.get(user)} roles={d.roles} apps={d.apps} plans={d.plans} "
        f"teams={d.teams} rows={rows}"
    )


# Every example runs dozens of requests, so shrinking a failure would take minutes: it is
# off. Examples are small by construction and a failure message prints the whole scenario.
PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate],
    database=None,
)

# --------------------------------------------------------------------------------------
# The reference model on hand-written cases (a check of the checker)
# --------------------------------------------------------------------------------------


def test_reference_model_examples() -> None:
    d = RefDirectory(
        roles={
            "viewer": RefRole(LIST, False, False),
            "none": RefRole(0, False, False),
            "admin": RefRole(0, True, True),
            "lead": RefRole(LEVELS.index("change_deploy"), False, True),
        },
        users={
            "alice": RefUser(default_role="admin"),
            "bob": RefUser(default_role="none", team_roles={"t0": "lead"}),
            "carol": RefUser(app_roles={"a1": "viewer"}),
            "dave": RefUser(default_role="viewer"),
        },
        teams=["t0", "t1"],
        apps={"a0": "t0", "a1": "t1", "a2": None},
        plans={"p0": ["a0", "a1"], "p1": [], "p2": ["a0"]},
    )
    # Manage Infrastructure and Users from the default role; level none.
    assert d.may_read("alice", "role", "r") and not d.may_read("alice", "application", "a0")
    assert d.may_read("alice", "team", "t1")  # default role's Manage Teams covers every team
    # A team role: level on the team's apps and Manage Teams for that team only; never infra.
    assert d.may_read("bob", "application", "a0") and not d.may_read("bob", "application", "a1")
    assert d.may_read("bob", "team", "t0") and not d.may_read("bob", "team", "t1")
    assert not d.may_read("bob", "user", "alice")
    # A plan needs List on every application it has now; an empty or unknown one, Manage Infrastructure.
    assert not d.may_read("bob", "deployment_plan", "p0") and d.may_read("bob", "deployment_plan", "p2")
    assert d.may_read("dave", "deployment_plan", "p0")
    assert d.may_read("alice", "deployment_plan", "p1") and not d.may_read("dave", "deployment_plan", "p1")
    assert not d.may_read_change_log("dave", "deployment_plan", "p-unknown")
    assert d.may_read_change_log("alice", "deployment_plan", "p-unknown")
    # App role on one app; unknown callers see nothing.
    assert d.may_read("carol", "application", "a1") and not d.may_read("carol", "application", "a0")
    assert not d.may_read("nobody", "application", "a0")
    # Several infrastructures: a row of another infrastructure is never visible.
    e = RefEvent("e", BASE_MS, "x", "role.update", "role", "r", (), "success", None, "infra-2")
    assert visible({"infra-1": d, "infra-2": d}, ("infra-1", "alice"), {"e": e}) == set()
    assert visible({"infra-1": d, "infra-2": d}, ("infra-2", "alice"), {"e": e}) == {"e"}


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(inst=installations(), events=event_batches(), data=st.data())
def test_views_match_reference(
    harness: Harness, inst: Installation, events: list[RefEvent], data: st.DataObject
) -> None:
    stored = harness.load(inst, events)
    all_ids = sorted(stored)
    touched = sorted({(e.kind, e.target) for e in events} | {r for e in events for r in e.related})
    entity_choice = st.sampled_from(touched) | entity_refs() if touched else entity_refs()
    client = harness.client
    # Export, facets, totals and the viewer for one caller per example: they cost several queries each.
    aggregates_for = data.draw(st.sampled_from(CALLERS), label="export and facets as")
    for caller in CALLERS:
        infra, user = caller
        d = inst[infra]
        key = harness.keys[caller]
        why = describe(inst, stored, caller)
        allowed = visible(inst, caller, stored)

        status, rows = fetch_all(client, "/v1/events", key, limit=data.draw(st.integers(1, 5), label="limit"))
        assert status == 200
        assert id_set(rows) == allowed, why
        global_rows = {r["event_id"]: r for r in rows}
        if caller == aggregates_for:
            expected = [stored[i] for i in allowed]
            check_export_and_counts(client, key, [], expected, global_rows, "ndjson", why)
            # Asking for another infrastructure by filter never reaches its rows.
            other = [("infrastructure", i) for i in INFRASTRUCTURES if i != infra]
            status, rows = fetch_all(client, "/v1/events", key, other)
            assert status == 200 and rows == [], why

        actor = data.draw(st.sampled_from(ACTORS), label="activity of")
        status, rows = fetch_all(client, user_path(actor), key, limit=data.draw(st.integers(1, 3)))
        if d.manages_infra(user):
            assert status == 200, why
            assert id_set(rows) == {i for i in allowed if stored[i].actor == actor}, why
        else:
            assert status == 403, why
        assert_within_global(rows, global_rows, "activity log")

        kind, ident = data.draw(entity_choice, label="change log of")
        status, rows = fetch_all(client, entity_path(kind, ident), key, limit=data.draw(st.integers(1, 3)))
        if d.may_read_change_log(user, kind, ident):
            assert status == 200, why
            assert id_set(rows) == {i for i in allowed if stored[i].touches(kind, ident)}, why
        else:
            assert status == 403, f"{kind}/{ident}: {why}"
        assert_within_global(rows, global_rows, "change log")

        if caller == aggregates_for:
            check_ui_pages(harness, key, actor, (kind, ident), set(all_ids), allowed, d, user, why)

        if all_ids:
            for event_id in data.draw(
                st.lists(st.sampled_from(all_ids), max_size=3, unique=True), label="get"
            ):
                r = client.get(f"/v1/events/{event_id}", headers=auth(key))
                if event_id in allowed:
                    assert r.status_code == 200, why
                    assert_within_global([r.json()], global_rows, "GET /v1/events/{id}")
                else:
                    assert r.status_code == 404, why


@PROPERTY_SETTINGS
@given(inst=installations(), events=event_batches(), data=st.data())
def test_directory_change_applies_to_old_rows(
    harness: Harness, inst: Installation, events: list[RefEvent], data: st.DataObject
) -> None:
    stored = harness.load(inst, events)
    changed_infra = data.draw(st.sampled_from(SERVED), label="infrastructure changed")
    new_directory, changes = data.draw(mutated(inst[changed_infra]), label="directory change")
    after = {**inst, changed_infra: new_directory}
    harness.set_directories({changed_infra: new_directory})
    client = harness.client
    aggregates_for = data.draw(st.sampled_from(CALLERS), label="export and facets as")
    for caller in CALLERS:
        infra, user = caller
        d = after[infra]
        key = harness.keys[caller]
        why = f"after {changed_infra}: {changes}: {describe(after, stored, caller)}"
        status, rows = fetch_all(client, "/v1/events", key)
        assert status == 200
        # Grants, ownership and a plan's applications are all resolved now, for old rows too.
        allowed = visible(after, caller, stored)
        assert id_set(rows) == allowed, why
        global_rows = {r["event_id"]: r for r in rows}
        if caller == aggregates_for:
            check_export_and_counts(client, key, [], [stored[i] for i in allowed], global_rows, "csv", why)
        status, rows = fetch_all(client, user_path(user), key)
        assert status == (200 if d.manages_infra(user) else 403), why
        assert_within_global(rows, global_rows, "activity log")
        for plan in (*PLAN_IDS, "p9"):
            status, rows = fetch_all(client, entity_path("deployment_plan", plan), key)
            expected = 200 if d.may_read_change_log(user, "deployment_plan", plan) else 403
            assert status == expected, f"plan {plan}: {why}"
            if status == 200:
                assert id_set(rows) == {i for i in allowed if stored[i].touches("deployment_plan", plan)}, why
            assert_within_global(rows, global_rows, "plan change log")
        for app in (*APP_IDS, GHOST_APP):
            status, rows = fetch_all(client, entity_path("application", app), key)
            assert status == (200 if d.may_read_change_log(user, "application", app) else 403), why
            assert_within_global(rows, global_rows, "application change log")
        for event_id in stored:
            r = client.get(f"/v1/events/{event_id}", headers=auth(key))
            assert r.status_code == (200 if event_id in allowed else 404), why


@PROPERTY_SETTINGS
@given(inst=installations(), events=event_batches(), data=st.data())
def test_filters_intersect_permissions(
    harness: Harness, inst: Installation, events: list[RefEvent], data: st.DataObject
) -> None:
    stored = harness.load(inst, events)
    client = harness.client
    aggregates_for = data.draw(st.sampled_from(CALLERS), label="export and facets as")
    for caller in CALLERS:
        infra, user = caller
        d = inst[infra]
        key = harness.keys[caller]
        allowed = visible(inst, caller, stored)
        flt = data.draw(filters(), label="filter")
        why = f"{flt}: {describe(inst, stored, caller)}"
        status, rows = fetch_all(client, "/v1/events", key, flt.params(), limit=data.draw(st.integers(1, 5)))
        assert status == 200, why
        expected = [stored[i] for i in allowed if flt.matches(stored[i])]
        assert id_set(rows) == {e.event_id for e in expected}, why
        global_rows = {r["event_id"]: r for r in rows}
        if caller == aggregates_for:
            check_export_and_counts(client, key, flt.params(), expected, global_rows, "csv", why)

        kind, ident = data.draw(entity_refs(), label="change log of")
        status, rows = fetch_all(client, entity_path(kind, ident), key, flt.params(), limit=3)
        if d.may_read_change_log(user, kind, ident):
            assert status == 200, why
            in_log = {i for i in allowed if stored[i].touches(kind, ident) and flt.matches(stored[i])}
            assert id_set(rows) == in_log, why
            assert_within_global(rows, global_rows, "filtered change log")
        else:
            assert status == 403, why


def simple_event(n: int, kind: str, target: str, infrastructure: str = "infra-1") -> RefEvent:
    return RefEvent(
        str(uuid.uuid4()),
        BASE_MS + n,
        "u2",
        f"{kind}.update",
        kind,
        target,
        (),
        "success",
        None,
        infrastructure,
    )


def test_moving_an_app_between_teams_moves_its_old_rows(harness: Harness) -> None:
    """A hand-written case of the property above: ownership is resolved at query time."""
    lead = RefRole(LIST, False, True)
    d = RefDirectory(
        roles={"lead": lead},
        users={"u0": RefUser(team_roles={"t0": "lead"}), "u1": RefUser(team_roles={"t1": "lead"})},
        teams=["t0", "t1"],
        apps={"a0": "t0"},
        plans={"p0": ["a0"]},
    )
    events = [simple_event(0, "application", "a0"), simple_event(1, "deployment_plan", "p0")]
    empty = RefDirectory(roles={}, users={}, teams=[], apps={}, plans={})
    stored = harness.load({"infra-1": d, "infra-2": empty}, events)
    u0, u1 = harness.keys[("infra-1", "u0")], harness.keys[("infra-1", "u1")]
    assert id_set(fetch_all(harness.client, "/v1/events", u0)[1]) == set(stored)
    assert id_set(fetch_all(harness.client, "/v1/events", u1)[1]) == set()

    moved = copy.deepcopy(d)
    moved.apps["a0"] = "t1"
    harness.set_directories({"infra-1": moved})
    assert id_set(fetch_all(harness.client, "/v1/events", u0)[1]) == set()
    assert id_set(fetch_all(harness.client, "/v1/events", u1)[1]) == set(stored)
    status, _ = fetch_all(harness.client, entity_path("application", "a0"), u0)
    assert status == 403


def test_a_plan_gaining_an_application_hides_its_old_rows_everywhere(harness: Harness) -> None:
    """The case the issue names: a plan gains an application a developer may not list."""
    d = RefDirectory(
        roles={"viewer": RefRole(LIST, False, False), "admin": RefRole(0, True, False)},
        users={"u0": RefUser(app_roles={"a0": "viewer"}), "u1": RefUser(default_role="admin")},
        teams=[],
        apps={"a0": None, "a1": None},
        plans={"p0": ["a0"]},
    )
    plan_event = RefEvent(
        str(uuid.uuid4()), BASE_MS, "u1", "deployment_plan.execute", "deployment_plan", "p0",
        (("application", "a0"),), "success", None, "infra-1",
    )  # fmt: skip
    empty = RefDirectory(roles={}, users={}, teams=[], apps={}, plans={})
    harness.load({"infra-1": d, "infra-2": empty}, [plan_event])
    dev, admin = harness.keys[("infra-1", "u0")], harness.keys[("infra-1", "u1")]
    client = harness.client
    reads = [
        ("/v1/events", "global log"),
        (entity_path("application", "a0"), "application change log"),
        (entity_path("deployment_plan", "p0"), "plan change log"),
    ]
    for path, what in reads:
        assert id_set(fetch_all(client, path, dev)[1]) == {plan_event.event_id}, what

    gained = copy.deepcopy(d)
    gained.plans["p0"].append("a1")
    harness.set_directories({"infra-1": gained})
    for path, what in reads[:2]:
        assert fetch_all(client, path, dev) == (200, []), what
    assert fetch_all(client, reads[2][0], dev)[0] == 403
    assert client.get(f"/v1/events/{plan_event.event_id}", headers=auth(dev)).status_code == 404
    assert client.get("/v1/events/facets", headers=auth(dev)).json()["total"] == 0
    assert client.get("/v1/events/export", headers=auth(dev)).content == b""

    emptied = copy.deepcopy(d)
    emptied.plans["p0"] = []
    harness.set_directories({"infra-1": emptied})
    # An empty plan needs Manage Infrastructure: the developer no longer, the administrator yes.
    assert fetch_all(client, "/v1/events", dev) == (200, [])
    assert id_set(fetch_all(client, "/v1/events", admin)[1]) == {plan_event.event_id}


def test_read_audit_rows_obey_the_row_rule(store: Store) -> None:
    """Reads of the log are recorded as events; those rows too are filtered by the row rule."""
    d = RefDirectory(
        roles={"admin": RefRole(0, True, False), "viewer": RefRole(LIST, False, True)},
        users={"u0": RefUser(default_role="admin"), "u1": RefUser(default_role="viewer"), "u2": RefUser()},
        teams=["t0"],
        apps={"a0": "t0"},
        plans={"p0": ["a0"]},
    )
    embedded = build_embedded(
        store, api_settings=ApiSettings(audit_reads=True), directory=d.to_directory("infra-1")
    )
    auditor = embedded.services.auditor
    assert auditor is not None
    client = TestClient(embedded.app)
    users = (*USER_IDS, STRANGER)
    keys = {u: make_key(store, u, infrastructure="infra-1") for u in users}
    ingest_key = make_key(store, "ingest-bot", infrastructure="infra-1", can_ingest=True)
    targets = [
        ("application", "a0"),
        ("role", "r0"),
        ("team", "t0"),
        ("deployment_plan", "p0"),
        ("user", "u2"),
    ]
    events = [simple_event(i, k, t) for i, (k, t) in enumerate(targets)]
    r = client.post("/v1/events", json=[e.wire() for e in events], headers=auth(ingest_key))
    assert r.status_code == 200, r.text
    for caller in users:
        key = keys[caller]
        client.get("/v1/events", headers=auth(key))
        client.get(entity_path("application", "a0"), headers=auth(key))
        client.get(f"/v1/events/{events[0].event_id}", headers=auth(key))
        client.get("/v1/events/export", headers=auth(key))
    assert auditor.not_recorded == 0

    # The checks below read through an API that records nothing more, so the table stays
    # what it is now; the truth is read without the API: every row of the table.
    client = TestClient(build_embedded(store, api_settings=ApiSettings(audit_reads=False)).app)
    table = store.engine.query(
        f"SELECT toString(event_id) AS id, target_kind, target_id, actor_id, action, infrastructure "
        f"FROM {store.database}.audit_events"
    )
    reads = [t for t in table if t["action"].startswith("audit_log.")]
    assert reads, "reads were not recorded"
    assert {t["infrastructure"] for t in reads} == {"infra-1"}
    actors = {t["id"]: t["actor_id"] for t in table}
    seen_by = {
        caller: {t["id"] for t in table if d.may_read(caller, t["target_kind"], t["target_id"])}
        for caller in users
    }
    for caller in users:
        key = keys[caller]
        expected = seen_by[caller]
        status, rows = fetch_all(client, "/v1/events", key, limit=4)
        assert status == 200
        assert id_set(rows) == expected, caller
        global_rows = {row["event_id"]: row for row in rows}
        status, rows = fetch_all(client, user_path(caller), keys["u0"])
        assert status == 200
        assert id_set(rows) == {i for i in seen_by["u0"] if actors[i] == caller}
        status, rows = fetch_all(client, user_path(caller), key)
        assert status == (200 if d.manages_infra(caller) else 403)
        assert_within_global(rows, global_rows, "activity log")
