"""The schema as a DDL script, for one server or a ClickHouse cluster, generated from `storage.migrations`.

Nothing here restates a column list: every table comes from a statement of
`MIGRATIONS` (itself built from `storage.record.COLUMNS`), parsed and rewritten.

Single node: exactly what `migrate()` runs, as one script.

Cluster (`cluster=NAME`), every statement `ON CLUSTER NAME`:

* The big tables (`audit_events`, `audit_entity_index`, `dead_letters`) become a
  `<table>_local` on every node, `ReplicatedMergeTree('/clickhouse/tables/{shard}/
  {database}/{table}', '{replica}')`, and a `Distributed` table under the
  original name over them, so the writer and the reader run unchanged.
* The materialized view that fills the entity index reads each shard's
  `audit_events_local` and writes that shard's `audit_entity_index_local`: an
  event's entity rows live on the event's shard, written in the same insert.
* The analysts' views (plain views) read the Distributed tables, so a query of one
  reads every shard.
* The small tables the API reads on every request (`directory_entities`,
  `api_keys`, `schema_migrations`) are replicated to *every* node (one
  ZooKeeper path without `{shard}`, so `{replica}` must be unique cluster-wide):
  lookups stay local, never fan out.

Sharding key: `cityHash64(event_id)`. The writer's dedupe asks the store which
event_ids of a batch it holds, then inserts the rest; a redelivered event must
therefore land where its first copy is, whatever worker, batch or Kafka
partition carries it the second time. A hash of the event_id is a function of
the event alone, so:

* a redelivered event goes to the same shard as its first copy, and a retried
  insert of the same batch splits into the same per-shard blocks, which the
  Replicated engine's insert deduplication (identical block hash) drops;
* the entity index, filled on the event's shard, declares the same key, so
  `optimize_skip_unused_shards` stays correct. Declaring `cityHash64(entity_key)`
  there while rows are placed by event_id would make ClickHouse skip shards that
  hold the rows. (Sharding the entity index by entity would need the view to write
  through a Distributed table: a second, asynchronous hop per event.)

`rand()` or anything time-based would scatter a redelivered event to another
shard; `shard_key` refuses non-deterministic functions. Dead letters have no
identity to dedupe on and are sharded by `rand()`.

Retention (`retention_days`) is emitted as `ALTER TABLE ... MODIFY SETTING
ttl_only_drop_parts = 1` then `MODIFY TTL`, so it applies as well to a store
that already exists: tables are partitioned by month, so whole parts (a month
of a partition) are dropped once their newest row has expired, never rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from storage.migrations import MIGRATIONS, Migration, check_identifier

ZK_SHARD_PATH: Final = "/clickhouse/tables/{shard}/{database}/{table}"
ZK_ALL_NODES_PATH: Final = "/clickhouse/tables/all/{database}/{table}"
LOCAL_SUFFIX: Final = "_local"
DEFAULT_SHARD_KEY: Final = "cityHash64(event_id)"

# Where each table of the migrations lives on a cluster. A table a new migration adds
# must be placed here, or generation fails (and with it tests/test_cluster_ddl.py).
# Value: the sharding key, or None for "replicated to every node, no Distributed table".
_EVENT_KEY: Final = "<event key>"
PLACEMENT: Final[dict[str, str | None]] = {
    "audit_events": _EVENT_KEY,
    "audit_entity_index": _EVENT_KEY,  # filled on the event's shard by the view
    "event_keys": _EVENT_KEY,  # likewise: an id's key lives where its row does
    "dead_letters": "rand()",
    # Leaves are filled on their event's shard by the view; the levels above and the
    # checkpoints are small (one node per leaf at most, a checkpoint a minute).
    "merkle_nodes": _EVENT_KEY,
    "checkpoints": None,
    "tree_epoch": None,
    "directory_entities": None,
    "api_keys": None,
    "schema_migrations": None,
    "retention_policies": None,
    "legal_holds": None,
    # A purged row's tombstone, on the shard its row was on.
    "purged_rows": _EVENT_KEY,
    # Read by each node's dictionary (storage.analyst_roles), locally.
    "analyst_scopes": None,
}

# Retention: the time column each expiring table is dropped by.
TTL_COLUMNS: Final[dict[str, str]] = {
    "audit_events": "occurred_at",
    "audit_entity_index": "occurred_at",
    "event_keys": "occurred_at",
    "dead_letters": "received_at",
}

# migrate() creates this table inline (not in MIGRATIONS); the test compares it with
# SHOW CREATE TABLE of a migrated database, so the two cannot drift.
SCHEMA_MIGRATIONS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
    "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
    "ENGINE = ReplacingMergeTree ORDER BY version"
)

_NONDETERMINISTIC = re.compile(
    r"\b(rand\w*|generateUUID\w*|now\w*|today|yesterday|randomString\w*|randUniform|serverUUID|hostName)"
    r"\s*\(",
    re.IGNORECASE,
)

_CREATE_TABLE = re.compile(
    r"^\s*CREATE TABLE IF NOT EXISTS \{db\}\.(?P<name>\w+)\s*\((?P<body>.*)\)\s*"
    r"ENGINE = (?P<engine>\w+)(?:\((?P<args>[^)]*)\))?(?P<rest>.*?)\s*$",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(
    r"^\s*CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(?P<name>\w+) TO \{db\}\.(?P<target>\w+) AS\s+"
    r"(?P<select>.*?)\s*$",
    re.DOTALL,
)
_CREATE_PLAIN_VIEW = re.compile(
    r"^\s*CREATE (?:OR REPLACE VIEW|VIEW IF NOT EXISTS) \{db\}\.(?P<name>\w+) AS\s+(?P<select>.*?)\s*$",
    re.DOTALL,
)
_DB_REF = re.compile(r"\{db\}\.(\w+)")
_NOT_A_COLUMN = ("INDEX ", "PROJECTION ", "CONSTRAINT ")

Kind = Literal["database", "table", "distributed", "view", "insert", "alter"]


@dataclass(frozen=True)
class Statement:
    """One statement of the script. `table` is the object it creates or changes."""

    kind: Kind
    table: str
    sql: str
    engine: str = ""


def split_top_level(body: str, sep: str = ",") -> list[str]:
    """`body` split on `sep` outside parentheses and quotes, each part stripped."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for i, ch in enumerate(body):
        if quote:
            if ch == quote and body[i - 1] != "\\":
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    return [p for p in parts if p]


def column_definitions(body: str) -> list[str]:
    """The column definitions of a CREATE TABLE body (indexes and projections left out)."""
    return [p for p in split_top_level(body) if not p.upper().startswith(_NOT_A_COLUMN)]


def _placement(table: str) -> str | None:
    if table not in PLACEMENT:
        raise ValueError(
            f"table {table!r} of the migrations has no cluster placement; add it to "
            "storage.cluster_ddl.PLACEMENT (a sharding key, or None to replicate it to every node)"
        )
    return PLACEMENT[table]


def check_shard_key(expr: str) -> str:
    expr = expr.strip()
    if not expr or ";" in expr or "--" in expr:
        raise ValueError(f"{expr!r} is not a sharding expression")
    if _NONDETERMINISTIC.search(expr):
        raise ValueError(
            f"sharding key {expr!r} is not a function of the event: a redelivered event could land "
            "on another shard and escape the writer's dedupe"
        )
    return expr


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _replicated(engine: str, args: str | None, path: str) -> str:
    extra = f", {args.strip()}" if args and args.strip() else ""
    return f"Replicated{engine}({_quote(path)}, '{{replica}}'{extra})"


def _engine_text(engine: str, args: str | None) -> str:
    return f"{engine}({args})" if args is not None else engine


def _cluster_table(stmt: str, m: re.Match[str], *, db: str, cluster: str, shard_key: str) -> list[Statement]:
    name, body, engine, args, rest = m["name"], m["body"], m["engine"], m["args"], m["rest"]
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise ValueError(f"{name}: cannot make engine {engine} replicated")
    key = _placement(name)
    on = f"ON CLUSTER {cluster}"
    if key is None:
        sql = (
            f"CREATE TABLE IF NOT EXISTS {db}.{name} {on} ({body})\n"
            f"ENGINE = {_replicated(engine, args, ZK_ALL_NODES_PATH)}{rest}"
        )
        return [Statement("table", name, sql, f"Replicated{engine}")]
    key = shard_key if key == _EVENT_KEY else key
    local = name + LOCAL_SUFFIX
    local_sql = (
        f"CREATE TABLE IF NOT EXISTS {db}.{local} {on} ({body})\n"
        f"ENGINE = {_replicated(engine, args, ZK_SHARD_PATH)}{rest}"
    )
    columns = ",\n    ".join(column_definitions(body))
    dist_sql = (
        f"CREATE TABLE IF NOT EXISTS {db}.{name} {on} (\n    {columns}\n)\n"
        f"ENGINE = Distributed({_quote(cluster)}, {_quote(db)}, {_quote(local)}, {key})"
    )
    return [
        Statement("table", local, local_sql, f"Replicated{engine}"),
        Statement("distributed", name, dist_sql, "Distributed"),
    ]


def _local_name(table: str) -> str:
    return table + LOCAL_SUFFIX if _placement(table) is not None else table


def _cluster_view(m: re.Match[str], *, db: str, cluster: str) -> Statement:
    # The view runs on each node, on the rows inserted into that node's local table.
    select = _DB_REF.sub(lambda r: f"{db}.{_local_name(r[1])}", m["select"])
    target = _local_name(m["target"])
    sql = (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{m['name']} ON CLUSTER {cluster} "
        f"TO {db}.{target} AS\n{select}"
    )
    return Statement("view", m["name"], sql, "MaterializedView")


def _single(stmt: str, db: str) -> Statement:
    sql = stmt.strip().replace("{db}", db)
    if m := _CREATE_TABLE.match(stmt):
        return Statement("table", m["name"], sql, m["engine"])
    if m := _CREATE_VIEW.match(stmt):
        return Statement("view", m["name"], sql, "MaterializedView")
    if m := _CREATE_PLAIN_VIEW.match(stmt):
        return Statement("view", m["name"], sql, "View")
    raise ValueError(f"unsupported migration statement: {stmt.strip()[:80]!r}")


def _recorded(migrations: Sequence[Migration], db: str) -> Statement:
    """Record the versions as migrate() does; re-running the script adds nothing twice."""
    rows = ", ".join(f"({m.version}, {_quote(m.name)})" for m in migrations)
    sql = (
        f"INSERT INTO {db}.schema_migrations (version, name)\n"
        f"SELECT version, name FROM values('version UInt32, name String', {rows})\n"
        f"WHERE version NOT IN (SELECT version FROM {db}.schema_migrations)"
    )
    return Statement("insert", "schema_migrations", sql)


def _retention(db: str, cluster: str | None, days: int) -> list[Statement]:
    on = f" ON CLUSTER {cluster}" if cluster else ""
    out: list[Statement] = []
    for table, column in TTL_COLUMNS.items():
        target = _local_name(table) if cluster else table
        # Setting first: MODIFY TTL then materializes by dropping whole parts, not rewriting them.
        out.append(
            Statement(
                "alter", target, f"ALTER TABLE {db}.{target}{on} MODIFY SETTING ttl_only_drop_parts = 1"
            )
        )
        out.append(
            Statement(
                "alter",
                target,
                f"ALTER TABLE {db}.{target}{on} MODIFY TTL toDateTime({column}) + INTERVAL {days} DAY",
            )
        )
    return out


def statements(
    *,
    database: str = "auditlog",
    cluster: str | None = None,
    shard_key: str = DEFAULT_SHARD_KEY,
    retention_days: int | None = None,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[Statement]:
    """The whole schema, in order: database, schema_migrations, each migration, versions, retention."""
    db = check_identifier(database)
    if retention_days is not None and retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    out: list[Statement] = []
    if cluster is None:
        out.append(Statement("database", db, f"CREATE DATABASE IF NOT EXISTS {db}"))
        out.append(_single(SCHEMA_MIGRATIONS_DDL, db))
        for migration in migrations:
            if not migration.upgrade_only:
                out.extend(_single(s, db) for s in migration.statements)
    else:
        cluster = check_identifier(cluster)
        shard_key = check_shard_key(shard_key)
        out.append(Statement("database", db, f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}"))
        fresh = (s for m in migrations if not m.upgrade_only for s in m.statements)
        for stmt in (SCHEMA_MIGRATIONS_DDL, *fresh):
            if m := _CREATE_TABLE.match(stmt):
                out.extend(_cluster_table(stmt, m, db=db, cluster=cluster, shard_key=shard_key))
            elif m := _CREATE_VIEW.match(stmt):
                out.append(_cluster_view(m, db=db, cluster=cluster))
            elif m := _CREATE_PLAIN_VIEW.match(stmt):
                # A query's view runs where it is asked, over the Distributed tables: every shard.
                sql = f"CREATE VIEW IF NOT EXISTS {db}.{m['name']} ON CLUSTER {cluster} AS\n{m['select']}"
                out.append(Statement("view", m["name"], sql.replace("{db}", db), "View"))
            else:
                raise ValueError(f"cannot translate migration statement for a cluster: {stmt.strip()[:80]!r}")
    if migrations:
        out.append(_recorded(migrations, db))
    if retention_days is not None:
        out.extend(_retention(db, cluster, retention_days))
    return out


def render(stmts: Iterable[Statement], *, header: Sequence[str] = ()) -> str:
    """A script for `clickhouse-client --queries-file`: comment header, statements ending in `;`."""
    lines = [f"-- {h}".rstrip() for h in header]
    body = "\n\n".join(s.sql.strip() + ";" for s in stmts)
    return ("\n".join(lines) + "\n\n" if lines else "") + body + "\n"


def parse_script(text: str) -> list[str]:
    """The statements of a script written by `render` (comment lines dropped)."""
    kept = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return [s.strip() for s in split_top_level(kept, ";")]
