"""Ingest on the embedded path: `BatchIngestor.ingest` into a fresh chDB store, and the HTTP endpoint.

Child commands (one chDB folder per process):

    python -m benchmarks.ingest prepare  --store DIR            # directory + an API key, JSON on stdout
    python -m benchmarks.ingest embedded --store DIR --events N --batch 20000 [--profile]

`embedded` generates N realistic events first (not timed), then times
`BatchIngestor.ingest` (parse -> normalize -> enrich -> dedupe lookup -> insert)
batch after batch, as the HTTP handler and `auditlog ingest` call it.
With `--profile` the run is under cProfile and the reply carries the summary
(that run's rate is not a measurement).
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dataset import ADMIN_USER, bench_directory, realistic_events
from benchmarks.profiles import summarize_pstats
from producers.contract.directory import Directories


def fresh_events(n: int, *, seed: int) -> list[dict[str, Any]]:
    """N realistic events over the last week (their times are today's, as live ingest sees)."""
    return list(realistic_events(n, days=7, end=datetime.now(UTC), seed=seed))


def prepare(store_path: Path) -> dict[str, Any]:
    from storage.store import Store, StoreSettings

    store = Store.open(StoreSettings(path=store_path))
    store.directory.replace(bench_directory())
    directory = bench_directory()
    key, _ = store.keys.create(
        infrastructure=directory.infrastructure, user_id=ADMIN_USER, label="benchmark", can_ingest=True
    )
    store.close()
    return {"key": key}


def embedded(store_path: Path, n: int, batch: int, *, profile: bool, seed: int) -> dict[str, Any]:
    from storage.store import Store, StoreSettings
    from stream.batch_ingest import BatchIngestor

    store = Store.open(StoreSettings(path=store_path))
    directory = bench_directory()
    store.directory.replace(directory)
    events = fresh_events(n, seed=seed)
    directories = Directories([directory])
    ingestor = BatchIngestor(store, lambda: directories, source="api")
    profiler = cProfile.Profile() if profile else None
    stored = 0
    batch_s = []
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for i in range(0, n, batch):
        t = time.perf_counter()
        report = ingestor.ingest(events[i : i + batch], received_at_ms=int(time.time() * 1000))
        batch_s.append(time.perf_counter() - t)
        stored += report.stored
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {
        "events": n,
        "stored": stored,
        "seconds": elapsed,
        "events_per_s": n / elapsed,
        "batch": batch,
        "batch_seconds": [round(b, 3) for b in batch_s],
        "count": store.event_count(),
    }
    if profiler is not None:
        out["profile"] = summarize_pstats(profiler, limit=20)
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--store", type=Path, required=True)
    e = sub.add_parser("embedded")
    e.add_argument("--store", type=Path, required=True)
    e.add_argument("--events", type=int, required=True)
    e.add_argument("--batch", type=int, default=20_000)
    e.add_argument("--seed", type=int, default=11)
    e.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        result = prepare(args.store)
    else:
        result = embedded(args.store, args.events, args.batch, profile=args.profile, seed=args.seed)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
