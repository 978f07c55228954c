"""A ClickHouse role per directory user, whose row policy is that user's read scope as it is now.

For analysts who connect to a ClickHouse server with their own tools (clickhouse-client,
Grafana, DBeaver) rather than through `POST /v1/sql`. Three parts:

- `analyst_scopes` (migration 14): per role, the values of `SCOPE_VIEW_PREDICATE`'s
  parameters for its user, resolved by `scope_for` against the current directory. It is
  rewritten whenever a directory of the store changes (`AnalystScopes.sync`, run by the
  directory's writers: the API's PUT /v1/directory, the worker following audit.directory,
  `auditlog directory load`) when `AUDITLOG_STORE_ANALYST_ROLES` is on; a user gone from
  the directory keeps a row that grants nothing (fail closed).
- the dictionary `analyst_scopes_dict` over it, reloaded after each sync, so that a change
  of grants applies to the next query;
- per directory user, a role `auditlog:<infrastructure>/<user>`, SELECT on the analyst
  views and the two tables they read, and a row policy on each of those tables: on
  `audit_events` the scope predicate with every parameter read from the dictionary under
  the role's name; on `directory_entities` the environments of the role's infrastructure
  (the views' display names). The service's own user gets a policy that passes every row:
  once a table has a row policy, a user none names sees nothing of it.

The views are SQL SECURITY INVOKER (ClickHouse's default for plain views): their reads run
as the analyst, so the analyst's policies filter them; a DEFINER view would read as its
definer and bypass them. An analyst may also read `audit_events` itself, filtered the same.

`ddl()` writes the statements (`auditlog schema --analyst-roles`). Every value in them is a
ClickHouse string literal or a quoted identifier (`quote_literal`, `quote_identifier`),
since DDL takes no bound parameters. They parse in ClickHouse's own parser and the policy
conditions select exactly the rows the reference model allows, tested offline in chDB
(tests/test_analyst_roles.py); applying them needs a server's access control, which is
tested where `AUDITLOG_TEST_CLICKHOUSE_URL` names a server, and argued otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

import orjson

from producers.contract.directory import Directories
from producers.contract.permissions import Caller, scope_for
from storage.engine import Engine
from storage.migrations import check_identifier
from storage.scope_predicate import SCOPE_VIEW_PREDICATE, SCOPE_VIEW_TYPES, scope_view_args

DICTIONARY: Final = "analyst_scopes_dict"
DICTIONARY_USER: Final = "auditlog_dictionary"
"""Reads `analyst_scopes` for the dictionary: no password, from this host only, nothing else."""
ROLE_PREFIX: Final = "auditlog:"
ANALYST_TABLES: Final = ("analyst_events", "analyst_log_reads", "audit_events", "directory_entities")
_NOTHING: Final[dict[str, Any]] = {
    name: [] if t.startswith("Array") else (0 if t == "UInt8" else "") for name, t in SCOPE_VIEW_TYPES.items()
}


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(value: str) -> str:
    return "`" + value.replace("\\", "\\\\").replace("`", "\\`") + "`"


def role_name(infrastructure: str, user_id: str) -> str:
    return f"{ROLE_PREFIX}{infrastructure}/{user_id}"


def scope_rows(
    directories: Directories, infrastructures: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One row per user of these infrastructures' directories: its role and its scope's values."""
    wanted = set(infrastructures) if infrastructures is not None else None
    rows = []
    for directory in directories:
        if wanted is not None and directory.infrastructure not in wanted:
            continue
        for user_id in sorted(directory.users):
            scope = scope_for(Caller(user_id=user_id, infrastructure=directory.infrastructure), directories)
            rows.append(
                {
                    "role": role_name(directory.infrastructure, user_id),
                    "infrastructure": directory.infrastructure,
                    "user_id": user_id,
                    **scope_view_args(scope),
                }
            )
    return rows


def _dictionary_sql(db: str) -> str:
    columns = ", ".join(f"{name} {t}" for name, t in SCOPE_VIEW_TYPES.items())
    newest = ", ".join(f"argMax({name}, version) AS {name}" for name in SCOPE_VIEW_TYPES)
    query = f"SELECT role, {newest} FROM {db}.analyst_scopes GROUP BY role"
    return (
        f"CREATE DICTIONARY IF NOT EXISTS {db}.{DICTIONARY} (role String, {columns}) PRIMARY KEY role "
        f"SOURCE(CLICKHOUSE(QUERY {quote_literal(query)} USER {quote_literal(DICTIONARY_USER)})) "
        "LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(MIN 0 MAX 60)"
    )


def policy_condition(db: str, role: str) -> str:
    """The scope predicate of `role`, each parameter read from the dictionary under its name.
    `scope_key IN <array>` wants a constant set; `has()` takes the dictionary's array."""
    key = f"tuple({quote_literal(role)})"
    sql = SCOPE_VIEW_PREDICATE.replace(
        "scope_key IN {s_tokens:Array(String)}", "has({s_tokens:Array(String)}, scope_key)"
    ).replace(
        "scope_key NOT IN {s_denied_plans:Array(String)}",
        "NOT has({s_denied_plans:Array(String)}, scope_key)",
    )
    for name, ch_type in SCOPE_VIEW_TYPES.items():
        sql = sql.replace(
            f"{{{name}:{ch_type}}}",
            f"dictGet({quote_literal(f'{db}.{DICTIONARY}')}, {quote_literal(name)}, {key})",
        )
    return sql


def directory_condition(db: str, role: str) -> str:
    infra = f"dictGet({quote_literal(f'{db}.{DICTIONARY}')}, 's_infra', tuple({quote_literal(role)}))"
    return f"kind = 'environment' AND infrastructure = {infra}"


def ddl(
    directories: Directories, *, database: str, service_user: str, cluster: str | None = None
) -> list[str]:
    """Every statement, in order, for a server whose schema is migrated (`storage.migrations`).

    On a cluster the policies are made `ON CLUSTER` on the Distributed `audit_events` the
    analysts read and on each node's `audit_events_local` too, so that the filter holds
    whichever user a shard runs the forwarded query as (the initial user, with the cluster's
    interserver secret, or the cluster's own)."""
    db = check_identifier(database)
    on = f" ON CLUSTER {check_identifier(cluster)}" if cluster else ""
    events = ["audit_events", "audit_events_local"] if cluster else ["audit_events"]
    service = quote_identifier(service_user)
    dictionary_user = quote_identifier(DICTIONARY_USER)
    out = [
        f"CREATE USER IF NOT EXISTS {dictionary_user}{on} IDENTIFIED WITH no_password HOST LOCAL",
        f"GRANT{on} SELECT ON {db}.analyst_scopes TO {dictionary_user}",
        _dictionary_sql(db).replace(f"{db}.{DICTIONARY} ", f"{db}.{DICTIONARY}{on} ", 1),
    ]
    for table in [*events, "directory_entities"]:
        out.append(f"CREATE ROW POLICY OR REPLACE auditlog_service{on} ON {db}.{table} USING 1 TO {service}")
    for row in scope_rows(directories):
        role = quote_identifier(row["role"])
        out.append(f"CREATE ROLE IF NOT EXISTS {role}{on}")
        out.extend(f"GRANT{on} SELECT ON {db}.{table} TO {role}" for table in ANALYST_TABLES)
        condition = policy_condition(db, row["role"])
        for table in events:
            out.append(
                f"CREATE ROW POLICY OR REPLACE {role}{on} ON {db}.{table} "
                f"USING {condition} AS PERMISSIVE TO {role}"
            )
        out.append(
            f"CREATE ROW POLICY OR REPLACE {role}{on} ON {db}.directory_entities "
            f"USING {directory_condition(db, row['role'])} AS PERMISSIVE TO {role}"
        )
    return out


class AnalystScopes:
    """Keeps `analyst_scopes` equal to what `scope_for` says now, and the dictionary reloaded."""

    def __init__(self, engine: Engine, *, database: str) -> None:
        self._engine = engine
        self._db = check_identifier(database)

    def stored(self) -> dict[str, dict[str, Any]]:
        newest = ", ".join(f"argMax({name}, version) AS {name}" for name in SCOPE_VIEW_TYPES)
        rows = self._engine.query(
            "SELECT role, argMax(infrastructure, version) AS infrastructure, "
            "argMax(user_id, version) AS user_id, "
            f"{newest} FROM {self._db}.analyst_scopes GROUP BY role"
        )
        return {r["role"]: {k: v for k, v in r.items()} for r in rows}

    def sync(self, directories: Directories, *, infrastructures: Iterable[str] | None = None) -> int:
        """Write the scope of every user of these infrastructures that changed (a user gone gets a
        scope of nothing); returns how many rows were written."""
        wanted = (
            set(infrastructures) if infrastructures is not None else {d.infrastructure for d in directories}
        )
        now = {r["role"]: r for r in scope_rows(directories, wanted)}
        stored = self.stored()
        for role, old in stored.items():
            if old["infrastructure"] in wanted and role not in now:
                now[role] = {
                    "role": role,
                    "infrastructure": old["infrastructure"],
                    "user_id": old["user_id"],
                    **_NOTHING,
                }
        changed = [r for role, r in now.items() if _comparable(stored.get(role)) != _comparable(r)]
        if not changed:
            return 0
        version = time.time_ns()
        self._engine.insert_json(
            f"{self._db}.analyst_scopes",
            columns=("role", "infrastructure", "user_id", *SCOPE_VIEW_TYPES, "version"),
            data=b"\n".join(orjson.dumps({**r, "version": version}) for r in changed),
        )
        self.reload()
        return len(changed)

    def reload(self) -> None:
        """Reload the dictionary where it exists (a server set up with `ddl()`), so the policies
        read the new scopes from the next query on."""
        [found] = self._engine.query(
            "SELECT count() AS n FROM system.dictionaries "
            "WHERE database = {db:String} AND name = {name:String}",
            params={"db": self._db, "name": DICTIONARY},
        )
        if int(found["n"]):
            self._engine.command(f"SYSTEM RELOAD DICTIONARY {self._db}.{DICTIONARY}")


def _comparable(row: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if row is None:
        return None
    values = []
    for name, ch_type in SCOPE_VIEW_TYPES.items():
        value = row[name]
        values.append(
            tuple(sorted(value))
            if ch_type.startswith("Array")
            else (int(value) if ch_type == "UInt8" else value)
        )
    return tuple(values)
