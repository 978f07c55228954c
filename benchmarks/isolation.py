"""One caller's expensive searches against another's first page (issue: "one caller can stall everyone").

    python -m benchmarks.isolation --store DIR [--events 120000] [--seconds 20]

Seeds the demo into DIR once (`auditlog demo --no-serve`), then for each store
configuration, in one child process per configuration (chDB opens a folder in
one process), serves the real ASGI app in process and runs, side by side:

- eight threads from the developer's key, each looping the issue's expensive
  search (50 negated free-text terms, limit 1000);
- one thread from the administrator's key asking for the global log's first
  page every 50 ms.

It reports the administrator's page p50/p95 alone and under that load, for
`read_connections=1` (every read behind one lock, as before) and the default
(4 connections, 2 reads per key). Timings are medians and percentiles of one
run on a shared machine: read them as ratios inside the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, log, percentile

EXPENSIVE = " ".join(f'-"nomatch{i}"' for i in range(50))


def seed(store: Path, events: int) -> dict[str, str]:
    run = subprocess.run(  # noqa: S603 - this interpreter, this package's command line
        [
            sys.executable,
            "-m",
            "auditlog.cli",
            "demo",
            "--no-serve",
            "--store",
            str(store),
            "--events",
            str(events),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    keys = [line.split(": ", 1)[1].strip() for line in run.stdout.splitlines() if "API key" in line]
    return {"admin": keys[0], "developer": keys[2]}


def child(store: Path, read_connections: int, seconds: float, keys: dict[str, str]) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from auditlog.embedded import build_embedded
    from query_api.settings import ApiSettings
    from storage.store import Store, StoreSettings

    s = Store.open(StoreSettings(path=store, read_connections=read_connections))
    app = build_embedded(s, api_settings=ApiSettings(audit_reads=False)).app
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    dev = {"Authorization": f"Bearer {keys['developer']}"}

    def page_ms() -> float:
        t = time.perf_counter()
        r = client.get("/v1/events", params={"limit": 50}, headers=admin)
        assert r.status_code == 200, r.text
        return (time.perf_counter() - t) * 1000

    for _ in range(5):
        page_ms()
    alone = [page_ms() for _ in range(40)]

    stop = threading.Event()
    searches: list[float] = []
    refused = 0

    def search() -> None:
        nonlocal refused
        while not stop.is_set():
            t = time.perf_counter()
            r = client.get("/v1/events", params={"q": EXPENSIVE, "limit": 1000}, headers=dev)
            if r.status_code == 429:
                refused += 1
                continue
            assert r.status_code == 200, r.text
            searches.append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=search, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    loaded: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        loaded.append(page_ms())
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    s.close()
    return {
        "read_connections": read_connections,
        "admin_page_alone_ms": {"p50": percentile(alone, 50), "p95": percentile(alone, 95), "n": len(alone)},
        "admin_page_loaded_ms": {
            "p50": percentile(loaded, 50),
            "p95": percentile(loaded, 95),
            "n": len(loaded),
        },
        "expensive_search_ms": {"p50": percentile(searches, 50), "n": len(searches)},
        "searches_refused_429": refused,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.store, args.child, args.seconds, json.loads(args.keys))))
        return 0
    log(f"seeding (or reusing) the demo in {args.store}")
    keys = seed(args.store, args.events)
    results = []
    for connections in (1, 4):
        log(f"read_connections={connections}: 8 expensive searches against the administrator's page")
        out = subprocess.run(  # noqa: S603 - this interpreter, this module
            [sys.executable, "-m", "benchmarks.isolation", "--store", str(args.store), "--seconds",
             str(args.seconds), "--child", str(connections), "--keys", json.dumps(keys)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))
    for r in results:
        a, b = r["admin_page_alone_ms"], r["admin_page_loaded_ms"]
        print(
            f"read_connections={r['read_connections']}: admin first page alone p50 {a['p50']:.1f} / p95 "
            f"{a['p95']:.1f} ms; under 8 expensive searches p50 {b['p50']:.1f} / p95 {b['p95']:.1f} ms "
            f"(n={b['n']}); searches p50 {r['expensive_search_ms']['p50']:.0f} ms, "
            f"429s {r['searches_refused_429']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
