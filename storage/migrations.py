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

from storage.analyst_view import scoped_view_statements, view_statements
from storage.engine import Engine
from storage.filters import WORD_INDEX
from storage.leaf_sql import body_sql, leaf_hash_of_sql
from storage.record import COLUMNS, KEY_COLUMNS
from storage.scope_predicate import SCOPE_VIEW_TYPES

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
_SCOPE_COLUMNS = ",\n    ".join(f"{name} {t}" for name, t in SCOPE_VIEW_TYPES.items())
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

# Every event_id stored, whatever its time, ordered by id: the writer's "stored before?"
# is a primary-key lookup however old the first copy (audit_events is ordered by time,
# where an id alone could only be found by a bloom filter over every partition). Filled by
# ClickHouse in the insert into audit_events, like the entity index: one insert of ours,
# whose parts a crash can still tear apart (VIEW_REPAIRS below mends them).
# With the row's place in the tree, so that a duplicate is published with the position of
# the copy on record.
_EVENT_KEYS = """
CREATE TABLE IF NOT EXISTS {db}.event_keys (
    event_id UUID,
    content_hash UInt128,
    occurred_at DateTime64(3, 'UTC'),
    log LowCardinality(String),
    leaf_index UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id, content_hash)
SETTINGS index_granularity = 8192
"""
_EVENT_KEYS_SELECT = "SELECT event_id, content_hash, occurred_at, log, leaf_index FROM {db}.audit_events"
_EVENT_KEYS_VIEW = (
    "\nCREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_keys_mv TO {db}.event_keys AS\n"
    + _EVENT_KEYS_SELECT
    + "\n"
)
# Migration 7's text, for stores made before the tree (no log, no leaf index yet).
_EVENT_KEYS_V7 = _EVENT_KEYS.replace(",\n    log LowCardinality(String),\n    leaf_index UInt64", "")
_EVENT_KEYS_SELECT_V7 = "SELECT event_id, content_hash, occurred_at FROM {db}.audit_events"
_EVENT_KEYS_VIEW_V7 = (
    "\nCREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_keys_mv TO {db}.event_keys AS\n"
    + _EVENT_KEYS_SELECT_V7
    + "\n"
)

# The Merkle tree of every log (producers.contract.tlog.merkle): perfect subtrees by (log,
# level, index): the leaves, level 1, level 8 and up, and the low subtrees of each block of
# 256 leaves not yet whole when a checkpoint was signed (`storage.tree.TreeStore.hash_blocks`:
# levels 2 to 7 of a whole block are hashed from its leaves when needed). Level 0, the
# leaves, is filled by ClickHouse in the insert into audit_events, like the event keys (a
# leaf is never committed without its row, and a row a crash left without its leaf gets it
# back: VIEW_REPAIRS); the levels above are written by the checkpointer before it signs a
# checkpoint over them. No TTL: a leaf outlives its row, so a tree whose old rows
# expired still verifies. A MergeTree, not a Replacing one: two leaves at one position are
# evidence (`auditlog verify` reports them), not something a merge may quietly fold.
# Granules of 1024: a proof reads ~25 single nodes, each a granule (at 10M leaves, 1024
# against 8192 took a proof's node lookup from 16 to 11 ms).
_MERKLE_NODES = """
CREATE TABLE IF NOT EXISTS {db}.merkle_nodes (
    log LowCardinality(String),
    level UInt8,
    idx UInt64,
    hash FixedString(32),
    event_id UUID,
    occurred_at DateTime64(3, 'UTC'),
    body FixedString(32)
)
ENGINE = MergeTree
ORDER BY (log, level, idx)
SETTINGS index_granularity = 1024
"""
# A leaf keeps its event's time and body digest beside its hash (producers.contract.tlog.leaf):
# once retention drops the row, the signed tree still proves when the event occurred.
_MERKLE_LEAVES_VIEW = (
    "\nCREATE MATERIALIZED VIEW IF NOT EXISTS {db}.merkle_leaves_mv TO {db}.merkle_nodes AS\n"
    "SELECT log, toUInt8(0) AS level, leaf_index AS idx, "
    f"{leaf_hash_of_sql('log', 'leaf_index', 'occurred_at', 'body')} AS hash, event_id, occurred_at, body\n"
    f"FROM (SELECT log, leaf_index, event_id, occurred_at, {body_sql()} AS body FROM {{db}}.audit_events "
    "WHERE log != '')\n"
)
# What the three views above write for a log's rows from one position on (and at listed
# positions), wherever they have not written it. An insert commits the row's part first and
# its views' parts after it (a failing view leaves the row stored), so a crash or a failed
# view in between leaves a row without its key, its leaf or its entity index rows; its event
# comes again, and would then be stored twice (no key) or never become a leaf (no leaf). The
# writer runs these before it next writes the log (`storage.writer`), so the rows on record
# are whole again before any id is looked up or any position given out.
# A torn insert is one chunk of one writer (`StoreSettings.insert_chunk_rows`, at most
# REPAIR_SPAN rows): its rows are at most REPAIR_SPAN positions below the head of the
# leaves, above it, or at the positions below it that have no leaf.
REPAIR_SPAN = 50_000
_WINDOW = "log = {log:String} AND (leaf_index >= {since:UInt64} OR has({at:Array(UInt64)}, leaf_index))"
_WINDOW_IDS = "(SELECT event_id FROM {db}.audit_events WHERE " + _WINDOW + ")"
# The entity index is ordered by entity, then time: the window's times bound what is read.
_WINDOW_TIMES = (
    f"occurred_at BETWEEN (SELECT min(occurred_at) FROM {{db}}.audit_events WHERE {_WINDOW}) "
    f"AND (SELECT max(occurred_at) FROM {{db}}.audit_events WHERE {_WINDOW})"
)


def _repair(target: str, columns: str, select: str, *, missing: str = "1", kept: str = "1") -> str:
    """`select` (a view's) over the rows of the window that `missing` keeps, less what `kept` drops."""
    rows = f"(SELECT * FROM {{db}}.audit_events WHERE {_WINDOW} AND {missing})"
    windowed = select.replace("FROM {db}.audit_events", "FROM " + rows)
    return f"INSERT INTO {{db}}.{target} ({columns}) SELECT {columns} FROM ({windowed}) WHERE {kept}"


VIEW_REPAIRS = {
    "leaves": _repair(
        "merkle_nodes",
        "log, level, idx, hash, event_id, occurred_at, body",
        _MERKLE_LEAVES_VIEW.split(" AS\n", 1)[1],
        missing="leaf_index NOT IN (SELECT idx FROM {db}.merkle_nodes WHERE log = {log:String} AND level = 0 "
        "AND (idx >= {since:UInt64} OR has({at:Array(UInt64)}, idx)))",
    ),
    "keys": _repair(
        "event_keys",
        "event_id, content_hash, occurred_at, log, leaf_index",
        _EVENT_KEYS_SELECT,
        missing="(event_id, content_hash) NOT IN (SELECT event_id, content_hash FROM {db}.event_keys "
        f"WHERE event_id IN {_WINDOW_IDS})",
    ),
    "entities": _repair(
        "audit_entity_index",
        f"entity_key, {_key_list}",
        _ENTITY_INDEX_SELECT,
        kept="(entity_key, event_id) NOT IN (SELECT entity_key, event_id FROM {db}.audit_entity_index "
        f"WHERE {_WINDOW_TIMES} AND event_id IN {_WINDOW_IDS})",
    ),
}
# What each view holds of the window against what it should hold: a repair runs only where
# one falls short (a first write of a log in a process reads these, not the repairs).
TORN_COUNTS = (
    f"SELECT (SELECT count() FROM {{db}}.audit_events WHERE {_WINDOW}) AS rows, "
    f"(SELECT sum(length(entity_keys)) FROM {{db}}.audit_events WHERE {_WINDOW}) AS entity_rows, "
    "(SELECT count() FROM {db}.merkle_nodes WHERE log = {log:String} AND level = 0 "
    "AND (idx >= {since:UInt64} OR has({at:Array(UInt64)}, idx))) AS leaves, "
    f"(SELECT uniqExact(event_id) FROM {{db}}.event_keys WHERE {_WINDOW}) AS keys, "
    f"(SELECT count() FROM {{db}}.audit_entity_index WHERE {_WINDOW_TIMES} AND event_id IN {_WINDOW_IDS}) "
    "AS entities"
)

# When the tree began and how many rows were stored before it, in no log: `auditlog verify`
# tells those from a row put in no log since (inserted). Empty on a store made with the tree.
_TREE_EPOCH = """
CREATE TABLE IF NOT EXISTS {db}.tree_epoch (
    began_at DateTime64(3, 'UTC'),
    rows_before UInt64
)
ENGINE = MergeTree
ORDER BY began_at
"""
# Signed checkpoints (producers.contract.tlog.checkpoint), the whole note as signed.
_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS {db}.checkpoints (
    log LowCardinality(String),
    tree_size UInt64,
    root_hash String,
    created_at DateTime64(3, 'UTC'),
    key_id String,
    verifier_key String,
    note String
)
ENGINE = MergeTree
ORDER BY (log, tree_size, created_at)
"""

# The directory as last-writer-wins entity snapshots, one directory per infrastructure.
_DIRECTORY_ENTITIES = """
CREATE TABLE IF NOT EXISTS {db}.directory_entities (
    infrastructure String,
    kind LowCardinality(String),
    id String,
    version UInt64,
    deleted UInt8,
    entity String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (infrastructure, kind, id)
"""
# API keys are stored as SHA-256 digests only; a change (revocation) is a newer row.
# `expires_at` 0 means the key does not expire.
_API_KEYS = """
CREATE TABLE IF NOT EXISTS {db}.api_keys (
    key_hash FixedString(64),
    key_prefix String,
    infrastructure String,
    user_id String,
    label String,
    can_ingest UInt8,
    can_publish_directory UInt8,
    revoked UInt8,
    created_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_hash
"""
# The one infrastructure a store made before several were served held rows of, or ''.
_SOLE_INFRASTRUCTURE = (
    "(SELECT if(count() = 1, any(id), '') FROM (SELECT id FROM {db}.directory_snapshots "
    "WHERE kind = 'infrastructure' GROUP BY id HAVING argMax(deleted, version) = 0))"
)
_SYNC = " SETTINGS mutations_sync = 2"

# Retention (storage.retention): a policy per infrastructure and the legal holds, each change a
# newer version (the newest wins); the tombstone of every purged row, kept for ever like its
# leaf, so that `auditlog verify` tells a purge from a deletion.
_RETENTION_POLICIES = """
CREATE TABLE IF NOT EXISTS {db}.retention_policies (
    infrastructure String,
    version UInt64,
    policy String,
    updated_at DateTime64(3, 'UTC'),
    updated_by String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY infrastructure
"""
_LEGAL_HOLDS = """
CREATE TABLE IF NOT EXISTS {db}.legal_holds (
    infrastructure String,
    hold_id String,
    version UInt64,
    hold String,
    lifted_at Nullable(DateTime64(3, 'UTC')),
    lifted_by String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (infrastructure, hold_id)
"""
_PURGED_ROWS = """
CREATE TABLE IF NOT EXISTS {db}.purged_rows (
    log LowCardinality(String),
    leaf_index UInt64,
    event_id UUID,
    occurred_at DateTime64(3, 'UTC'),
    infrastructure LowCardinality(String),
    rule LowCardinality(String),
    cutoff DateTime64(3, 'UTC'),
    purge_id UUID
)
ENGINE = ReplacingMergeTree
ORDER BY (log, leaf_index, event_id)
"""

# Per ClickHouse role of a directory user, its read scope now: what the row policies of
# `storage.analyst_roles` read through a dictionary. The newest version of a role wins.
_ANALYST_SCOPES = f"""
CREATE TABLE IF NOT EXISTS {{db}}.analyst_scopes (
    role String,
    infrastructure String,
    user_id String,
    {_SCOPE_COLUMNS},
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY role
"""

# The analysts' views, from `analyst_view.COLUMNS`. A store migrated keeps the views it was
# given: a later change of the columns needs a migration of its own that replaces them
# (`view_statements(replace=True)`).
_ANALYST_VIEWS = view_statements()

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
    {WORD_INDEX},
    PROJECTION by_actor (SELECT * ORDER BY actor_id, occurred_at, event_id)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (occurred_at, event_id)
SETTINGS index_granularity = 8192
""",
            _ENTITY_INDEX,
            _ENTITY_INDEX_VIEW,
            _EVENT_KEYS,
            _EVENT_KEYS_VIEW,
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
    infrastructure LowCardinality(String),
    event_id String,
    reason_code LowCardinality(String),
    ingest_key_id LowCardinality(String),
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
            _DIRECTORY_ENTITIES,
            _API_KEYS,
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
    Migration(
        5,
        "scope_resolved_at_read",
        (
            # Stores made before this migration: a plan's rows carried the tokens of the
            # applications the plan had at ingest (read_scope / scope_multi), and the
            # directory and keys knew one infrastructure. Rows now carry one token each
            # (`plan:<id>` for plans), resolved against the current directory at read
            # time; directories and keys belong to an infrastructure. Writers must be
            # stopped while this runs (`auditlog migrate`); on a store migrated from
            # scratch every statement is a no-op. Every step can run again after a crash.
            _DIRECTORY_ENTITIES,
            """
CREATE TABLE IF NOT EXISTS {db}.directory_snapshots
(kind LowCardinality(String), id String, version UInt64, deleted UInt8, entity String)
ENGINE = ReplacingMergeTree(version) ORDER BY (kind, id)
""",
            "INSERT INTO {db}.directory_entities (infrastructure, kind, id, version, deleted, entity) "
            f"SELECT {_SOLE_INFRASTRUCTURE} AS infrastructure, kind, id, version, deleted, entity "
            "FROM {db}.directory_snapshots",
            "ALTER TABLE {db}.api_keys ADD COLUMN IF NOT EXISTS infrastructure String AFTER key_prefix",
            "ALTER TABLE {db}.api_keys ADD COLUMN IF NOT EXISTS can_publish_directory UInt8 AFTER can_ingest",
            "ALTER TABLE {db}.api_keys "
            "ADD COLUMN IF NOT EXISTS expires_at DateTime64(3, 'UTC') AFTER created_at",
            "ALTER TABLE {db}.api_keys UPDATE infrastructure = "
            + _SOLE_INFRASTRUCTURE
            + " WHERE infrastructure = ''"
            + _SYNC,
            "DROP TABLE IF EXISTS {db}.directory_snapshots",
            "ALTER TABLE {db}.audit_events UPDATE scope_key = concat('plan:', target_id) "
            "WHERE target_kind = 'deployment_plan' AND NOT startsWith(scope_key, 'plan:')" + _SYNC,
            # The view's text names a dropped column: it is recreated once both tables match,
            # and the index's rows of plan events are rebuilt from the events.
            "DROP VIEW IF EXISTS {db}.audit_entity_index_mv",
            "ALTER TABLE {db}.audit_events DROP COLUMN IF EXISTS read_scope" + _SYNC,
            "ALTER TABLE {db}.audit_events DROP COLUMN IF EXISTS scope_multi" + _SYNC,
            "ALTER TABLE {db}.audit_entity_index DROP COLUMN IF EXISTS scope_multi" + _SYNC,
            "ALTER TABLE {db}.audit_entity_index DELETE WHERE target_kind = 'deployment_plan'" + _SYNC,
            "INSERT INTO {db}.audit_entity_index\n"
            + _ENTITY_INDEX_SELECT
            + "\nWHERE target_kind = 'deployment_plan'",
            _ENTITY_INDEX_VIEW,
        ),
        upgrade_only=True,
    ),
    Migration(
        6,
        "ingest_key_id",
        (
            # Stores made before this migration recorded no credential; their rows keep ''.
            "ALTER TABLE {db}.audit_events ADD COLUMN IF NOT EXISTS ingest_key_id LowCardinality(String) "
            "CODEC(ZSTD(1)) AFTER ingest_source",
        ),
        upgrade_only=True,
    ),
    Migration(
        7,
        "event_keys",
        (
            # Stores made before this migration found duplicates in the new batch's time range
            # only. Rows stored before it have no content hash (0): a later copy of one of them
            # counts as a duplicate, since its content cannot be compared.
            "ALTER TABLE {db}.audit_events ADD COLUMN IF NOT EXISTS content_hash UInt128 "
            "CODEC(ZSTD(1)) AFTER event_id",
            _EVENT_KEYS_V7,
            "INSERT INTO {db}.event_keys (event_id, content_hash, occurred_at)\n"
            + _EVENT_KEYS_SELECT_V7
            + "\nWHERE event_id NOT IN (SELECT event_id FROM {db}.event_keys)",
            _EVENT_KEYS_VIEW_V7,
        ),
        upgrade_only=True,
    ),
    Migration(
        8,
        "dead_letter_attribution",
        (
            # Stores made before this migration kept a dead letter's reason in words only and
            # could not tell whose it was; their letters keep '' (and code 'invalid').
            "ALTER TABLE {db}.dead_letters "
            "ADD COLUMN IF NOT EXISTS infrastructure LowCardinality(String) AFTER ingest_source, "
            "ADD COLUMN IF NOT EXISTS event_id String AFTER infrastructure, "
            "ADD COLUMN IF NOT EXISTS reason_code LowCardinality(String) DEFAULT 'invalid' AFTER event_id, "
            "ADD COLUMN IF NOT EXISTS ingest_key_id LowCardinality(String) AFTER reason_code",
        ),
        upgrade_only=True,
    ),
    Migration(
        9,
        "tree_positions",
        (
            # Rows stored before this migration are in no log ('') and no leaf of the tree;
            # `auditlog verify` counts them apart. The event keys learn the position too.
            "ALTER TABLE {db}.audit_events "
            "ADD COLUMN IF NOT EXISTS log LowCardinality(String) CODEC(ZSTD(1)) AFTER kafka_offset, "
            "ADD COLUMN IF NOT EXISTS leaf_index UInt64 CODEC(ZSTD(1)) AFTER log",
            "ALTER TABLE {db}.event_keys "
            "ADD COLUMN IF NOT EXISTS log LowCardinality(String), "
            "ADD COLUMN IF NOT EXISTS leaf_index UInt64",
            "DROP VIEW IF EXISTS {db}.event_keys_mv",
            _EVENT_KEYS_VIEW,
            _TREE_EPOCH,
            "INSERT INTO {db}.tree_epoch SELECT now64(3), count() FROM {db}.audit_events "
            "WHERE log = '' AND (SELECT count() FROM {db}.tree_epoch) = 0",
        ),
        upgrade_only=True,
    ),
    Migration(
        10,
        "merkle_tree",
        (_MERKLE_NODES, _MERKLE_LEAVES_VIEW, _CHECKPOINTS, _TREE_EPOCH),
    ),
    Migration(11, "analyst_views", _ANALYST_VIEWS),
    # The same views over one caller's rows, the scope given as parameters: POST /v1/sql reads
    # these, whose bodies nothing in the caller's query can reach into.
    Migration(12, "scoped_analyst_views", scoped_view_statements()),
    Migration(13, "retention", (_RETENTION_POLICIES, _LEGAL_HOLDS, _PURGED_ROWS)),
    Migration(14, "analyst_scopes", (_ANALYST_SCOPES,)),
    # Free text by words (storage.filters): a text index over what search looks at, created with
    # the table since; a store made before gets it here, its rows indexed by the mutation.
    Migration(
        15,
        "word_index",
        (
            f"ALTER TABLE {{db}}.audit_events ADD INDEX IF NOT EXISTS {WORD_INDEX.removeprefix('INDEX ')}",
            "ALTER TABLE {db}.audit_events MATERIALIZE INDEX words" + _SYNC,
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
