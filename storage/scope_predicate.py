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
