"""An event_id is stored at most once, forever: duplicates counted, conflicts refused and kept."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import orjson
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from producers.contract.event import parse_event
from query_api.settings import ApiSettings
from storage.reader import EventFilter, View
from storage.store import Store
from storage.writer import DeadLetter, EventWriter
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, make_key, served

LINEAGE = Lineage(source="test", received_at_ms=1_792_000_000_000)


def event(event_id: str, *, occurred_at: str = "2026-09-01T10:00:00Z", **changes: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "infrastructure": "acme",
        "actor": {"id": "u-1"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-1"},
        **changes,
    }


def row(e: dict[str, Any], lineage: Lineage = LINEAGE) -> dict[str, Any]:
    return process(parse_event(e), served(), lineage)


def listed(store: Store) -> list[dict[str, Any]]:
    return store.reader.page(scope=ALL, view=View(), filters=EventFilter(), limit=1000).items


def test_an_id_stored_a_month_earlier_is_never_stored_again(store: Store) -> None:
    eid = str(uuid.uuid4())
    first = store.writer.write([row(event(eid))])
    assert (first.inserted, first.duplicates, first.conflicts) == (1, 0, ())
    # The same message again, received later from another partition: a duplicate.
    again = store.writer.write([row(event(eid), Lineage("kafka", 1_792_000_500_000, "audit.raw", 3, 99))])
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1, ())
    # Other content under the id, dated a month earlier: a conflict, not stored.
    forged = row(event(eid, occurred_at="2026-08-01T10:00:00Z", outcome="failure"))
    result = store.writer.write([forged])
    assert (result.inserted, result.duplicates) == (0, 0)
    [conflict] = result.conflicts
    assert f"{int(forged['content_hash']):032x}" in conflict.reason
    assert f"{conflict.stored_hash:032x}" in conflict.reason and conflict.stored_hash != int(
        forged["content_hash"]
    )
    # The same time and other content: a conflict too.
    assert len(store.writer.write([row(event(eid, reason="edited"))]).conflicts) == 1
    items = listed(store)
    assert [i["event_id"] for i in items] == [eid] and items[0]["outcome"] == "success"
    assert store.reader.get(scope=ALL, event_id=eid)["occurred_at_ms"] == items[0]["occurred_at_ms"]  # type: ignore[index]


def test_one_batch_holding_an_id_twice(store: Store) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    result = store.writer.write(
        [row(event(a)), row(event(a)), row(event(b)), row(event(b, outcome="denied"))]
    )
    assert (result.inserted, result.duplicates, len(result.conflicts)) == (2, 1, 1)
    assert result.conflicts[0].row["event_id"] == b
    assert sorted(i["event_id"] for i in listed(store)) == sorted([a, b])


class SlowLookups:
    """The store's engine, pausing after each "stored before?" lookup: the moment another
    writer would slip its insert in if check and insert were not held together."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def query(self, sql: str, *, params: Any = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.inner.query(sql, params=params)
        if "event_keys" in sql:
            time.sleep(0.005)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_two_writers_interleaving_on_one_store_store_each_id_once(store: Store) -> None:
    ids = [str(uuid.uuid4()) for _ in range(400)]
    rows = [
        row(event(i, occurred_at=f"2026-09-01T10:{n // 60 % 60:02d}:{n % 60:02d}Z"))
        for n, i in enumerate(ids)
    ]
    engine = SlowLookups(store.engine)
    writers = [EventWriter(engine, database=store.database, chunk_rows=37) for _ in range(4)]
    results: list[Any] = []
    lock = threading.Lock()

    def work(w: EventWriter, offset: int) -> None:
        # Every writer writes every row, in its own order and chunking: the worst overlap.
        batch = rows[offset:] + rows[:offset]
        for start in range(0, len(batch), 50):
            r = w.write(batch[start : start + 50])
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work, args=(w, 11 * n)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.inserted for r in results) == len(ids)
    assert sum(r.duplicates for r in results) == 3 * len(ids)
    assert not any(r.conflicts for r in results)
    assert store.event_count() == len(ids)
    assert sorted(i["event_id"] for i in listed(store)) == sorted(ids)


def test_the_api_reports_a_conflict_and_keeps_it_as_a_dead_letter(store: Store) -> None:
    directory = Directory.model_validate({"infrastructure": "acme", "users": [{"id": "u-1", "name": "U"}]})
    client = TestClient(
        build_embedded(store, api_settings=ApiSettings(audit_reads=False), directory=directory).app
    )
    headers = {"Authorization": f"Bearer {make_key(store, 'u-1', can_ingest=True)}"}
    eid = str(uuid.uuid4())
    assert client.post("/v1/events", json=[event(eid)], headers=headers).json()["stored"] == 1
    again = client.post("/v1/events", json=[event(eid)], headers=headers).json()
    assert (again["stored"], again["duplicates"], again["conflicts"], again["rejected"]) == (0, 1, 0, [])
    other = event(eid, occurred_at="2026-08-01T10:00:00Z", actor={"id": "mallory"})
    r = client.post("/v1/events", json=[event(str(uuid.uuid4())), other], headers=headers)
    assert r.status_code == 207, r.text
    body = r.json()
    assert (body["stored"], body["conflicts"]) == (1, 1)
    [rejected] = body["rejected"]
    assert rejected["index"] == 1 and "already stored with other content" in rejected["reason"]
    letters = store.engine.query(f"SELECT reason, payload FROM {store.database}.dead_letters")
    assert len(letters) == 1 and "stored content hash" in letters[0]["reason"]
    assert orjson.loads(letters[0]["payload"])["actor"] == {"id": "mallory"}
    assert store.event_count() == 2


def test_a_redelivered_message_is_dead_lettered_once(store: Store) -> None:
    at = "2026-10-14 17:46:40.000"
    letters = [
        DeadLetter(at, "kafka", "not JSON: Expecting value", b"\xffgarbage", "audit.raw", 2, 41),
        DeadLetter(at, "kafka", "invalid event: outcome", b'{"outcome":"maybe"}', "audit.raw", 2, 42),
    ]
    assert store.writer.write_dead_letters(letters) == 2
    # The worker died before its commit: the same messages come back, and once more.
    assert store.writer.write_dead_letters(letters) == 0
    assert store.writer.write_dead_letters([*letters, replace(letters[0], offset=43)]) == 1
    # HTTP rejects carry no source coordinates: each one is kept.
    http = DeadLetter(at, "api", "invalid event", b"{}")
    assert store.writer.write_dead_letters([http, http]) == 2
    rows = store.engine.query(f"SELECT count() AS n FROM {store.database}.dead_letters")
    assert int(rows[0]["n"]) == 5
