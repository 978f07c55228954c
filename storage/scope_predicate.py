"""The SQL form of a `ReadScope`: the mandatory predicate of every read of the event tables.

It reads two columns every event table and index has: `infrastructure` and
`scope_key`, the row's one token (LowCardinality, so `IN` is decided once per
dictionary entry: measured at 10M rows, `has(array, x)` against a 1,000-token
grant list took minutes, `x IN set` 0.3 s). What a token requires was resolved
by `scope_for` against the current directory; this only matches tokens. A row
with no token matches nothing: fail closed.
"""

from __future__ import annotations

from typing import Any

from producers.contract.permissions import APP_PREFIX, PLAN_PREFIX, TEAM_PREFIX, ReadScope


def scope_predicate(scope: ReadScope) -> tuple[str, dict[str, Any]]:
    """`(sql, params)`: the caller's rows, values bound (prefixes are constants of the model)."""
    if not isinstance(scope, ReadScope):
        raise TypeError("every read needs a ReadScope from producers.contract.permissions.scope_for")
    if scope.sees_nothing:
        return "0", {}
    params: dict[str, Any] = {"s_infra": scope.infrastructure}
    if scope.sees_everything:
        return "(infrastructure = {s_infra:String} AND scope_key != '')", params
    terms = []
    if scope.tokens:
        terms.append("scope_key IN {s_tokens:Array(String)}")
        params["s_tokens"] = list(scope.tokens)
    if scope.all_apps:
        terms.append(f"startsWith(scope_key, '{APP_PREFIX}')")
    if scope.all_teams:
        terms.append(f"startsWith(scope_key, '{TEAM_PREFIX}')")
    if scope.unknown_plans:
        # Every plan but the known ones the caller may not read (usually none).
        plan = f"startsWith(scope_key, '{PLAN_PREFIX}')"
        if scope.denied_plans:
            plan += " AND scope_key NOT IN {s_denied_plans:Array(String)}"
            params["s_denied_plans"] = sorted(PLAN_PREFIX + p for p in scope.denied_plans)
        terms.append(f"({plan})")
    return f"(infrastructure = {{s_infra:String}} AND ({' OR '.join(terms)}))", params


# The same predicate as one text with the scope as parameters, for a parameterized view: its
# body is resolved apart from the query that calls it, so nothing the caller's query defines
# (a lambda named like a function, an alias) reaches into it, where a CTE's body would be
# resolved inside the caller's query (`storage.analyst_sql`).
SCOPE_VIEW_PREDICATE = (
    "(infrastructure = {s_infra:String} AND scope_key != '' AND ("
    "{s_everything:UInt8} = 1 "
    "OR scope_key IN {s_tokens:Array(String)} "
    f"OR ({{s_all_apps:UInt8}} = 1 AND startsWith(scope_key, '{APP_PREFIX}')) "
    f"OR ({{s_all_teams:UInt8}} = 1 AND startsWith(scope_key, '{TEAM_PREFIX}')) "
    f"OR ({{s_unknown_plans:UInt8}} = 1 AND startsWith(scope_key, '{PLAN_PREFIX}') "
    "AND scope_key NOT IN {s_denied_plans:Array(String)})))"
)
SCOPE_VIEW_TYPES: dict[str, str] = {
    "s_infra": "String",
    "s_everything": "UInt8",
    "s_tokens": "Array(String)",
    "s_all_apps": "UInt8",
    "s_all_teams": "UInt8",
    "s_unknown_plans": "UInt8",
    "s_denied_plans": "Array(String)",
}


def scope_view_args(scope: ReadScope) -> dict[str, Any]:
    """The values of SCOPE_VIEW_PREDICATE's parameters for `scope` (a scope that sees nothing
    names no infrastructure and no token)."""
    if not isinstance(scope, ReadScope):
        raise TypeError("every read needs a ReadScope from producers.contract.permissions.scope_for")
    if scope.sees_nothing:
        return {
            "s_infra": "",
            "s_everything": 0,
            "s_tokens": [],
            "s_all_apps": 0,
            "s_all_teams": 0,
            "s_unknown_plans": 0,
            "s_denied_plans": [],
        }
    return {
        "s_infra": scope.infrastructure,
        "s_everything": int(scope.sees_everything),
        "s_tokens": list(scope.tokens),
        "s_all_apps": int(scope.all_apps),
        "s_all_teams": int(scope.all_teams),
        "s_unknown_plans": int(scope.unknown_plans),
        "s_denied_plans": sorted(PLAN_PREFIX + p for p in scope.denied_plans),
    }
