"""Versioned, idempotent schema migrations.

Each migration runs once per database and is recorded in `schema_migrations`;
every statement is also written to be harmless if run again (IF NOT EXISTS), so
a crash between a statement and its record never leaves a database stuck.

`{db}` is the only thing formatted into these statements: an identifier checked
against `_IDENT`, never a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.engine import Engine
from storage.record import COLUMNS, KEY_COLUMNS

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a valid ClickHouse database name (letters, digits, _)")
    return name


@dataclass(frozen=True)
class Migration:
    """`upgrade_only`: the migration converts stores made by an earlier text of an older
    migration and does nothing on a store migrated from scratch; the generated schema
    scripts (`storage.cluster_ddl`) record its version without running it."""

    version: int
    name: str
    statements: tuple[str, ...]
    upgrade_only: bool = False


def _codec(name: str) -> str:
    # ZSTD halves the stored bytes against the default LZ4 on real events (ids, user
    # agents, JSON details); first pages read a few granules, so decompression cost is
    # small. Timestamps arrive nearly sorted: Delta first.
    return "CODEC(Delta, ZSTD(1))" if name in ("occurred_at", "received_at") else "CODEC(ZSTD(1))"


_TYPES = dict(COLUMNS)
_column_defs = ",\n    ".join(f"{name} {ctype} {_codec(name)}" for name, ctype in COLUMNS)
_key_defs = ",\n    ".join(f"{name} {_TYPES[name]} {_codec(name)}" for name in KEY_COLUMNS)
_key_list = ", ".join(KEY_COLUMNS)

# The change log's access path: one narrow row per (event, entity it touched, as target or
# related), ordered by entity, so a change log's keys are one contiguous range read newest
# first. A table filled by a view, as a projection cannot ARRAY JOIN.
_ENTITY_INDEX = f"""
CREATE TABLE IF NOT EXISTS {{db}}.audit_entity_index (
    entity_key String CODEC(ZSTD(1)),
    {_key_defs}
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (entity_key, occurred_at, event_id)
SETTINGS index_granularity = 8192
"""
_ENTITY_INDEX_SELECT = f"SELECT arrayJoin(entity_keys) AS entity_key, {_key_list}\nFROM {{db}}.audit_events"
# Filled by ClickHouse on every insert into audit_events: the writer stays one insert.
_ENTITY_INDEX_VIEW = (
    "\nCREATE MATERIALIZED VIEW IF NOT EXISTS {db}.audit_entity_index_mv TO {db}.audit_entity_index AS\n"
    + _ENTITY_INDEX_SELECT
    + "\n"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_events",
        (
            # The global log (newest first, filtered) and the writer's dedupe lookups read in
            # time order, so time leads the key: a first page reads a few granules instead of
            # sorting the table (10M rows: 1.5 s with an entity-first key, 22 ms with this one).
            # The actor path is a full-row projection: an activity page and the facets read
            # it in actor order (a narrow key copy measured 3x slower for both at 10M rows).
            # (Stores created before migration 4 got a full-row entity log; 4 converts them.)
            f"""
CREATE TABLE IF NOT EXISTS {{db}}.audit_events (
    {_column_defs},
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_scope_key scope_key TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_entity_keys entity_keys TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION by_actor (SELECT * ORDER BY actor_id, occurred_at, event_id)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (occurred_at, event_id)
SETTINGS index_granularity = 8192
""",
            _ENTITY_INDEX,
            _ENTITY_INDEX_VIEW,
        ),
    ),
    Migration(
        2,
        "dead_letters",
        (
            # Rejected input is kept with the reason, never dropped (embedded mode's DLQ).
            """
CREATE TABLE IF NOT EXISTS {db}.dead_letters (
    received_at DateTime64(3, 'UTC'),
    ingest_source LowCardinality(String),
    reason String,
    payload String,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY received_at
""",
        ),
    ),
    Migration(
        3,
        "directory_and_keys",
        (
            # The directory as last-writer-wins entity snapshots, for the query service.
            """
CREATE TABLE IF NOT EXISTS {db}.directory_snapshots (
    kind LowCardinality(String),
    id String,
    version UInt64,
    deleted UInt8,
    entity String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (kind, id)
""",
            # API keys are stored as SHA-256 digests only; a revoked key gets a newer row.
            """
CREATE TABLE IF NOT EXISTS {db}.api_keys (
    key_hash FixedString(64),
    key_prefix String,
    user_id String,
    label String,
    can_ingest UInt8,
    revoked UInt8,
    created_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_hash
""",
        ),
    ),
    Migration(
        4,
        "narrow_entity_index",
        (
            # Stores made before this migration kept a full copy of every row per entity it
            # touched (audit_entity_log: 127 of 306 bytes per event at 10M). Replace it by
            # the narrow entity index of migration 1 (36 bytes per event). On a store
            # migrated from scratch every statement is a no-op.
            _ENTITY_INDEX,
            # Backfill before the view exists, skipping events already indexed, so that a
            # rerun after a crash does not double rows. Writers must be stopped while this
            # runs (`auditlog migrate`); embedded mode migrates before it serves.
            "INSERT INTO {db}.audit_entity_index\n"
            + _ENTITY_INDEX_SELECT
            + "\nWHERE (occurred_at, event_id) NOT IN "
            "(SELECT occurred_at, event_id FROM {db}.audit_entity_index)",
            _ENTITY_INDEX_VIEW,
            "DROP VIEW IF EXISTS {db}.audit_entity_log_mv",
            "DROP TABLE IF EXISTS {db}.audit_entity_log",
        ),
        upgrade_only=True,
    ),
)


def migrate(engine: Engine, database: str) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    db = check_identifier(database)
    engine.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    engine.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {int(r["version"]) for r in engine.query(f"SELECT version FROM {db}.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            engine.command(statement.replace("{db}", db))
        engine.command(
            f"INSERT INTO {db}.schema_migrations (version, name) VALUES ({{v:UInt32}}, {{n:String}})",
            params={"v": migration.version, "n": migration.name},
        )
        applied.append(migration.version)
    return applied
