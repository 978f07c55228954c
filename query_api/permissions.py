"""The permission rules of the console, in one place.

`scope_for` is the one scoping function: it turns a caller into the `ReadScope`
that every read path hands to the reader. It expands grants against the
directory as it is *now*, so a change of roles or team ownership applies at once
to old rows. Anything it cannot resolve (an unknown user, a dangling role)
grants nothing: it fails closed.

Rules (DESIGN sections 1 and 5):
- effective level on an application = highest of the default role, the role of
  the team owning the application, and the role given on the application itself;
- *Manage Infrastructure and Users* comes from the default role only;
- *Manage Teams and Application Roles* from the default role covers every team,
  from a team role covers that team only.
"""

from __future__ import annotations

from dataclasses import dataclass

from producers.directory import Directory, Level, Role, User
from storage.read_scope import NO_ACCESS, ReadScope, row_scope


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated principal: a directory user reached through an API key."""

    user_id: str
    can_ingest: bool = False
    key_label: str = ""


def _role(directory: Directory, role_id: str | None) -> Role | None:
    return directory.roles.get(role_id) if role_id is not None else None


def effective_level(directory: Directory, user: User, app_id: str) -> Level:
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


def scope_for(caller: Caller | None, directory: Directory) -> ReadScope:
    """What `caller` may read: the mandatory input of every read."""
    if caller is None:
        return NO_ACCESS
    user = directory.users.get(caller.user_id)
    if user is None:
        return NO_ACCESS
    default = _role(directory, user.default_role)
    infra = bool(default and default.manage_infrastructure)
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
    if listed_teams and not all_apps:
        apps.update(a.id for a in directory.applications.values() if a.team in listed_teams)
    if not all_apps:
        for app_id, role_id in user.app_roles.items():
            role = _role(directory, role_id)
            if role is not None and role.level >= Level.LIST:
                apps.add(app_id)
    return ReadScope(
        infra=infra,
        all_apps=all_apps,
        apps=frozenset() if all_apps else frozenset(apps),
        all_teams=all_teams,
        teams=frozenset() if all_teams else frozenset(teams),
    )


def may_read_activity_log(scope: ReadScope) -> bool:
    """The user activity log is gated by *Manage Infrastructure and Users*."""
    return scope.infra


def may_read_entity(scope: ReadScope, directory: Directory, kind: str, entity_id: str) -> bool:
    """The change log of an entity is gated by the right to read tasks performed to it.

    A deployment plan the directory does not know cannot be resolved to its
    applications, so it needs *Manage Infrastructure and Users*.
    """
    plan_apps: list[str] = []
    if kind == "deployment_plan":
        plan_apps = directory.plan_applications(entity_id) or []
    return scope.allows(row_scope(kind, entity_id, plan_apps))
