"""The permission model of the console, whole: every rule that decides who reads which row.

A row carries one token naming what it is about, fixed at ingest from its target
and never re-derived: `app:<id>`, `plan:<id>`, `team:<id>`, or `infra` (users,
roles, environments, the infrastructure). What a token requires is resolved
here, against the directory as it is *now*, each time a caller reads: so a change
of roles, team membership, team ownership or a plan's applications, or a
deletion, applies at once to old rows, on every read path alike.

Rules (DESIGN sections 1 and 5):

- a row is visible only inside its own infrastructure, and a caller belongs to one;
- the effective level on an application is the highest of the default role, the
  role of the team owning the application, and the role given on the application;
- `app:<id>`: *List* level or higher on that application;
- `plan:<id>`: *List* on every application the plan has now; a plan with no
  applications, or one the directory does not know, needs *Manage Infrastructure
  and Users*;
- `team:<id>`: *Manage Teams and Application Roles* for that team: from the default
  role it covers every team, from a team role that team only;
- `infra`: *Manage Infrastructure and Users*, from the default role only.

Anything `scope_for` cannot resolve (an unknown user, a dangling role, an
infrastructure this installation does not serve) grants nothing: it fails closed.
The SQL form of a `ReadScope` is `storage.scope_predicate`, next to the columns it reads.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Final

from producers.contract.directory import Directories, Directory, Level, Role, User

INFRA: Final = "infra"
APP_PREFIX: Final = "app:"
PLAN_PREFIX: Final = "plan:"
TEAM_PREFIX: Final = "team:"

_INFRA_KINDS: Final = frozenset({"user", "role", "infrastructure", "environment"})


def row_token(target_kind: str, target_id: str) -> str:
    """The token a row about (target_kind, target_id) carries. Unknown kinds get `infra`,
    the strictest gate: fail closed."""
    if target_kind == "application":
        return APP_PREFIX + target_id
    if target_kind == "deployment_plan":
        return PLAN_PREFIX + target_id
    if target_kind == "team":
        return TEAM_PREFIX + target_id
    return INFRA


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated principal: a directory user of one infrastructure, through an API key."""

    user_id: str
    infrastructure: str
    key_id: str = ""
    key_label: str = ""
    can_ingest: bool = False
    can_publish_directory: bool = False


_MINT: Final = object()


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What one caller may read, as token sets. Only `scope_for` makes one.

    `all_apps` / `all_teams` stand for every application / team, including ones the
    directory has not heard of (a default role with List, say). Plans are resolved
    to their applications now: `plans` are the known plans the caller may read,
    `denied_plans` the known ones it may not, and `unknown_plans` says whether a plan
    the directory does not know is readable (*Manage Infrastructure and Users*).
    """

    infrastructure: str
    infra: bool
    all_apps: bool
    apps: frozenset[str]
    all_teams: bool
    teams: frozenset[str]
    plans: frozenset[str]
    denied_plans: frozenset[str]
    unknown_plans: bool
    mint: InitVar[object] = None
    tokens: tuple[str, ...] = field(init=False)
    """Every token granted by name, sorted: what the SQL predicate binds."""

    def __post_init__(self, mint: object) -> None:
        if mint is not _MINT:
            raise TypeError("a ReadScope comes from producers.contract.permissions.scope_for only")
        named = [INFRA] if self.infra else []
        named += [APP_PREFIX + a for a in self.apps] + [TEAM_PREFIX + t for t in self.teams]
        if not self.unknown_plans:
            named += [PLAN_PREFIX + p for p in self.plans]
        object.__setattr__(self, "tokens", tuple(sorted(named)))

    @property
    def all_plans(self) -> bool:
        return self.unknown_plans and not self.denied_plans

    @property
    def sees_everything(self) -> bool:
        """Every row of the caller's infrastructure."""
        return self.infra and self.all_apps and self.all_teams and self.all_plans

    @property
    def sees_nothing(self) -> bool:
        return not (self.infra or self.all_apps or self.apps or self.all_teams or self.teams) and not (
            self.plans or self.unknown_plans
        )

    def allows(self, token: str) -> bool:
        """The rule of `storage.scope_predicate`, in Python: may this caller read a row with `token`?"""
        if token == INFRA:
            return self.infra
        if token.startswith(APP_PREFIX):
            return self.all_apps or token[len(APP_PREFIX) :] in self.apps
        if token.startswith(TEAM_PREFIX):
            return self.all_teams or token[len(TEAM_PREFIX) :] in self.teams
        if token.startswith(PLAN_PREFIX):
            plan = token[len(PLAN_PREFIX) :]
            if plan in self.plans:
                return True
            return self.unknown_plans and plan not in self.denied_plans
        return False

    def allows_row(self, infrastructure: str, token: str) -> bool:
        return infrastructure == self.infrastructure and self.allows(token)


def _scope(infrastructure: str, **grants: object) -> ReadScope:
    defaults: dict[str, object] = {
        "infra": False, "all_apps": False, "apps": frozenset(), "all_teams": False,
        "teams": frozenset(), "plans": frozenset(), "denied_plans": frozenset(), "unknown_plans": False,
    }  # fmt: skip
    return ReadScope(infrastructure, **{**defaults, **grants}, mint=_MINT)  # type: ignore[arg-type]


NO_ACCESS: Final = _scope("")


def _role(directory: Directory, role_id: str | None) -> Role | None:
    return directory.roles.get(role_id) if role_id is not None else None


def effective_level(directory: Directory, user: User, app_id: str) -> Level:
    """The highest of the default role, the owning team's role and the application's own role."""
    levels = [Level.NONE]
    default = _role(directory, user.default_role)
    if default is not None:
        levels.append(default.level)
    app = directory.applications.get(app_id)
    if app is not None and app.team is not None:
        team_role = _role(directory, user.team_roles.get(app.team))
        if team_role is not None:
            levels.append(team_role.level)
    app_role = _role(directory, user.app_roles.get(app_id))
    if app_role is not None:
        levels.append(app_role.level)
    return max(levels)


def manages_infrastructure(directory: Directory, user: User) -> bool:
    default = _role(directory, user.default_role)
    return bool(default and default.manage_infrastructure)


def scope_for(caller: Caller | None, directories: Directories) -> ReadScope:
    """What `caller` may read now: the mandatory input of every read."""
    if caller is None:
        return NO_ACCESS
    directory = directories.get(caller.infrastructure)
    if directory is None:
        return NO_ACCESS
    user = directory.users.get(caller.user_id)
    if user is None:
        return _scope(caller.infrastructure)
    default = _role(directory, user.default_role)
    infra = manages_infrastructure(directory, user)
    all_teams = bool(default and default.manage_teams)
    all_apps = bool(default and default.level >= Level.LIST)

    teams: set[str] = set()
    apps: set[str] = set()
    listed_teams: set[str] = set()
    for team_id, role_id in user.team_roles.items():
        role = _role(directory, role_id)
        if role is None:
            continue
        if role.manage_teams:
            teams.add(team_id)
        if role.level >= Level.LIST:
            listed_teams.add(team_id)
    if not all_apps:
        # The same as effective_level(...) >= LIST for every application at once.
        apps.update(a.id for a in directory.applications.values() if a.team in listed_teams)
        for app_id, role_id in user.app_roles.items():
            role = _role(directory, role_id)
            if role is not None and role.level >= Level.LIST:
                apps.add(app_id)

    plans: set[str] = set()
    denied: set[str] = set()
    for plan in directory.deployment_plans.values():
        readable = (all_apps or all(a in apps for a in plan.applications)) if plan.applications else infra
        (plans if readable else denied).add(plan.id)
    return _scope(
        caller.infrastructure,
        infra=infra,
        all_apps=all_apps,
        apps=frozenset() if all_apps else frozenset(apps),
        all_teams=all_teams,
        teams=frozenset() if all_teams else frozenset(teams),
        plans=frozenset(plans),
        denied_plans=frozenset(denied),
        unknown_plans=infra,
    )


def may_read_activity_log(scope: ReadScope) -> bool:
    """The user activity log is gated by *Manage Infrastructure and Users*."""
    return scope.infra


def may_read_entity(scope: ReadScope, kind: str, entity_id: str) -> bool:
    """The change log of an entity is gated by the right to read tasks performed to it."""
    return scope.allows(row_token(kind, entity_id))


def may_manage(scope: ReadScope) -> bool:
    """Keys, the directory and conflicts are administered with *Manage Infrastructure and Users*."""
    return scope.infra
