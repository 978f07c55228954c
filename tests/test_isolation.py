"""One caller's expensive reads cannot make another wait: reads on connections of their own,
per-query limits with a clear error, and a bounded number of reads at once per key."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from query_api.deps import ReadSlots
from query_api.search import compile_query
from query_api.settings import ApiSettings
from storage.engine import Engine, StoreError
from storage.reader import EventFilter, ReadLimits, View
from storage.store import Store
from tests.grants import ALL, make_key
from tests.test_export_and_facets import DIRECTORY as FACETS_DIRECTORY
from tests.test_export_and_facets import _seed_sql


def test_a_read_is_answered_while_another_runs(chdb_engine: Engine) -> None:
    # The suite's engine (chDB takes one data folder per process) reads on 4 connections.
    slow_done = threading.Event()

    def slow() -> None:
        chdb_engine.query("SELECT sleepEachRow(0.4) FROM numbers(3) FORMAT Null")
        slow_done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.1)
    assert chdb_engine.query("SELECT 1 AS one") == [{"one": 1}]
    # Answered before the slow read ended: it did not wait behind it.
    assert not slow_done.is_set()
    thread.join()


def test_a_read_past_its_time_limit_fails_with_the_servers_code(chdb_engine: Engine) -> None:
    store = Store(
        chdb_engine, database="t_limit_" + str(time.time_ns())[-9:], read_limits=ReadLimits(timeout_s=0.001)
    )
    _seed_sql(store, 300_000)
    # Substrings: a scan of every row, which no index can shorten.
    text = " ".join(f"-contains:term{i}" for i in range(50))
    flt = EventFilter(search=compile_query(text, now=datetime.now(UTC)).search)
    with pytest.raises(StoreError) as err:
        store.reader.page(scope=ALL, view=View(), filters=flt, limit=1000)
    assert err.value.code in (159, 160)


def test_the_api_says_which_limit_stopped_a_read(chdb_engine: Engine) -> None:
    store = Store(
        chdb_engine, database="t_limapi_" + str(time.time_ns())[-9:], read_limits=ReadLimits(timeout_s=0.001)
    )
    _seed_sql(store, 300_000)
    embedded = build_embedded(store, api_settings=ApiSettings(audit_reads=False), directory=FACETS_DIRECTORY)
    client = TestClient(embedded.app)
    key = make_key(store, "u-admin")
    q = " ".join(f'-"term{i}"' for i in range(50))
    r = client.get("/v1/events", params={"q": q, "limit": 1000}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503, r.text
    assert "time limit" in r.json()["detail"] and r.json()["code"] in (159, 160)


def test_a_key_gets_a_few_reads_at_once_and_others_keep_theirs() -> None:
    slots = ReadSlots(per_key=2, wait_s=0.2)
    with slots.hold("busy"), slots.hold("busy"):
        with pytest.raises(HTTPException) as err, slots.hold("busy"):
            pass
        assert err.value.status_code == 429
        with slots.hold("other"):  # another caller is not held up by "busy"
            pass
    with slots.hold("busy"), slots.hold("busy"):  # released again
        pass
    assert slots._slots == {}  # nothing kept for keys with no read running
