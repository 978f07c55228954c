"""Change logs read their keys from the narrow entity index; migration 4 converts old stores.

A store created before migration 4 kept a full row per entity an event touched
(`audit_entity_log`); the upgrade must leave it with exactly the rows and pages a
fresh store has, and nothing of the old copy.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from producers.contract.event import parse_event
from producers.contract.permissions import ReadScope
from storage.engine import Engine
from storage.migrations import MIGRATIONS, migrate
from storage.reader import EventFilter, View
from storage.record import COLUMNS, ENRICHED_COLUMNS, TREE_COLUMNS
from storage.store import Store
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, served
from tests.grants import scope as grants_scope

ONE_APP = grants_scope(apps=["app-1"])
START = datetime(2026, 3, 1, tzinfo=UTC)


def _codec(name: str) -> str:
    return "CODEC(Delta, ZSTD(1))" if name in ("occurred_at", "received_at") else "CODEC(ZSTD(1))"


_DEFS = ",\n    ".join(f"{n} {t} {_codec(n)}" for n, t in COLUMNS if n not in TREE_COLUMNS)
# What migration 1 created before migration 4 existed (the landed text of that release).
OLD_MIGRATION_1 = (
    f"""CREATE TABLE IF NOT EXISTS {{db}}.audit_events (
    {_DEFS},
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_scope_key scope_key TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_entity_keys entity_keys TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION by_actor (SELECT * ORDER BY actor_id, occurred_at, event_id)
) ENGINE = MergeTree PARTITION BY toYYYYMM(occurred_at) ORDER BY (occurred_at, event_id)""",
    f"""CREATE TABLE IF NOT EXISTS {{db}}.audit_entity_log (entity_key String, {_DEFS})
ENGINE = MergeTree PARTITION BY toYYYYMM(occurred_at) ORDER BY (entity_key, occurred_at, event_id)""",
    f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.audit_entity_log_mv TO {{db}}.audit_entity_log AS
SELECT arrayJoin(entity_keys) AS entity_key, {", ".join(ENRICHED_COLUMNS)} FROM {{db}}.audit_events""",
)


def _events(n: int) -> list[dict[str, Any]]:
    """Tasks by two actors on two applications, some with a related application."""
    out = []
    for i in range(n):
        related = [{"kind": "application", "id": "app-2"}] if i % 3 == 0 else []
        out.append(
            {
                "schema_version": 1,
                "event_id": str(uuid.UUID(int=i + 1)),
                # Spread over three months (three partitions); some share a millisecond.
                "occurred_at": (START + timedelta(hours=13 * (i // 2))).isoformat(),
                "infrastructure": "acme",
                "actor": {"id": f"u-{i % 2}"},
                "action": "application.deploy" if i % 4 else "application.update",
                "target": {"kind": "application", "id": f"app-{1 + i % 2}"},
                "related": related,
                "outcome": "failure" if i % 5 == 0 else "success",
            }
        )
    return out


def _rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lineage = Lineage(source="test", received_at_ms=1_790_000_000_000)
    return [process(parse_event(e), served(), lineage) for e in events]


def _all_pages(store: Store, scope: ReadScope, view: View, flt: EventFilter, limit: int = 7) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = store.reader.page(scope=scope, view=view, filters=flt, limit=limit, cursor=cursor)
        ids += [r["event_id"] for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def _expected(rows: list[dict[str, Any]], keep: Any) -> list[str]:
    chosen = [r for r in rows if keep(r)]
    chosen.sort(key=lambda r: (r["occurred_at"], r["event_id"]), reverse=True)
    return [r["event_id"] for r in chosen]


VIEWS = {
    "activity u-0": (View(kind="activity", actor_id="u-0"), lambda r: r["actor_id"] == "u-0"),
    "changes app-2": (
        View(kind="entity", entity_kind="application", entity_id="app-2"),
        lambda r: "application/app-2" in r["entity_keys"],
    ),
}
FILTERS = {
    "none": (EventFilter(), lambda r: True),
    "outcome (key column)": (EventFilter(outcomes=["failure"]), lambda r: r["outcome"] == "failure"),
    "entity (full row)": (
        EventFilter(entities=[("application", "app-1")]),
        lambda r: "application/app-1" in r["entity_keys"],
    ),
}


def _check_views(store: Store, rows: list[dict[str, Any]]) -> None:
    for vname, (view, in_view) in VIEWS.items():
        for fname, (flt, in_filter) in FILTERS.items():
            for scope, allowed in ((ALL, lambda r: True), (ONE_APP, lambda r: r["scope_key"] == "app:app-1")):

                def keep(r: dict[str, Any], a: Any = allowed, v: Any = in_view, f: Any = in_filter) -> bool:
                    return bool(a(r) and v(r) and f(r))

                want = _expected(rows, keep)
                assert _all_pages(store, scope, view, flt) == want, (vname, fname, scope)
                assert store.reader.count(scope=scope, view=view, filters=flt) == len(want)
                chunks = store.reader.iter_chunks(scope=scope, view=view, filters=flt, chunk_rows=5)
                assert [r["event_id"] for c in chunks for r in c] == want


def test_views_page_count_and_export_exactly_the_rows_they_should(store: Store) -> None:
    rows = _rows(_events(60))
    store.writer.write(rows)
    _check_views(store, rows)
    facets = store.reader.facets(
        scope=ALL, view=VIEWS["changes app-2"][0], filters=EventFilter(), columns=["outcome"]
    )
    assert facets["total"] == len([r for r in rows if "application/app-2" in r["entity_keys"]])


def test_an_activity_page_reads_the_by_actor_projection(store: Store) -> None:
    store.writer.write(_rows(_events(40)))
    db = store.database
    plan = store.engine.query(
        f"EXPLAIN projections = 1 SELECT * FROM {db}.audit_events "
        "WHERE actor_id = 'u-0' ORDER BY occurred_at DESC, event_id DESC LIMIT 5 "
        "SETTINGS optimize_read_in_order = 0"
    )
    assert "by_actor" in "\n".join(str(next(iter(r.values()))) for r in plan)
    tables = {
        r["name"]
        for r in store.engine.query(
            "SELECT name FROM system.tables WHERE database = {d:String}", params={"d": db}
        )
    }
    assert "audit_entity_index" in tables and "audit_entity_log" not in tables


def test_migration_4_converts_a_store_made_by_the_old_migration_1(chdb_engine: Engine) -> None:
    db = "t_up_" + uuid.uuid4().hex[:8]
    # The old release: migrations 1 to 3 as they were, then a year of writes.
    chdb_engine.command(f"CREATE DATABASE {db}")
    for sql in OLD_MIGRATION_1:
        chdb_engine.command(sql.replace("{db}", db))
    rows = _rows(_events(60))
    # Written as that release's writer did: one insert into audit_events, no key table yet.
    chdb_engine.insert_json(f"{db}.audit_events", columns=ENRICHED_COLUMNS, data=orjson.dumps(rows))
    chdb_engine.command(
        f"CREATE TABLE {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    for m in MIGRATIONS:
        if m.version in (2, 3):
            for sql in m.statements:
                chdb_engine.command(sql.replace("{db}", db))
        if m.version <= 3:
            chdb_engine.command(
                f"INSERT INTO {db}.schema_migrations (version, name) VALUES ({m.version}, '{m.name}')"
            )

    assert migrate(chdb_engine, db) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    store = Store(chdb_engine, database=db)
    tables = {
        r["name"]
        for r in chdb_engine.query(
            "SELECT name FROM system.tables WHERE database = {d:String}", params={"d": db}
        )
    }
    assert "audit_entity_log" not in tables and "audit_entity_log_mv" not in tables
    n_keys = sum(len(r["entity_keys"]) for r in rows)
    assert chdb_engine.query(f"SELECT count() AS n FROM {db}.audit_entity_index")[0]["n"] == n_keys
    _check_views(store, rows)
    # New writes reach the new index through its view; running migrate again does nothing.
    # (ids in the same form as the first ones: ClickHouse orders UUIDs by their halves)
    more = _rows([{**e, "event_id": str(uuid.UUID(int=1000 + i))} for i, e in enumerate(_events(10))])
    store.writer.write(more)
    _check_views(store, rows + more)
    assert migrate(chdb_engine, db) == []
