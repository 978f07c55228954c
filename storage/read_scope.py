"""Read-scope tokens: what a row needs from a caller, written at ingest.

A row carries every token it requires (all of them, AND). The caller side, the
expansion of grants into tokens at query time, lives in `query_api.permissions`;
this module only fixes the vocabulary so that writer and reader agree.

- `infra`: *Manage Infrastructure and Users*
- `app:<id>`: *List* level or higher on that application
- `team:<id>`: *Manage Teams and Application Roles* for that team
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

INFRA: Final = "infra"
APP_PREFIX: Final = "app:"
TEAM_PREFIX: Final = "team:"

_INFRA_KINDS: Final = frozenset({"user", "role", "infrastructure", "environment"})


def app_token(app_id: str) -> str:
    return APP_PREFIX + app_id


def team_token(team_id: str) -> str:
    return TEAM_PREFIX + team_id


def row_scope(target_kind: str, target_id: str, plan_app_ids: Sequence[str]) -> list[str]:
    """Tokens a caller needs to read a task performed to (target_kind, target_id).

    Unknown kinds fall back to `infra`, the strictest gate: fail closed.
    """
    if target_kind == "application":
        return [app_token(target_id)]
    if target_kind == "deployment_plan":
        if not plan_app_ids:
            return [INFRA]
        return sorted({app_token(a) for a in plan_app_ids})
    if target_kind == "team":
        return [team_token(target_id)]
    if target_kind in _INFRA_KINDS:
        return [INFRA]
    return [INFRA]


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What one caller may read, as token sets. Built only by `query_api.permissions.scope_for`.

    `all_apps` / `all_teams` stand for every application / team, including ones
    the directory has not heard of yet (a default role with List, say).
    """

    infra: bool
    all_apps: bool
    apps: frozenset[str]
    all_teams: bool
    teams: frozenset[str]

    @property
    def sees_everything(self) -> bool:
        return self.infra and self.all_apps and self.all_teams

    @property
    def sees_nothing(self) -> bool:
        return not (self.infra or self.all_apps or self.apps or self.all_teams or self.teams)

    def allows(self, tokens: Sequence[str]) -> bool:
        """The same rule as `predicate`, in Python (for single rows and tests)."""
        if not tokens:
            return False
        for t in tokens:
            if t == INFRA:
                ok = self.infra
            elif t.startswith(APP_PREFIX):
                ok = self.all_apps or t[len(APP_PREFIX) :] in self.apps
            elif t.startswith(TEAM_PREFIX):
                ok = self.all_teams or t[len(TEAM_PREFIX) :] in self.teams
            else:
                ok = False
            if not ok:
                return False
        return True

    def predicate(self) -> tuple[str, dict[str, object]]:
        """The mandatory SQL predicate, with its bound parameters.

        Reads `scope_key` (one token, LowCardinality: `IN` is decided once per
        dictionary entry) and `scope_multi` (deployment plans' several tokens,
        empty on other rows, so nearly free to read). A row with no token at all
        matches neither branch: fail closed. Measured at 10M rows: `has(array,
        x)` against a 1,000-token grant list took minutes; `x IN set`, 0.3 s.
        """
        if self.sees_nothing:
            return "0", {}
        if self.sees_everything:
            return "(scope_key != '' OR notEmpty(scope_multi))", {}
        tokens = ([INFRA] if self.infra else []) + sorted(
            [app_token(a) for a in self.apps] + [team_token(t) for t in self.teams]
        )

        def allowed(x: str) -> str:
            terms = [f"{x} IN {{s_tokens:Array(String)}}"]
            if self.all_apps:
                terms.append(f"startsWith({x}, '{APP_PREFIX}')")
            if self.all_teams:
                terms.append(f"startsWith({x}, '{TEAM_PREFIX}')")
            return " OR ".join(terms)

        sql = (
            f"(({allowed('scope_key')}) OR (scope_key = '' AND notEmpty(scope_multi) "
            f"AND arrayAll(t -> {allowed('t')}, scope_multi)))"
        )
        return sql, {"s_tokens": tokens}


NO_ACCESS = ReadScope(infra=False, all_apps=False, apps=frozenset(), all_teams=False, teams=frozenset())
