"""The analysts' views of the log: friendly columns over `audit_events`, and their data dictionary.

`analyst_events` is every task of the console (the query service's records of reads left
out), `analyst_log_reads` those records alone; both have the columns of `COLUMNS`, which
the view DDL (`storage.migrations`, migration 11), `auditlog schema --describe` and
docs/analyst-views.md are all made from. Against the stored row:

- what is absent is NULL, not `''` (environment, names, reason, ids);
- related entities are one array of named tuples, not three parallel arrays;
- `changes` is an array of named tuples (field, old, new), the values as JSON text;
- `environment_name` is the environment's display name in the directory as it is now.

A change to `COLUMNS` needs a migration that replaces the views (`CREATE OR REPLACE VIEW`
from `view_statements()`): a migration's text is what it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from storage.scope_predicate import SCOPE_VIEW_PREDICATE


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql: str
    type: str
    meaning: str


COLUMNS: Final[tuple[Column, ...]] = (
    Column("event_id", "e.event_id", "UUID", "The event's id: stored once, forever."),
    Column(
        "occurred_at",
        "e.occurred_at",
        "DateTime64(3, 'UTC')",
        "When the task was performed, by the clock of the service that reported it.",
    ),
    Column(
        "received_at",
        "e.received_at",
        "DateTime64(3, 'UTC')",
        "When the pipeline received it (the Kafka broker's timestamp, or the time of the HTTP request).",
    ),
    Column(
        "infrastructure",
        "e.infrastructure",
        "LowCardinality(String)",
        "The infrastructure (tenant) the task belongs to.",
    ),
    Column(
        "environment",
        "nullIf(e.environment, '')",
        "LowCardinality(Nullable(String))",
        "The environment's id (`env-prod`), NULL for a task that touched none.",
    ),
    Column(
        "environment_name",
        "nullIf(env.name, '')",
        "Nullable(String)",
        "The environment's display name in the directory as it is now (`Production`).",
    ),
    Column("actor_id", "e.actor_id", "String", "Who performed the task: a user's id, or a service's."),
    Column(
        "actor_name",
        "nullIf(e.actor_name, '')",
        "Nullable(String)",
        "The actor's display name when the task was recorded.",
    ),
    Column("actor_type", "e.actor_type", "LowCardinality(String)", "`user`, `service` or `system`."),
    Column("actor_ip", "nullIf(e.actor_ip, '')", "Nullable(String)", "The address the task came from."),
    Column(
        "actor_user_agent", "nullIf(e.actor_user_agent, '')", "Nullable(String)", "The client's user agent."
    ),
    Column("actor_session_id", "nullIf(e.actor_session_id, '')", "Nullable(String)", "The console session."),
    Column(
        "action",
        "e.action",
        "LowCardinality(String)",
        "What was done: `<entity kind>.<verb>` (`application.deploy`, `role.update`).",
    ),
    Column(
        "target_kind",
        "e.target_kind",
        "LowCardinality(String)",
        "The kind of entity acted on (`application`, `user`, `role`, ...).",
    ),
    Column("target_id", "e.target_id", "String", "The id of the entity acted on."),
    Column(
        "target_name",
        "nullIf(e.target_name, '')",
        "Nullable(String)",
        "Its display name when the task was recorded.",
    ),
    Column(
        "related",
        "arrayMap((k, i, n) -> CAST((k, i, nullIf(n, '')), "
        "'Tuple(kind String, id String, name Nullable(String))'), "
        "e.related_kinds, e.related_ids, e.related_names)",
        "Array(Tuple(kind String, id String, name Nullable(String)))",
        "The other entities the task involved (the environment deployed to, the user granted, ...): "
        "`related.kind`, `arrayExists(r -> r.id = 'env-prod', related)`.",
    ),
    Column(
        "outcome",
        "e.outcome",
        "LowCardinality(String)",
        "`success`, `failure` (allowed, did not succeed) or `denied`.",
    ),
    Column("reason", "nullIf(e.reason, '')", "Nullable(String)", "Why it failed or was denied."),
    Column(
        "changes",
        "arrayMap(c -> CAST((JSONExtractString(c, 'field'), JSONExtractRaw(c, 'old'), "
        "JSONExtractRaw(c, 'new')), 'Tuple(field String, old String, new String)'), "
        "JSONExtractArrayRaw(e.changes))",
        "Array(Tuple(field String, old String, new String))",
        "What changed, field by field; `old` and `new` are JSON text (`null` where there was none): "
        "`JSONExtractString(c.new)` for a string.",
    ),
    Column(
        "details",
        "e.details",
        "String",
        "Anything else the service reported, as a JSON object: `JSONExtractString(details, 'version_tag')`.",
    ),
    Column(
        "source_service", "e.source_service", "LowCardinality(String)", "The service that reported the task."
    ),
    Column("source_host", "nullIf(e.source_host, '')", "Nullable(String)", "The host it ran on."),
    Column(
        "source_version", "nullIf(e.source_version, '')", "LowCardinality(Nullable(String))", "Its version."
    ),
    Column(
        "request_id", "nullIf(e.request_id, '')", "Nullable(String)", "The request that carried the task."
    ),
    Column(
        "correlation_id",
        "nullIf(e.correlation_id, '')",
        "Nullable(String)",
        "Ties the tasks of one operation together (a deployment plan's steps).",
    ),
    Column(
        "plan_application_ids",
        "e.plan_app_ids",
        "Array(String)",
        "For a deployment plan: the applications it deploys (from the directory at ingest).",
    ),
    Column(
        "application_team_id",
        "nullIf(e.app_team_id, '')",
        "Nullable(String)",
        "For an application: the team that owned it at ingest.",
    ),
    Column(
        "ingest_source",
        "e.ingest_source",
        "LowCardinality(String)",
        "How the row entered: `kafka`, `api`, `file`, `demo`, or `read-audit` (the API's own records).",
    ),
    Column(
        "ingest_key_id",
        "nullIf(e.ingest_key_id, '')",
        "LowCardinality(Nullable(String))",
        "The API key an HTTP ingest was posted with.",
    ),
    Column(
        "log",
        "nullIf(e.log, '')",
        "LowCardinality(Nullable(String))",
        "The Merkle log the row is a leaf of (`audit.raw/3`, `local`): docs/tamper-evidence.md.",
    ),
    Column("leaf_index", "e.leaf_index", "UInt64", "Its position in that log."),
)

# The records of reads are the query service's own (`audit_log.read`, `audit_log.export`).
_READS = "startsWith(e.action, 'audit_log.')"
VIEWS: Final[dict[str, tuple[str, str]]] = {
    "analyst_events": (f"NOT {_READS}", "Every task of the console, the records of reads left out."),
    "analyst_log_reads": (_READS, "The query service's records of who read the log, and what."),
}
_ENVIRONMENTS = (
    "(SELECT infrastructure, id, JSONExtractString(argMax(entity, version), 'name') AS name "
    "FROM {db}.directory_entities WHERE kind = 'environment' GROUP BY infrastructure, id)"
)


def view_select(view: str, *, rows: str = "{db}.audit_events") -> str:
    """The SELECT of one view over `rows` (the stored rows, or a caller's share of them)."""
    where = VIEWS[view][0]
    select = ",\n    ".join(f"{c.sql} AS {c.name}" for c in COLUMNS)
    return (
        f"SELECT\n    {select}\nFROM {rows} AS e\n"
        f"LEFT JOIN {_ENVIRONMENTS} AS env\n"
        "ON env.infrastructure = e.infrastructure AND env.id = e.environment\n"
        f"WHERE {where}"
    )


def view_statements(*, replace: bool = False) -> tuple[str, ...]:
    create = "CREATE OR REPLACE VIEW {db}." if replace else "CREATE VIEW IF NOT EXISTS {db}."
    return tuple(f"{create}{name} AS\n{view_select(name)}" for name in VIEWS)


def scoped_name(view: str) -> str:
    """The parameterized view of `view` cut to one caller's rows (`POST /v1/sql`)."""
    return f"{view}_for"


def scoped_view_statements() -> tuple[str, ...]:
    """Each view over the rows of a scope given as parameters (`SCOPE_VIEW_PREDICATE`)."""
    rows = f"(SELECT * FROM {{db}}.audit_events WHERE {SCOPE_VIEW_PREDICATE})"
    return tuple(
        f"CREATE VIEW IF NOT EXISTS {{db}}.{scoped_name(name)} AS\n{view_select(name, rows=rows)}"
        for name in VIEWS
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def describe() -> str:
    """The data dictionary, as a Markdown document (`auditlog schema --describe`)."""
    lines = ["# The analyst views", ""]
    for name, (_, meaning) in VIEWS.items():
        lines.append(f"- `{name}`: {meaning}")
    lines += ["", "Both have these columns:", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | `{c.type}` | {_cell(c.meaning)} |" for c in COLUMNS]
    return "\n".join(lines) + "\n"
