"""A child process holding one chDB store, answering query specs through the product's reader.

    python -m benchmarks.chdb_server --store DIR

Requests are JSON lines (see `benchmarks.common.JsonChild`):

- {"op": "run", "spec": {...}}: one timed run; the reply has `ms` and the
  result's event ids (or facets) for the parent's same-answer check.
- {"op": "explain", "spec": {...}}: the SQL the reader sent, ClickHouse's
  `EXPLAIN indexes = 1`, and the rows and bytes the statement read.
- {"op": "profile", "spec": {...}, "runs": N}: cProfile of N runs (Python side).
- {"op": "sizes"}: bytes on disk of the event tables.

The timed span is the reader call: SQL built, run by chDB, JSONEachRow parsed to
dicts (what an API handler gets back), as the PostgreSQL side times
execute + fetchall into dicts.
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import say_ready, serve_json_lines
from benchmarks.dataset import ADMIN_USER, BENCH_INFRASTRUCTURE, DATABASE, GRANTS_USER, chdb_sizes
from benchmarks.profiles import summarize_pstats
from benchmarks.queries import FACET_SIZE, FACETS, PAGE_SIZE, TIMELINE_BUCKETS
from producers.contract.permissions import Caller, ReadScope, scope_for
from query_api.search import compile_query
from storage.engine import ChdbEngine, Params
from storage.reader import EventFilter, View
from storage.store import Store

CALLERS = {"admin": ADMIN_USER, "grants": GRANTS_USER}


class RecordingEngine:
    """The chDB engine, remembering the last statement (for EXPLAIN and read statistics)."""

    name = "chdb"

    def __init__(self, inner: ChdbEngine) -> None:
        self.inner = inner
        self.last: tuple[str, Params | None] = ("", None)

    def query(self, sql: str, *, params: Params | None = None) -> list[dict[str, Any]]:
        self.last = (sql, params)
        return self.inner.query(sql, params=params)

    def command(self, sql: str, *, params: Params | None = None) -> None:
        self.inner.command(sql, params=params)

    def command_aside(self, sql: str, *, params: Params | None = None) -> None:
        self.inner.command_aside(sql, params=params)

    def insert_json(self, table: str, *, columns: Sequence[str], data: bytes) -> None:
        self.inner.insert_json(table, columns=columns, data=data)

    def stream(self, sql: str, *, params: Params | None = None) -> Iterator[bytes]:
        return self.inner.stream(sql, params=params)

    def query_binary(self, sql: str, *, params: Params | None = None) -> bytes:
        return self.inner.query_binary(sql, params=params)

    def query_raw(self, sql: str, *, params: Params | None = None, fmt: str) -> bytes:
        return self.inner.query_raw(sql, params=params, fmt=fmt)

    def insert_binary(self, table: str, *, columns: Sequence[str], data: bytes) -> None:
        self.inner.insert_binary(table, columns=columns, data=data)

    def close(self) -> None:
        self.inner.close()

    def raw(self, sql: str, params: Params | None) -> Any:
        """The chDB result object (it carries rows/bytes read); benchmark diagnostics only."""
        bound = self.inner._params(params)
        return self.inner._conn.query(sql, "JSONEachRow", params=bound)


class Server:
    def __init__(self, store_path: Path) -> None:
        self.engine = RecordingEngine(ChdbEngine(str(store_path)))
        self.store = Store(self.engine, database=DATABASE)
        directories = self.store.directory.load()
        self.scopes: dict[str, ReadScope] = {
            name: scope_for(Caller(user_id=user, infrastructure=BENCH_INFRASTRUCTURE), directories)
            for name, user in CALLERS.items()
        }
        self.cursors: dict[str, str | None] = {}

    def _args(self, spec: dict[str, Any]) -> tuple[ReadScope, View, EventFilter]:
        scope = self.scopes[spec["caller"]]
        if spec["view"] == "activity":
            view = View(kind="activity", actor_id=spec["actor_id"])
        elif spec["view"] == "entity":
            kind, _, ident = spec["entity"].partition("/")
            view = View(kind="entity", entity_kind=kind, entity_id=ident)
        else:
            view = View()
        f = spec.get("filters", {})
        search = compile_query(spec["text"], now=datetime.now(UTC)).search if spec.get("text") else None
        flt = EventFilter(
            since_ms=f.get("since_ms"),
            until_ms=f.get("until_ms"),
            outcomes=tuple(f.get("outcomes", ())),
            environments=tuple(f.get("environments", ())),
            search=search,
        )
        return scope, view, flt

    def _cursor(self, spec: dict[str, Any]) -> str | None:
        """The cursor of page `spec.page`, found once by following next_cursor (not timed)."""
        key = f"{spec['caller']}:{spec['name']}"
        if key not in self.cursors:
            scope, view, flt = self._args(spec)
            cursor = None
            for _ in range(int(spec["page"]) - 1):
                page = self.store.reader.page(
                    scope=scope, view=view, filters=flt, limit=PAGE_SIZE, cursor=cursor
                )
                cursor = page.next_cursor
                if cursor is None:
                    break
            self.cursors[key] = cursor
        return self.cursors[key]

    def run_once(self, spec: dict[str, Any]) -> dict[str, Any]:
        cursor = self._cursor(spec) if int(spec.get("page", 1)) > 1 else None
        started = time.perf_counter()
        scope, view, flt = self._args(spec)
        if spec.get("facets"):
            result = self.store.reader.facets(
                scope=scope, view=view, filters=flt, columns=FACETS, size=FACET_SIZE
            )
            ms = (time.perf_counter() - started) * 1000
            return {"ms": ms, "facets": result}
        if spec.get("timeline"):
            timeline = self.store.reader.timeline(
                scope=scope, view=view, filters=flt, now_ms=int(spec["now_ms"]), buckets=TIMELINE_BUCKETS
            )
            ms = (time.perf_counter() - started) * 1000
            return {"ms": ms, "timeline": {str(b.start_ms): b.counts for b in timeline.buckets if b.counts}}
        # A listing's page as the API answers it by default: summaries (fields=summary).
        page = self.store.reader.page(
            scope=scope, view=view, filters=flt, limit=PAGE_SIZE, cursor=cursor, summary=True
        )
        ms = (time.perf_counter() - started) * 1000
        return {"ms": ms, "ids": [r["event_id"] for r in page.items], "more": page.next_cursor is not None}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "run":
            return self.run_once(request["spec"])
        if op == "explain":
            spec = request["spec"]
            self.run_once(spec)
            sql, params = self.engine.last
            plan = self.engine.query(f"EXPLAIN indexes = 1 {sql}", params=params)
            result = self.engine.raw(sql, params)
            return {
                "sql": sql,
                "plan": "\n".join(next(iter(r.values())) for r in plan),
                "storage_rows_read": int(result.storage_rows_read()),
                "storage_bytes_read": int(result.storage_bytes_read()),
                "elapsed_ms": float(result.elapsed()) * 1000,
            }
        if op == "profile":
            spec = request["spec"]
            self.run_once(spec)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(int(request.get("runs", 10))):
                self.run_once(spec)
            profiler.disable()
            return {"top": summarize_pstats(profiler, limit=int(request.get("limit", 12)))}
        if op == "sizes":
            return chdb_sizes(self.engine)
        if op == "memory":
            # Linux reports ru_maxrss in KiB: the most this process (chDB in it) ever held.
            return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if op == "count":
            return {"events": self.store.event_count()}
        raise ValueError(f"unknown op {op!r}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args()
    server = Server(args.store)
    say_ready(events=server.store.event_count())
    serve_json_lines(server.handle)
    server.store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
