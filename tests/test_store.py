"""The chDB store: migrations, the writer's dedupe, the reader's keyset paging and scope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers.contract.directory import Directory
from producers.contract.event import parse_event
from producers.contract.permissions import ReadScope
from storage.engine import Engine, StoreError
from storage.migrations import MIGRATIONS, migrate
from storage.reader import EventFilter, View
from storage.record import COLUMNS
from storage.store import Store
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, NOBODY, make_key, scope, served

LINEAGE = Lineage(source="test", received_at_ms=1_790_000_000_000)


def _event(
    i: int, *, at: datetime, kind: str = "application", target: str = "app-1", actor: str = "u-1"
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=i + 1)),
        "occurred_at": at.isoformat(),
        "infrastructure": "acme",
        "actor": {"id": actor},
        "action": f"{kind}.update",
        "target": {"kind": kind, "id": target},
    }


def _rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [process(parse_event(e), served(), LINEAGE) for e in events]


def test_migrations_are_versioned_and_idempotent(chdb_engine: Engine) -> None:
    db = "t_mig_" + uuid.uuid4().hex[:8]
    assert migrate(chdb_engine, db) == [m.version for m in MIGRATIONS]
    assert migrate(chdb_engine, db) == []
    cols = chdb_engine.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'audit_events' "
        "ORDER BY position",
        params={"db": db},
    )
    assert [(c["name"], c["type"]) for c in cols] == [(n, t.replace("'UTC'", "'UTC'")) for n, t in COLUMNS]


def test_bad_database_name_is_refused(chdb_engine: Engine) -> None:
    with pytest.raises(ValueError, match="not a valid ClickHouse database name"):
        Store(chdb_engine, database="x; DROP DATABASE y")


def test_event_ingested_twice_is_stored_once(store: Store) -> None:
    base = datetime(2026, 9, 1, tzinfo=UTC)
    rows = _rows([_event(i, at=base + timedelta(days=i % 60)) for i in range(500)])
    first = store.writer.write(rows)
    assert (first.inserted, first.duplicates) == (500, 0)
    again = store.writer.write(rows[:200] + rows[:10])  # a redelivery, with duplicates inside the batch
    assert (again.inserted, again.duplicates) == (0, 210)
    assert store.event_count() == 500


def test_writer_chunks_large_batches(chdb_engine: Engine) -> None:
    store = Store(chdb_engine, database="t_" + uuid.uuid4().hex[:12], insert_chunk_rows=1000)
    base = datetime(2026, 9, 1, tzinfo=UTC)
    rows = _rows([_event(i, at=base + timedelta(seconds=i)) for i in range(4500)])
    assert store.writer.write(rows).inserted == 4500
    assert store.event_count() == 4500


def test_keyset_paging_never_skips_or_repeats_even_with_equal_times(store: Store) -> None:
    base = datetime(2026, 9, 1, tzinfo=UTC)
    # Many events share a millisecond: the cursor must break ties by event_id.
    events = [_event(i, at=base + timedelta(minutes=i // 7)) for i in range(300)]
    store.writer.write(_rows(events))
    seen: list[str] = []
    cursor = None
    while True:
        page = store.reader.page(scope=ALL, view=View(), filters=EventFilter(), limit=17, cursor=cursor)
        seen.extend(r["event_id"] for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 300
    times = [
        int(r["occurred_at_ms"])
        for r in store.reader.page(scope=ALL, view=View(), filters=EventFilter(), limit=1000).items
    ]
    assert times == sorted(times, reverse=True)


def test_paging_is_stable_under_concurrent_ingest(store: Store) -> None:
    base = datetime(2026, 9, 1, tzinfo=UTC)
    store.writer.write(_rows([_event(i, at=base + timedelta(seconds=i)) for i in range(100)]))
    page = store.reader.page(scope=ALL, view=View(), filters=EventFilter(), limit=40)
    # Newer events arrive while the caller pages: they belong before page one, not inside later pages.
    store.writer.write(_rows([_event(1000 + i, at=base + timedelta(days=1, seconds=i)) for i in range(50)]))
    ids = [r["event_id"] for r in page.items]
    cursor = page.next_cursor
    while cursor:
        page = store.reader.page(scope=ALL, view=View(), filters=EventFilter(), limit=40, cursor=cursor)
        ids.extend(r["event_id"] for r in page.items)
        cursor = page.next_cursor
    assert len(ids) == len(set(ids)) == 100


def test_views_and_filters(store: Store) -> None:
    base = datetime(2026, 9, 1, tzinfo=UTC)
    events = [
        _event(1, at=base, kind="application", target="app-1", actor="u-a"),
        _event(2, at=base + timedelta(hours=1), kind="role", target="developer", actor="u-b"),
        _event(3, at=base + timedelta(hours=2), kind="team", target="t-1", actor="u-a"),
    ]
    events[2]["related"] = [{"kind": "application", "id": "app-1"}]
    store.writer.write(_rows(events))

    def ids(view: View = View(), flt: EventFilter = EventFilter(), scope: ReadScope = ALL) -> list[int]:
        page = store.reader.page(scope=scope, view=view, filters=flt, limit=100)
        return [uuid.UUID(r["event_id"]).int - 1 for r in page.items]

    assert ids() == [3, 2, 1]
    assert ids(View(kind="activity", actor_id="u-a")) == [3, 1]
    assert ids(View(kind="entity", entity_kind="application", entity_id="app-1")) == [3, 1]
    assert ids(flt=EventFilter(action_prefixes=("role.",))) == [2]
    assert ids(flt=EventFilter(kinds=("team", "role"))) == [3, 2]
    assert ids(flt=EventFilter(since_ms=int((base + timedelta(minutes=30)).timestamp() * 1000))) == [3, 2]
    assert ids(flt=EventFilter(until_ms=int((base + timedelta(minutes=30)).timestamp() * 1000))) == [1]
    # Row rules: List on app-1 shows the application row only; the team row needs team rights.
    assert ids(scope=scope(apps=["app-1"])) == [1]
    assert ids(scope=NOBODY) == []
    assert ids(scope=scope(admin=True, infrastructure="globex")) == []


def test_reader_refuses_to_run_without_a_scope(store: Store) -> None:
    with pytest.raises(TypeError, match="ReadScope"):
        store.reader.page(scope=None, view=View(), filters=EventFilter())  # type: ignore[arg-type]


def test_store_errors_carry_the_server_code(chdb_engine: Engine) -> None:
    with pytest.raises(StoreError) as info:
        chdb_engine.query("SELECT * FROM no_such_db.no_such_table")
    assert info.value.code in {60, 81}  # UNKNOWN_TABLE / UNKNOWN_DATABASE


def test_directory_round_trips_through_the_store(store: Store) -> None:
    directory = Directory.model_validate(
        {
            "infrastructure": "acme",
            "roles": [{"id": "r", "name": "R", "app_level": "list"}],
            "users": [{"id": "u", "name": "U", "default_role": "r"}],
            "applications": [{"id": "a", "name": "A", "team": "t"}],
            "teams": [{"id": "t", "name": "T"}],
        }
    )
    store.directory.replace(directory)
    loaded = store.directory.load().get("acme")
    assert loaded is not None
    assert loaded.model_dump(exclude={"version"}) == directory.model_dump(exclude={"version"})
    # Another infrastructure's directory is its own: replacing one leaves the other.
    other = Directory.model_validate({"infrastructure": "globex", "users": [{"id": "u", "name": "Globex U"}]})
    store.directory.replace(other)
    smaller = Directory.model_validate({"infrastructure": "acme", "roles": [{"id": "r", "name": "R"}]})
    store.directory.replace(smaller)
    both = store.directory.load()
    assert both.served == ("acme", "globex")
    assert both.get("acme").users == {}  # type: ignore[union-attr]
    assert both.get("globex").users["u"].name == "Globex U"  # type: ignore[union-attr]


def test_api_keys_are_stored_hashed(store: Store) -> None:
    key = make_key(store, "u-1", label="ci")
    found = store.keys.lookup(key)
    assert found is not None and found.user_id == "u-1"
    assert store.keys.lookup(key + "x") is None
    stored = store.engine.query(f"SELECT * FROM {store.database}.api_keys")
    assert key not in str(stored)
