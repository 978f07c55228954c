"""The stored record: one row of `audit_events`, the contract flattened plus enrichment.

`COLUMNS` is the single list of stored columns, in insert order; the writer, the
reader and a schema test all use it, so the table and the code cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("event_id", "UUID"),
    # The first 128 bits of the SHA-256 of the event as sent (stream.steps.content_hash):
    # what tells a replay (same content, a duplicate) from a conflict (other content under
    # a stored id). Internal, like the scope and the lineage.
    ("content_hash", "UInt128"),
    ("schema_version", "UInt8"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("received_at", "DateTime64(3, 'UTC')"),
    ("infrastructure", "LowCardinality(String)"),
    ("environment", "LowCardinality(String)"),
    ("actor_id", "String"),
    ("actor_name", "String"),
    ("actor_type", "LowCardinality(String)"),
    ("actor_ip", "String"),
    ("actor_user_agent", "String"),
    ("actor_session_id", "String"),
    ("action", "LowCardinality(String)"),
    ("target_kind", "LowCardinality(String)"),
    ("target_id", "String"),
    ("target_name", "String"),
    ("related_kinds", "Array(LowCardinality(String))"),
    ("related_ids", "Array(String)"),
    ("related_names", "Array(String)"),
    ("entity_keys", "Array(String)"),
    ("outcome", "LowCardinality(String)"),
    ("reason", "String"),
    ("changes", "String"),
    ("details", "String"),
    ("source_service", "LowCardinality(String)"),
    ("source_host", "String"),
    ("source_version", "LowCardinality(String)"),
    ("request_id", "String"),
    ("correlation_id", "String"),
    ("plan_app_ids", "Array(String)"),
    ("app_team_id", "String"),
    # The row's read-scope token (producers.contract.permissions.row_token): what it is
    # about, resolved against the current directory when read. LowCardinality: matched
    # against the caller's token set once per dictionary entry.
    ("scope_key", "LowCardinality(String)"),
    ("ingest_source", "LowCardinality(String)"),
    # Provenance: the id of the API key an event was posted with (HTTP ingest); Kafka's own
    # lineage (topic, partition, offset) says where a worker read it.
    ("ingest_key_id", "LowCardinality(String)"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "Int32"),
    ("kafka_offset", "Int64"),
    # The row's place in the Merkle tree (producers.contract.tlog): its log (one per Kafka
    # partition, `local` for everything else) and its leaf index there, given by the writer.
    ("log", "LowCardinality(String)"),
    ("leaf_index", "UInt64"),
)

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in COLUMNS)
TREE_COLUMNS: Final[tuple[str, ...]] = ("log", "leaf_index")
# What enrichment emits: every column but the tree's, which the writer fills in.
ENRICHED_COLUMNS: Final[tuple[str, ...]] = tuple(c for c in COLUMN_NAMES if c not in TREE_COLUMNS)

# Columns returned by the API; lineage and scope stay internal.
PUBLIC_COLUMNS: Final[tuple[str, ...]] = tuple(
    c
    for c in COLUMN_NAMES
    if c not in {"content_hash", "scope_key", "kafka_topic", "kafka_partition", "kafka_offset"}
)

# What a change log is looked up by: the row's key, its scope and the columns the
# listing filters use, but none of the payload. A change log finds the (occurred_at,
# event_id) of a page in audit_entity_index (these columns, one row per entity an event
# touched, ordered by entity) and reads the page's rows from audit_events by primary key:
# a full row per entity touched took 127 of 306 bytes per event, this takes 36.
KEY_COLUMNS: Final[tuple[str, ...]] = (
    "occurred_at",
    "event_id",
    "scope_key",
    "actor_id",
    "action",
    "target_kind",
    "environment",
    "outcome",
    "infrastructure",
)

Row = dict[str, Any]


def entity_key(kind: str, ident: str) -> str:
    return f"{kind}/{ident}"
