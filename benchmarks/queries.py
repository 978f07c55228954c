"""The questions, asked of both stores: specs, and their PostgreSQL SQL.

A spec is plain data (it crosses into the chDB child as JSON). chDB answers it
through the product's path (`storage.reader.EventReader` with a `ReadScope` from
`query_api.permissions.scope_for`); PostgreSQL through the SQL below, with the
same permission rule, filters, order and keyset condition.
"""

from __future__ import annotations

import re
from typing import Any

from producers.contract.permissions import APP_PREFIX, PLAN_PREFIX, TEAM_PREFIX, ReadScope
from storage.record import PUBLIC_COLUMNS

PAGE_SIZE = 50
DEEP_PAGE = 20
FACETS = ("action", "actor_id", "target_kind", "environment", "outcome")
FACET_SIZE = 10
TIMELINE_BUCKETS = 48

# name, what it is, whether it is a first page (the <100 ms goal applies to those)
QUERIES: tuple[tuple[str, str, bool], ...] = (
    ("global_first", "global log, first page, no filter", True),
    ("global_filtered", "global log, outcome + environment + a month's time range, first page", True),
    ("activity_first", "user activity log of the busiest user, first page", True),
    ("activity_deep", f"user activity log, page {DEEP_PAGE} (keyset cursor)", False),
    ("entity_first", "entity change log of a busy application, first page", True),
    ("entity_deep", f"entity change log, page {DEEP_PAGE} (keyset cursor)", False),
    ("free_text", "global log, free-text search, first page", True),
    ("facets", "facets (top 10 of 5 columns + total) over the whole log", False),
    ("timeline", f"timeline ({TIMELINE_BUCKETS} intervals by outcome) over the whole log", False),
)
QUERY_NAMES = tuple(name for name, _, _ in QUERIES)
FIRST_PAGE = frozenset(name for name, _, first in QUERIES if first)


def spec(name: str, caller: str, targets: dict[str, Any]) -> dict[str, Any]:
    """The concrete question `name` for `caller` ("admin" or "grants") on a data set's targets."""
    s: dict[str, Any] = {"name": name, "caller": caller, "view": "global", "page": 1, "filters": {}}
    if name.startswith("activity"):
        s["view"] = "activity"
        s["actor_id"] = targets["actor_id"]
    if name.startswith("entity"):
        s["view"] = "entity"
        s["entity"] = targets["entity_admin" if caller == "admin" else "entity_grants"]
    if name.endswith("_deep"):
        s["page"] = DEEP_PAGE
    if name == "global_filtered":
        s["filters"] = {
            "outcomes": [targets["outcome"]],
            "environments": [targets["environment"]],
            "since_ms": targets["since_ms"],
            "until_ms": targets["until_ms"],
        }
    if name == "free_text":
        s["text"] = targets["free_text"]
    if name == "facets":
        s["facets"] = True
    if name == "timeline":
        # Open range, from the oldest row to the data set's end (the month windows are its last two).
        s["timeline"] = True
        s["now_ms"] = 2 * targets["until_ms"] - targets["since_ms"]
    return s


# ------------------------------------------------------------------------------ PostgreSQL

# The same columns the product's reader returns, times as epoch milliseconds.
_PG_SELECT = ", ".join(
    [f"e.{c}" for c in PUBLIC_COLUMNS if c not in ("occurred_at", "received_at")]
    + [
        "(extract(epoch FROM e.occurred_at) * 1000)::bigint AS occurred_at_ms",
        "(extract(epoch FROM e.received_at) * 1000)::bigint AS received_at_ms",
    ]
)

# Free text: the product's columns, lower-cased and joined, behind an IMMUTABLE function so
# that a pg_trgm GIN index can be built on it (array_to_string alone is only STABLE).
SEARCH_DOC = (
    "bench_search_doc(e.actor_id, e.actor_name, e.target_id, e.target_name, e.related_names, "
    "e.related_ids, e.reason, e.details, e.changes)"
)


def pg_scope(scope: ReadScope) -> tuple[str, dict[str, Any]]:
    """`storage.scope_predicate`, in PostgreSQL: the same rule over infrastructure and scope_key."""
    if scope.sees_nothing:
        return "false", {}
    params: dict[str, Any] = {"s_infra": scope.infrastructure}
    if scope.sees_everything:
        return "(e.infrastructure = %(s_infra)s AND e.scope_key <> '')", params
    terms = []
    if scope.tokens:
        terms.append("e.scope_key = ANY(%(s_tokens)s::text[])")
        params["s_tokens"] = list(scope.tokens)
    if scope.all_apps:
        terms.append(f"e.scope_key LIKE '{APP_PREFIX}%%'")
    if scope.all_teams:
        terms.append(f"e.scope_key LIKE '{TEAM_PREFIX}%%'")
    if scope.unknown_plans:
        plan = f"e.scope_key LIKE '{PLAN_PREFIX}%%'"
        if scope.denied_plans:
            plan += " AND NOT (e.scope_key = ANY(%(s_denied_plans)s::text[]))"
            params["s_denied_plans"] = sorted(PLAN_PREFIX + p for p in scope.denied_plans)
        terms.append(f"({plan})")
    return f"(e.infrastructure = %(s_infra)s AND ({' OR '.join(terms)}))", params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def pg_where(s: dict[str, Any], scope: ReadScope) -> tuple[str, list[str], dict[str, Any]]:
    """FROM clause, WHERE clauses and parameters of a spec."""
    scope_sql, params = pg_scope(scope)
    clauses = [scope_sql]
    if s["view"] == "entity":
        source = "audit_entity_log l JOIN audit_events e ON e.event_id = l.event_id"
        clauses.append("l.entity_key = %(v_entity)s")
        params["v_entity"] = s["entity"]
    else:
        source = "audit_events e"
    if s["view"] == "activity":
        clauses.append("e.actor_id = %(v_actor)s")
        params["v_actor"] = s["actor_id"]
    f = s.get("filters", {})
    t = "l" if s["view"] == "entity" else "e"
    if f.get("since_ms") is not None:
        clauses.append(f"{t}.occurred_at >= to_timestamp(%(f_since)s / 1000.0)")
        params["f_since"] = f["since_ms"]
    if f.get("until_ms") is not None:
        clauses.append(f"{t}.occurred_at < to_timestamp(%(f_until)s / 1000.0)")
        params["f_until"] = f["until_ms"]
    if f.get("environments"):
        clauses.append("e.environment = ANY(%(f_envs)s::text[])")
        params["f_envs"] = f["environments"]
    if f.get("outcomes"):
        clauses.append("e.outcome = ANY(%(f_outcomes)s::text[])")
        params["f_outcomes"] = f["outcomes"]
    if s.get("text"):
        # Words, as the product's search means them (storage.filters): the trigram index finds
        # the substring, the regular expression keeps it where it is a whole word.
        text = str(s["text"]).lower()
        clauses.append(f"{SEARCH_DOC} LIKE %(q_text)s AND {SEARCH_DOC} ~ %(q_word)s")
        params["q_text"] = "%" + _like_escape(text) + "%"
        params["q_word"] = "(^|[^a-z0-9])" + re.escape(text) + "([^a-z0-9]|$)"
    return source, clauses, params


def pg_page(s: dict[str, Any], scope: ReadScope, after: tuple[Any, str] | None) -> tuple[str, dict[str, Any]]:
    """One page, newest first, after the keyset (occurred_at, event_id) of the previous page's last row."""
    source, clauses, params = pg_where(s, scope)
    t = "l" if s["view"] == "entity" else "e"
    if after is not None:
        clauses.append(f"({t}.occurred_at, {t}.event_id) < (%(c_ts)s, %(c_id)s::uuid)")
        params["c_ts"], params["c_id"] = after
    params["limit"] = PAGE_SIZE + 1
    sql = (
        f"SELECT {_PG_SELECT} FROM {source} WHERE {' AND '.join(clauses)} "
        f"ORDER BY {t}.occurred_at DESC, {t}.event_id DESC LIMIT %(limit)s"
    )
    return sql, params


def pg_keyset_at(s: dict[str, Any], scope: ReadScope, offset: int) -> tuple[str, dict[str, Any]]:
    """The keyset of the row at `offset` (setup only: where page N's cursor points)."""
    source, clauses, params = pg_where(s, scope)
    t = "l" if s["view"] == "entity" else "e"
    params["offset"] = offset
    sql = (
        f"SELECT {t}.occurred_at, {t}.event_id::text FROM {source} WHERE {' AND '.join(clauses)} "
        f"ORDER BY {t}.occurred_at DESC, {t}.event_id DESC OFFSET %(offset)s LIMIT 1"
    )
    return sql, params


def pg_facets(s: dict[str, Any], scope: ReadScope) -> tuple[str, dict[str, Any]]:
    """Top values of each facet column and the total in one GROUPING SETS scan, like the product."""
    source, clauses, params = pg_where(s, scope)
    cols = ", ".join(f"e.{c}" for c in FACETS)
    flags = ", ".join(f"grouping(e.{c}) AS g_{c}" for c in FACETS)
    sets = ", ".join(f"(e.{c})" for c in FACETS)
    params["f_size"] = FACET_SIZE
    sql = (
        f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {', '.join(f'g_{c}' for c in FACETS)} "
        f"ORDER BY count DESC, {', '.join(FACETS)}) AS rn FROM ("
        f"SELECT {flags}, {cols}, count(*) AS count, min(e.actor_name) AS label "
        f"FROM {source} WHERE {' AND '.join(clauses)} GROUP BY GROUPING SETS ({sets}, ())) g) r "
        "WHERE rn <= %(f_size)s"
    )
    return sql, params


def pg_oldest(s: dict[str, Any], scope: ReadScope) -> tuple[str, dict[str, Any]]:
    """The oldest matching row's time, by the time index: where an open timeline starts."""
    source, clauses, params = pg_where(s, scope)
    sql = (
        f"SELECT (extract(epoch FROM e.occurred_at) * 1000)::bigint FROM {source} "
        f"WHERE {' AND '.join(clauses)} ORDER BY e.occurred_at ASC LIMIT 1"
    )
    return sql, params


def pg_timeline(s: dict[str, Any], scope: ReadScope, interval_ms: int) -> tuple[str, dict[str, Any]]:
    """Rows per interval (aligned to the epoch, as toStartOfInterval) and outcome."""
    source, clauses, params = pg_where(s, scope)
    params["t_iv"] = interval_ms
    sql = (
        "SELECT (floor(extract(epoch FROM e.occurred_at) * 1000 / %(t_iv)s) * %(t_iv)s)::bigint AS t, "
        f"e.outcome, count(*) AS n FROM {source} WHERE {' AND '.join(clauses)} GROUP BY 1, 2"
    )
    return sql, params


def facets_out(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """PostgreSQL facet rows in the reader's shape: {total, facets: {column: [{value, count}]}}."""
    out: dict[str, Any] = {"total": 0, "facets": {c: [] for c in FACETS}}
    for r in sorted(rows, key=lambda r: -int(r["count"])):
        grouped = [c for c in FACETS if int(r[f"g_{c}"]) == 0]
        if not grouped:
            out["total"] = int(r["count"])
            continue
        out["facets"][grouped[0]].append({"value": r[grouped[0]], "count": int(r["count"])})
    return out


def same_facets(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same total and the same counts for every value both top lists hold (ties may order apart)."""
    if int(a["total"]) != int(b["total"]):
        return False
    for column in FACETS:
        left = {i["value"]: i["count"] for i in a["facets"].get(column, [])}
        right = {i["value"]: i["count"] for i in b["facets"].get(column, [])}
        if any(left[v] != right[v] for v in left.keys() & right.keys()):
            return False
        if len(left.keys() & right.keys()) < min(len(left), len(right)) - 2:
            return False
    return True
