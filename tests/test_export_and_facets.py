"""Exports stream in bounded memory, facets count in scope, and every read is itself audited."""

from __future__ import annotations

import csv
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {
                "id": "admin",
                "name": "Admin",
                "app_level": "full_control",
                "manage_infrastructure": True,
                "manage_teams": True,
            },
            {"id": "lister", "name": "Lister", "app_level": "list"},
        ],
        "users": [
            {"id": "u-admin", "name": "Admin", "default_role": "admin"},
            {"id": "u-dev", "name": "Dev", "app_roles": {"app-7": "lister"}},
        ],
        "applications": [{"id": f"app-{i}", "name": f"App {i}"} for i in range(20)],
    }
)


def _seed_sql(store: Store, n: int) -> None:
    """n synthetic rows generated inside ClickHouse: fast enough for a million in a test."""
    store.engine.command(
        f"""
        INSERT INTO {store.database}.audit_events
            (event_id, schema_version, occurred_at, received_at, infrastructure, environment, actor_id,
             actor_name, actor_type, action, target_kind, target_id, target_name, entity_keys, outcome,
             reason, changes, details, source_service, scope_key, ingest_source)
        SELECT
            generateUUIDv4(number), 1,
            fromUnixTimestamp64Milli(toInt64(1790000000000 - number * 7919), 'UTC'),
            fromUnixTimestamp64Milli(toInt64(1790000000000), 'UTC'),
            'acme', ['env-dev', 'env-test', 'env-prod'][1 + number % 3],
            concat('u-', toString(number % 40)), concat('User ', toString(number % 40)), 'user',
            ['application.deploy', 'application.publish', 'role.update'][1 + number % 3],
            if(number % 3 = 2, 'role', 'application'),
            if(number % 3 = 2, 'developer', concat('app-', toString(number % 20))),
            'Target',
            [if(number % 3 = 2, 'role/developer', concat('application/app-', toString(number % 20)))],
            ['success', 'success', 'failure', 'denied'][1 + number % 4],
            if(number % 4 = 2, '=HYPERLINK("http://evil")', ''),
            '[{{"field":"version","new":"2","old":"1"}}]',
            '{{"note":"row, with a comma; and \\\\"quotes\\\\""}}',
            'lifetime',
            if(number % 3 = 2, 'infra', concat('app:app-', toString(number % 20))), 'synthetic'
        FROM numbers({{n:UInt64}})
        """,
        params={"n": n},
    )


def _client(store: Store, **settings: Any) -> tuple[TestClient, dict[str, str], dict[str, str], Any]:
    embedded = build_embedded(store, api_settings=ApiSettings(**settings), directory=DIRECTORY)
    admin = {"Authorization": "Bearer " + make_key(store, "u-admin")}
    dev = {"Authorization": "Bearer " + make_key(store, "u-dev")}
    return TestClient(embedded.app), admin, dev, embedded


class RssSampler:
    """Peak resident memory of this process while a block runs (chDB's native memory included)."""

    def __init__(self) -> None:
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


@pytest.mark.slow
def test_csv_export_of_half_a_million_rows_streams_in_bounded_memory(store: Store) -> None:
    # A million rows: benchmarks (README, "CSV export"); here enough to tell streaming from holding.
    rows = 500_000
    _seed_sql(store, rows)
    client, admin, _, _ = _client(store, audit_reads=False)
    exported = 0
    size = 0
    started = time.perf_counter()
    with RssSampler() as rss, client.stream("GET", "/v1/events/export?format=csv", headers=admin) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        header = None
        for line in _lines(response.iter_bytes()):
            size += len(line) + 1
            if header is None:
                header = line
                continue
            if line.strip():
                exported += 1
    elapsed = time.perf_counter() - started
    growth_mb = (rss.peak - rss.start) / 2**20
    print(
        f"\nexport: {exported:,} rows, {size / 2**20:.0f} MiB of CSV in {elapsed:.1f} s; "
        f"peak RSS growth {growth_mb:.0f} MiB"
    )
    assert header is not None and header.startswith(b"event_id,occurred_at,received_at")
    assert exported == rows
    # Holding the export would take more than its own size; streaming stays far below it.
    assert growth_mb < 0.5 * size / 2**20


def test_csv_export_is_scoped_and_safe(store: Store) -> None:
    _seed_sql(store, 3000)
    client, admin, dev, _ = _client(store, audit_reads=False, export_chunk_rows=500)
    body = client.get("/v1/events/export?format=csv", headers=dev).text
    records = list(csv.DictReader(io.StringIO(body)))
    # The developer lists app-7 only: 3000 rows, apps cycle over 20 on 2 of every 3 rows.
    expected = sum(1 for n in range(3000) if n % 3 != 2 and n % 20 == 7)
    assert len(records) == expected > 0
    assert {r["target.id"] for r in records} == {"app-7"}
    assert all(r["reason"] in ("", '\'=HYPERLINK("http://evil")') for r in records)
    assert orjson.loads(records[0]["changes"]) == [{"field": "version", "new": "2", "old": "1"}]
    times = [r["occurred_at"] for r in records]
    assert times == sorted(times, reverse=True)
    full = list(csv.DictReader(io.StringIO(client.get("/v1/events/export?format=csv", headers=admin).text)))
    assert len(full) == 3000 and len({r["event_id"] for r in full}) == 3000


def test_ndjson_export_matches_the_api(store: Store) -> None:
    _seed_sql(store, 1200)
    client, admin, _, _ = _client(store, audit_reads=False, export_chunk_rows=250)
    lines = client.get("/v1/events/export?format=ndjson&q=kind:role", headers=admin).text.splitlines()
    exported = [orjson.loads(x) for x in lines]
    assert len(exported) == 400
    page = client.get("/v1/events?q=kind:role&limit=1000&fields=full", headers=admin).json()["items"]
    assert exported == page


def test_facets_and_total_are_in_scope(store: Store) -> None:
    _seed_sql(store, 600)
    client, admin, dev, _ = _client(store, audit_reads=False)
    everything = client.get("/v1/events/facets", headers=admin).json()
    assert everything["total"] == 600
    outcomes = {f["value"]: f["count"] for f in everything["facets"]["outcome"]}
    assert outcomes == {"success": 300, "failure": 150, "denied": 150}
    assert {f["value"] for f in everything["facets"]["target_kind"]} == {"application", "role"}
    mine = client.get("/v1/events/facets?q=outcome:failure,denied", headers=dev).json()
    allowed = [n for n in range(600) if n % 3 != 2 and n % 20 == 7 and n % 4 >= 2]
    assert mine["total"] == len(allowed)
    assert {f["value"] for f in mine["facets"]["target_kind"]} <= {"application"}
    listing = client.get("/v1/events?include_total=true&q=outcome:failure,denied", headers=dev).json()
    assert listing["total"] == len(allowed)


def test_every_read_is_recorded_and_visible_to_infrastructure_managers(store: Store) -> None:
    client, admin, dev, _ = _client(store)
    client.get("/v1/events?q=action:role.*", headers=dev)
    client.get("/v1/events/export?format=ndjson", headers=dev)
    client.get(f"/v1/events/{uuid.uuid4()}", headers=dev)
    # Recorded before each answer left: no flush, no wait.
    reads = client.get("/v1/events?q=action:audit_log.*&limit=100&fields=full", headers=admin).json()["items"]
    by_dev = [r for r in reads if r["actor"]["id"] == "u-dev"]
    assert {r["action"] for r in by_dev} == {"audit_log.read", "audit_log.export"}
    query = next(r for r in by_dev if r["details"].get("view") == "global")
    assert query["details"]["query"] == {"q": "action:role.*"}
    assert all(r["target"] == {"kind": "infrastructure", "id": "acme", "name": None} for r in by_dev)
    # The developer may not read who read the audit log.
    assert client.get("/v1/events?q=action:audit_log.*", headers=dev).json()["items"] == []


def test_parquet_export_is_one_typed_file_in_scope(store: Store) -> None:
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    _seed_sql(store, 1300)
    client, admin, dev, _ = _client(store, audit_reads=False, export_chunk_rows=250)
    with client.stream("GET", "/v1/events/export?format=parquet", headers=admin) as r:
        assert r.headers["content-type"] == "application/vnd.apache.parquet"
        assert r.headers["content-disposition"].endswith('.parquet"')
        parts = list(r.iter_bytes())
    assert len(parts) > 1  # streamed: row groups leave as they are written
    data = b"".join(parts)
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 1300
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 6  # one per chunk of 250
    assert table.schema.field("occurred_at").type == pa.timestamp("ms", tz="UTC")
    rows = table.to_pylist()
    api = client.get("/v1/events?limit=1000&fields=full", headers=admin).json()["items"]
    first, listed = rows[0], api[0]
    assert first["event_id"] == listed["event_id"]
    assert first["occurred_at"] == datetime.fromisoformat(listed["occurred_at"])
    assert first["actor"] == listed["actor"] and first["target"] == listed["target"]
    assert [
        {**c, "old": orjson.loads(c["old"]), "new": orjson.loads(c["new"])} for c in first["changes"]
    ] == (listed["changes"])
    assert orjson.loads(first["details"]) == listed["details"]
    times = [row["occurred_at"] for row in rows]
    assert times == sorted(times, reverse=True)
    # The developer's file holds what the developer may read, and nothing else.
    mine = pq.read_table(io.BytesIO(client.get("/v1/events/export?format=parquet", headers=dev).content))
    assert mine.num_rows == sum(1 for n in range(1300) if n % 3 != 2 and n % 20 == 7) > 0
    assert set(mine.column("target").combine_chunks().field("id").to_pylist()) == {"app-7"}
    empty = client.get("/v1/events/export?format=parquet&q=action:nothing.here", headers=admin).content
    assert pq.read_table(io.BytesIO(empty)).num_rows == 0
    assert client.get("/v1/events/export?format=parquet&proofs=true", headers=admin).status_code == 400
