"""Migration 5: a store made by the release before it is converted, and then read by today's rules.

That release stored, per row, the tokens of the applications a deployment plan had
at ingest (`read_scope`, `scope_multi`), kept one directory without an
infrastructure (`directory_snapshots`) and keys without one. The test builds such
a store with that release's DDL, then runs `migrate` and reads it as today.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from producers.contract.directory import Directory
from producers.contract.event import parse_event
from producers.contract.permissions import Caller, scope_for
from storage.engine import Engine
from storage.migrations import MIGRATIONS, migrate
from storage.reader import EventFilter, View
from storage.record import COLUMNS, KEY_COLUMNS
from storage.store import Store, hash_key
from storage.tree import TreeStore
from stream.messages import Lineage
from stream.transform import process
from tests.grants import only

# The release's stored columns: today's, with the two per-row token lists around scope_key.
_OLD_COLUMNS: list[tuple[str, str]] = []
for _name, _type in COLUMNS:
    if _name in ("ingest_key_id", "content_hash", "log", "leaf_index"):  # added by migrations 6, 7 and 9
        continue
    if _name == "scope_key":
        _OLD_COLUMNS += [("read_scope", "Array(String)"), (_name, _type), ("scope_multi", "Array(String)")]
    else:
        _OLD_COLUMNS.append((_name, _type))
_OLD_TYPES = dict(_OLD_COLUMNS)
_AFTER_KEY = KEY_COLUMNS.index("scope_key") + 1
_OLD_KEYS = [*KEY_COLUMNS[:_AFTER_KEY], "scope_multi", *KEY_COLUMNS[_AFTER_KEY:]]
_OLD_KEY_LIST = ", ".join(_OLD_KEYS)

OLD_SCHEMA = (
    "CREATE TABLE {db}.audit_events ("
    + ", ".join(f"{n} {t}" for n, t in _OLD_COLUMNS)
    + ", INDEX idx_scope_key scope_key TYPE bloom_filter(0.01) GRANULARITY 1"
    + ", PROJECTION by_actor (SELECT * ORDER BY actor_id, occurred_at, event_id)"
    + ") ENGINE = MergeTree PARTITION BY toYYYYMM(occurred_at) ORDER BY (occurred_at, event_id)",
    "CREATE TABLE {db}.audit_entity_index (entity_key String, "
    + ", ".join(f"{n} {_OLD_TYPES[n]}" for n in _OLD_KEYS)
    + ") ENGINE = MergeTree PARTITION BY toYYYYMM(occurred_at) ORDER BY (entity_key, occurred_at, event_id)",
    "CREATE MATERIALIZED VIEW {db}.audit_entity_index_mv TO {db}.audit_entity_index AS "
    f"SELECT arrayJoin(entity_keys) AS entity_key, {_OLD_KEY_LIST} FROM {{db}}.audit_events",
    "CREATE TABLE {db}.directory_snapshots (kind LowCardinality(String), id String, version UInt64, "
    "deleted UInt8, entity String) ENGINE = ReplacingMergeTree(version) ORDER BY (kind, id)",
    "CREATE TABLE {db}.api_keys (key_hash FixedString(64), key_prefix String, user_id String, label String, "
    "can_ingest UInt8, revoked UInt8, created_at DateTime64(3, 'UTC'), version UInt64) "
    "ENGINE = ReplacingMergeTree(version) ORDER BY key_hash",
    "CREATE TABLE {db}.dead_letters (received_at DateTime64(3, 'UTC'), ingest_source LowCardinality(String), "
    "reason String, payload String, kafka_topic LowCardinality(String), kafka_partition Int32, "
    "kafka_offset Int64) ENGINE = MergeTree ORDER BY received_at",
    "CREATE TABLE {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') "
    "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version",
)

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [{"id": "viewer", "name": "Viewer", "app_level": "list"}, {"id": "none", "name": "None"}],
        "users": [
            # Lists app-1 only: at ingest the plan held app-1 alone, today it holds app-2 too.
            {"id": "dev", "name": "Dev", "default_role": "none", "app_roles": {"app-1": "viewer"}},
        ],
        "applications": [{"id": "app-1", "name": "One"}, {"id": "app-2", "name": "Two"}],
        "deployment_plans": [{"id": "plan-1", "name": "P", "applications": ["app-1", "app-2"]}],
        "infrastructures": [{"id": "acme", "name": "ACME"}],
    }
)


def _event(i: int, kind: str, ident: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=i + 1)),
        "occurred_at": f"2026-03-0{1 + i}T10:00:00Z",
        "infrastructure": "acme",
        "actor": {"id": "someone"},
        "action": f"{kind}.update",
        "target": {"kind": kind, "id": ident},
        "related": [{"kind": "application", "id": "app-1"}],
    }


def _old_row(row: dict[str, Any], plan_tokens: list[str]) -> dict[str, Any]:
    """The row as the release stored it: a plan's tokens were its applications at ingest."""
    multi = plan_tokens if len(plan_tokens) > 1 else []
    key = "" if multi else (plan_tokens[0] if plan_tokens else row["scope_key"])
    old = {**row, "read_scope": plan_tokens or [row["scope_key"]], "scope_key": key, "scope_multi": multi}
    return {name: old[name] for name, _ in _OLD_COLUMNS}


def test_migrations_5_to_8_rescope_old_rows_and_move_directory_and_keys(chdb_engine: Engine) -> None:
    db = "t_m5_" + uuid.uuid4().hex[:8]
    chdb_engine.command(f"CREATE DATABASE {db}")
    for sql in OLD_SCHEMA:
        chdb_engine.command(sql.replace("{db}", db))
    for m in MIGRATIONS:
        if m.version <= 4:
            chdb_engine.command(
                f"INSERT INTO {db}.schema_migrations (version, name) VALUES ({m.version}, '{m.name}')"
            )
    lineage = Lineage(source="test", received_at_ms=1_790_000_000_000)
    directories = only(DIRECTORY)
    app_row = process(parse_event(_event(0, "application", "app-1")), directories, lineage)
    plan_row = process(parse_event(_event(1, "deployment_plan", "plan-1")), directories, lineage)
    role_row = process(parse_event(_event(2, "role", "viewer")), directories, lineage)
    old_rows = [
        _old_row(app_row, []),
        _old_row(plan_row, ["app:app-1"]),  # the plan had app-1 only when this was ingested
        _old_row(role_row, []),
    ]
    chdb_engine.insert_json(
        f"{db}.audit_events",
        columns=[n for n, _ in _OLD_COLUMNS],
        data=b"\n".join(orjson.dumps(r) for r in old_rows),
    )
    for snap in DIRECTORY.snapshots():
        chdb_engine.command(
            f"INSERT INTO {db}.directory_snapshots VALUES ({{k:String}}, {{i:String}}, 1, 0, {{e:String}})",
            params={"k": snap.kind, "i": snap.id, "e": orjson.dumps(snap.entity).decode()},
        )
    chdb_engine.command(
        f"INSERT INTO {db}.api_keys VALUES ({{h:String}}, 'alk_old', 'dev', 'old key', 0, 0, now64(3), 1)",
        params={"h": hash_key("alk_old-key")},
    )

    chdb_engine.command(
        f"INSERT INTO {db}.dead_letters VALUES "
        "(now64(3), 'api', 'invalid event: outcome', '{}', '', -1, -1)"
    )

    assert migrate(chdb_engine, db) == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    # The analysts' views read an upgraded store's rows as they read a new one's.
    assert len(chdb_engine.query(f"SELECT event_id, related, changes FROM {db}.analyst_events")) == 3
    # Its rows predate the tree: counted as such, never reported as inserted.
    assert TreeStore(chdb_engine, database=db).rows_outside_tree() == (3, [])
    store = Store(chdb_engine, database=db)

    tokens = {
        r["target_kind"]: r["scope_key"]
        for r in chdb_engine.query(f"SELECT target_kind, scope_key FROM {db}.audit_events")
    }
    assert tokens == {"application": "app:app-1", "deployment_plan": "plan:plan-1", "role": "infra"}
    columns = {r["name"] for r in chdb_engine.query(f"DESCRIBE TABLE {db}.audit_events")}
    assert "scope_multi" not in columns and "read_scope" not in columns
    # The directory and the key now belong to the store's one infrastructure.
    directories_now = store.directory.load()
    assert directories_now.served == ("acme",)
    key = store.keys.lookup("alk_old-key")
    assert key is not None and key.infrastructure == "acme" and key.usable(int(time.time() * 1000))

    # Read by today's rule: the plan now holds app-2, which dev may not list.
    dev = scope_for(Caller(user_id="dev", infrastructure="acme"), directories_now)
    seen = [r["target_kind"] for r in store.reader.page(scope=dev, view=View(), filters=EventFilter()).items]
    assert seen == ["application"]
    plan_log = View(kind="entity", entity_kind="deployment_plan", entity_id="plan-1")
    app_log = View(kind="entity", entity_kind="application", entity_id="app-1")
    assert [
        r["target_kind"] for r in store.reader.page(scope=dev, view=app_log, filters=EventFilter()).items
    ] == ["application"]
    # Once the plan drops app-2 again, the old plan row is the developer's to read, on every path.
    narrower = DIRECTORY.deployment_plans["plan-1"].model_copy(update={"applications": ["app-1"]})
    store.directory.replace(DIRECTORY.model_copy(update={"deployment_plans": {"plan-1": narrower}}))
    dev = scope_for(Caller(user_id="dev", infrastructure="acme"), store.directory.load())
    assert len(store.reader.page(scope=dev, view=plan_log, filters=EventFilter()).items) == 1
    assert len(store.reader.page(scope=dev, view=app_log, filters=EventFilter()).items) == 2
    # New writes reach the rebuilt index through the recreated view; migrate is idempotent.
    store.writer.write([process(parse_event(_event(5, "deployment_plan", "plan-1")), directories, lineage)])
    assert store.reader.count(scope=dev, view=plan_log, filters=EventFilter()) == 2
    # An event stored before content hashes, replayed: a duplicate, never a second copy.
    replay = store.writer.write([app_row])
    assert (replay.inserted, replay.duplicates, replay.conflicts) == (0, 1, ())
    # A dead letter kept before attribution: its words stay, filed under no infrastructure.
    [letter] = store.dead_letters.page(infrastructure=None).items
    assert (letter["code"], letter["infrastructure"], letter["reason"]) == (
        "invalid",
        None,
        "invalid event: outcome",
    )
    assert store.dead_letters.page(infrastructure="acme").items == []
    assert migrate(chdb_engine, db) == []
