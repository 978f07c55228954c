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
from storage.record import COLUMNS

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a valid ClickHouse database name (letters, digits, _)")
    return name


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_column_defs = ",\n    ".join(f"{name} {ctype}" for name, ctype in COLUMNS)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_events",
        (
            # Entity path first in ORDER BY: a change log reads one contiguous range.
            # The actor path is a projection; related-entity lookups use the bloom filter.
            f"""
CREATE TABLE IF NOT EXISTS {{db}}.audit_events (
    {_column_defs},
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_entity_keys entity_keys TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_occurred occurred_at TYPE minmax GRANULARITY 1,
    INDEX idx_action action TYPE set(512) GRANULARITY 4,
    PROJECTION by_actor (SELECT * ORDER BY actor_id, occurred_at, event_id)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (target_kind, target_id, occurred_at, event_id)
SETTINGS index_granularity = 8192
""",
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
