"""The same SQL on every engine: chDB always, a ClickHouse server where one exists.

A server is used when `AUDITLOG_TEST_CLICKHOUSE_URL` names one
(e.g. `clickhouse://default:@127.0.0.1:8123/`) or, failing that, when a Docker
engine can start `clickhouse/clickhouse-server` through testcontainers. This
machine has neither, so here the server cases report as skipped, with the reason;
the chDB cases always run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers.contract.event import parse_event
from query_api.search import compile_query
from storage.engine import Engine, ServerEngine, StoreError
from storage.reader import EventFilter, View
from storage.store import Store
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, scope, served

DEV = scope(apps=["app-1"])
BASE = datetime(2026, 9, 1, tzinfo=UTC)


def _docker_engine_running() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def server_engine() -> Iterator[Engine | None]:
    url = os.environ.get("AUDITLOG_TEST_CLICKHOUSE_URL")
    if url:
        engine = ServerEngine(url)
        yield engine
        engine.close()
        return
    if not _docker_engine_running():
        yield None
        return
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        engine = ServerEngine(f"clickhouse://{container.username}:{container.password}@{host}:{port}/")
        yield engine
        engine.close()


@pytest.fixture(params=["chdb", "clickhouse-server"])
def any_store(request: pytest.FixtureRequest, chdb_engine: Engine, server_engine: Engine | None) -> Store:
    engine = chdb_engine
    if request.param == "clickhouse-server":
        if server_engine is None:
            pytest.skip("no ClickHouse server here: set AUDITLOG_TEST_CLICKHOUSE_URL or run a Docker engine")
        engine = server_engine
    return Store(engine, database="c_" + uuid.uuid4().hex[:12])


def _event(i: int, **over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=i + 1)),
        "occurred_at": (BASE + timedelta(hours=i)).isoformat(),
        "infrastructure": "acme",
        "environment": "env-prod" if i % 2 else "env-dev",
        "actor": {"id": f"u-{i % 3}", "name": f"User {i % 3}"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": f"app-{i % 2}"},
        "reason": "timeout talking to env" if i % 5 == 0 else None,
    }
    event.update(over)
    return {k: v for k, v in event.items() if v is not None}


def _load(store: Store, events: list[dict[str, Any]]) -> None:
    store.writer.write([process(parse_event(e), served(), Lineage("test", 0)) for e in events])


def _ids(page_items: list[dict[str, Any]]) -> list[int]:
    return [uuid.UUID(r["event_id"]).int - 1 for r in page_items]


def test_write_is_idempotent(any_store: Store) -> None:
    events = [_event(i) for i in range(50)]
    _load(any_store, events)
    _load(any_store, events[:20])
    assert any_store.event_count() == 50


def test_scoped_keyset_pages(any_store: Store) -> None:
    _load(any_store, [_event(i) for i in range(40)])
    seen: list[int] = []
    cursor = None
    while True:
        page = any_store.reader.page(scope=DEV, view=View(), filters=EventFilter(), limit=7, cursor=cursor)
        seen += _ids(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted((i for i in range(40) if i % 2 == 1), reverse=True)


def test_views_filters_and_search(any_store: Store) -> None:
    events = [_event(i) for i in range(12)]
    events.append(
        _event(20, action="team.member_add", target={"kind": "team", "id": "t-1"},
               related=[{"kind": "application", "id": "app-1"}])
    )  # fmt: skip
    _load(any_store, events)
    reader = any_store.reader
    activity = reader.page(scope=ALL, view=View(kind="activity", actor_id="u-1"), filters=EventFilter())
    assert _ids(activity.items) == [10, 7, 4, 1]
    change_log = reader.page(
        scope=ALL,
        view=View(kind="entity", entity_kind="application", entity_id="app-1"),
        filters=EventFilter(),
    )
    assert _ids(change_log.items) == [20, 11, 9, 7, 5, 3, 1]
    dev_env = reader.page(scope=ALL, view=View(), filters=EventFilter(environments=("env-dev",)))
    assert _ids(dev_env.items) == [20, 10, 8, 6, 4, 2, 0]
    now = BASE + timedelta(days=1)
    found = reader.page(
        scope=ALL,
        view=View(),
        filters=EventFilter(search=compile_query('"TIMEOUT" -env:env-prod', now=now).search),
    )
    assert _ids(found.items) == [20, 10, 0]


def test_facets_and_count(any_store: Store) -> None:
    _load(any_store, [_event(i) for i in range(30)])
    facets = any_store.reader.facets(
        scope=DEV, view=View(), filters=EventFilter(), columns=("environment", "outcome", "actor_id")
    )
    assert facets["total"] == 15
    assert {f["value"]: f["count"] for f in facets["facets"]["environment"]} == {"env-prod": 15}
    assert any_store.reader.count(scope=ALL, view=View(), filters=EventFilter()) == 30


def test_export_chunks_cover_everything_once(any_store: Store) -> None:
    _load(any_store, [_event(i) for i in range(101)])
    chunks = list(any_store.reader.iter_chunks(scope=ALL, view=View(), filters=EventFilter(), chunk_rows=10))
    ids = [i for chunk in chunks for i in _ids(chunk)]
    assert ids == list(range(100, -1, -1))


def test_errors_carry_the_server_code(any_store: Store) -> None:
    with pytest.raises(StoreError) as info:
        any_store.engine.query("SELECT throwIf(1, 'boom')")
    assert info.value.code == 395  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
