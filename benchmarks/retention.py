"""What a retention purge costs at scale: plan, record, tombstone and remove, on a copy of a store.

python -m benchmarks.retention --store DIR [--keep-copy]
    DIR is a store built by `python -m benchmarks.dataset build --scale 10m` (its rows span
    2025-10 to 2026-09); it is copied first, since a purge removes rows. Two purges, at a
    fixed "now" of 2026-12-01:

    1. default 365 days, no rule: the months wholly older than the cutoff go as whole
       parts (DROP PARTITION);
    2. default 270 days, production kept 2555, and a legal hold on one actor: the months
       older than the cutoff keep some rows, so they are mutated by tombstoned id.

    For each: the plan's time, the execute's (tombstones, drops, mutations), rows removed,
    and, while it ran, the latency of a first page of the global log from another thread.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dataset import DATABASE

NOW_MS = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)


def _pages_while(
    store: Any, scope: Any, stop: threading.Event, out: list[float], writes: list[float]
) -> None:
    """First pages of the global log, and one-row inserts on the writers' connection (where
    the record of every read goes), until stopped."""
    from storage.reader import EventFilter, View

    while not stop.is_set():
        started = time.perf_counter()
        store.reader.page(scope=scope, view=View(), filters=EventFilter(), limit=50)
        out.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        store.engine.insert_json(f"{store.database}.bench_probe", columns=("n",), data=b'{"n": 1}')
        writes.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)


def _figures(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1) if values else None,
        "max": round(max(values), 1) if values else None,
    }


def _run(store: Any, scope: Any, name: str, policy: Any, holds: list[Any]) -> dict[str, Any]:
    retention = store.retention
    infra = scope.infrastructure
    retention.set_policy(infra, policy, by="benchmark", now_ms=NOW_MS)
    for hold in holds:
        retention.create_hold(hold)
    before = store.event_count()
    started = time.perf_counter()
    plan = retention.plan(NOW_MS)
    plan_s = time.perf_counter() - started
    # The same pages for a while before the purge, side by side: what the purge adds to them.
    idle: list[float] = []
    idle_writes: list[float] = []
    stop = threading.Event()
    pager = threading.Thread(target=_pages_while, args=(store, scope, stop, idle, idle_writes), daemon=True)
    pager.start()
    time.sleep(5)
    stop.set()
    pager.join()
    latencies: list[float] = []
    writes: list[float] = []
    stop = threading.Event()
    pager = threading.Thread(target=_pages_while, args=(store, scope, stop, latencies, writes), daemon=True)
    pager.start()
    started = time.perf_counter()
    # The record is the caller's (an audit_log.purge event); a fresh id stands for it here.
    result = retention.execute(plan, {i: str(uuid.uuid4()) for i in plan.infrastructures()})
    execute_s = time.perf_counter() - started
    stop.set()
    pager.join()
    return {
        "run": name,
        "rows_before": before,
        "planned": plan.rows(infra),
        "held": plan.held.get(infra, 0),
        "purged": result.purged.get(infra, 0),
        "rows_after": store.event_count(),
        "partitions_dropped": result.partitions_dropped,
        "partitions_mutated": result.partitions_mutated,
        "plan_s": round(plan_s, 2),
        "execute_s": round(execute_s, 2),
        "first_page_ms_before": _figures(idle),
        "first_page_ms_during": _figures(latencies),
        "insert_ms_before": _figures(idle_writes),
        "insert_ms_during": _figures(writes),
    }


def main(argv: list[str] | None = None) -> int:
    from producers.contract.permissions import Caller, scope_for
    from storage.retention import LegalHold, Policy, Rule
    from storage.store import Store, StoreSettings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.retention", description=__doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--keep-copy", action="store_true")
    args = parser.parse_args(argv)
    copy = Path(tempfile.mkdtemp(prefix="retention-")) / "store"
    started = time.perf_counter()
    # chDB links a database's metadata to its folder (relative links): copied as links.
    shutil.copytree(args.store, copy, symlinks=True)
    print(f"copied in {time.perf_counter() - started:.0f} s to {copy}", flush=True)
    try:
        store = Store.open(StoreSettings(path=copy, database=DATABASE))
        store.engine.command(f"CREATE TABLE {DATABASE}.bench_probe (n UInt8) ENGINE = Memory")
        directories = store.directory.load()
        [directory] = list(directories)
        admin = next(
            u
            for u in sorted(directory.users)
            if scope_for(
                Caller(user_id=u, infrastructure=directory.infrastructure), directories
            ).sees_everything
        )
        scope = scope_for(Caller(user_id=admin, infrastructure=directory.infrastructure), directories)
        hold = LegalHold(
            hold_id="bench-hold", infrastructure=directory.infrastructure, name="bench", reason="",
            created_at_ms=NOW_MS, created_by="benchmark", actor="andrea.fleet",
        )  # fmt: skip
        runs = [
            _run(store, scope, "whole months", Policy(default_days=365), []),
            _run(
                store,
                scope,
                "mixed months",
                Policy(default_days=270, rules=(Rule(days=2555, environment="env-prod"),)),
                [hold],
            ),
        ]
        for run in runs:
            print(orjson.dumps(run).decode(), flush=True)
        store.close()
    finally:
        if not args.keep_copy:
            shutil.rmtree(copy.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
