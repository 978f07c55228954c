"""PostgreSQL, the baseline: Debian's server in a private cluster, the same rows, the best indexes.

The harness installs Debian's `postgresql` package when no server is found (as
root), runs `initdb` into `benchmarks/.pg/<scale>` as the `postgres` user
(PostgreSQL refuses to run as root), starts it on a free port on 127.0.0.1 and
stops it at the end. A loaded cluster is reused by later runs of the same data
set (its fingerprint is kept next to it).

Schema and indexes (see benchmarks/README.md for the reasoning):

- `audit_events`: every stored column, same values as ClickHouse's; fixed-width
  columns first so that rows pack without padding. Arrays are `text[]`,
  `changes`/`details` the same JSON text the product stores.
- primary key `event_id` (idempotent ingest needs it anyway);
- `(occurred_at, event_id)`: the global log's order and keyset (read backwards);
- `(actor_id, occurred_at, event_id)`: the user activity log;
- `(outcome, environment, occurred_at, event_id)`: exactly the filtered global
  query benchmarked (PostgreSQL's best case; a real installation could not have
  one such index per filter combination);
- `audit_entity_log (entity_key, occurred_at, event_id)`: one narrow row per
  (event, entity touched), the change-log path, joined to events by primary key;
- a pg_trgm GIN index on the lower-cased concatenation of the free-text columns.

The permission predicate is the product's rule (`benchmarks.queries.pg_scope`):
`infrastructure = %s AND scope_key = ANY(tokens)` (hashed), as in `storage.scope_predicate`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import REPO, free_port, log
from benchmarks.queries import (
    DEEP_PAGE,
    PAGE_SIZE,
    TIMELINE_BUCKETS,
    facets_out,
    pg_facets,
    pg_keyset_at,
    pg_oldest,
    pg_page,
    pg_timeline,
)
from producers.contract.permissions import ReadScope
from storage.reader import INTERVALS_MS
from storage.record import COLUMN_NAMES

# shared_buffers etc. for a 2-core, ~24 GB machine shared with other work.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'2GB'",
    "effective_cache_size": "'8GB'",
    "work_mem": "'64MB'",
    "maintenance_work_mem": "'1GB'",
    "max_wal_size": "'8GB'",
    "wal_level": "'minimal'",
    "max_wal_senders": "0",
    "checkpoint_timeout": "'30min'",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "max_worker_processes": "4",
    "max_parallel_workers": "2",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "2",
    # JIT compiles plans of the big aggregations for hundreds of ms; off is the usual advice
    # for an interactive workload (measured both ways on the facets query, see README).
    "jit": "off",
    "logging_collector": "off",
    "unix_socket_directories": "''",
}

TABLE_DDL = """
CREATE TABLE audit_events (
    event_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    kafka_offset bigint NOT NULL,
    kafka_partition integer NOT NULL,
    schema_version smallint NOT NULL,
    infrastructure text NOT NULL,
    environment text NOT NULL,
    actor_id text NOT NULL,
    actor_name text NOT NULL,
    actor_type text NOT NULL,
    actor_ip text NOT NULL,
    actor_user_agent text NOT NULL,
    actor_session_id text NOT NULL,
    action text NOT NULL,
    target_kind text NOT NULL,
    target_id text NOT NULL,
    target_name text NOT NULL,
    related_kinds text[] NOT NULL,
    related_ids text[] NOT NULL,
    related_names text[] NOT NULL,
    entity_keys text[] NOT NULL,
    outcome text NOT NULL,
    reason text NOT NULL,
    changes text NOT NULL,
    details text NOT NULL,
    source_service text NOT NULL,
    source_host text NOT NULL,
    source_version text NOT NULL,
    request_id text NOT NULL,
    correlation_id text NOT NULL,
    plan_app_ids text[] NOT NULL,
    app_team_id text NOT NULL,
    scope_key text NOT NULL,
    ingest_source text NOT NULL,
    kafka_topic text NOT NULL,
    content_hash numeric(39) NOT NULL,
    ingest_key_id text NOT NULL,
    log text NOT NULL,
    leaf_index bigint NOT NULL
)
"""

SEARCH_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_search_doc(
    actor_id text, actor_name text, target_id text, target_name text, related_names text[],
    related_ids text[], reason text, details text, changes text
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(actor_id || ' ' || actor_name || ' ' || target_id || ' ' || target_name || ' ' ||
                 array_to_string(related_names, ' ') || ' ' || array_to_string(related_ids, ' ') || ' ' ||
                 reason || ' ' || details || ' ' || changes)
$$
"""

INDEXES: tuple[tuple[str, str], ...] = (
    ("audit_events_pkey", "ALTER TABLE audit_events ADD CONSTRAINT audit_events_pkey PRIMARY KEY (event_id)"),
    ("audit_events_time", "CREATE INDEX audit_events_time ON audit_events (occurred_at, event_id)"),
    (
        "audit_events_actor",
        "CREATE INDEX audit_events_actor ON audit_events (actor_id, occurred_at, event_id)",
    ),
    (
        "audit_events_outcome_env",
        "CREATE INDEX audit_events_outcome_env ON audit_events (outcome, environment, occurred_at, event_id)",
    ),
    (
        "audit_entity_log_key",
        "CREATE INDEX audit_entity_log_key ON audit_entity_log (entity_key, occurred_at, event_id)",
    ),
    (
        "audit_events_search",
        "CREATE INDEX audit_events_search ON audit_events USING gin (bench_search_doc(actor_id, actor_name, "
        "target_id, target_name, related_names, related_ids, reason, details, changes) gin_trgm_ops)",
    ),
)


def find_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name)
    )
    return Path(found[-1]).parent if found else None


def ensure_installed() -> Path:
    """Debian's PostgreSQL server binaries, installed with apt when missing (needs root)."""
    bindir = find_bin()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise RuntimeError(
            "PostgreSQL is not installed: run `sudo apt-get install -y postgresql` or --skip-postgres"
        )
    log("installing Debian's postgresql package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # noqa: S607
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)  # noqa: S607
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("apt-get installed postgresql but no server binary was found")
    return bindir


class PgCluster:
    """One private cluster in `root` (data/ and server.log), run as `postgres` when we are root."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.bindir = bindir
        self.port = free_port()
        self.logfile = root / "server.log"
        self.fingerprint_file = root / "loaded.json"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str], *, timeout: float = 600) -> None:
        result = subprocess.run(  # noqa: S603 - PostgreSQL's own tools, arguments built here
            self._as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
        )
        if result.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def version(self) -> str:
        out = subprocess.run(  # noqa: S603
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"]
        )  # fmt: skip
        conf = "".join(f"{k} = {v}\n" for k, v in SETTINGS.items())
        bench_conf = self.data / "bench.conf"
        bench_conf.write_text(conf)
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\ninclude 'bench.conf'\n")
        if os.geteuid() == 0:
            shutil.chown(bench_conf, "postgres", "postgres")

    def start(self) -> None:
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120",
             "-o", f"-p {self.port}", "start"]
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def loaded(self, fingerprint: dict[str, Any]) -> bool:
        if not self.initialized() or not self.fingerprint_file.exists():
            return False
        saved: dict[str, Any] = orjson.loads(self.fingerprint_file.read_bytes())
        return saved.get("fingerprint") == fingerprint

    def load(self, export_argv: list[str], fingerprint: dict[str, Any]) -> dict[str, Any]:
        """The rows exported from chDB, COPY'd in; then the entity table, indexes and statistics."""
        timings: dict[str, float] = {}
        with self.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute(SEARCH_FUNCTION)
            conn.execute("DROP TABLE IF EXISTS audit_events, audit_entity_log")
            columns = ", ".join(COLUMN_NAMES)
            t0 = time.perf_counter()
            # Table created in the COPY's transaction: with wal_level=minimal the load skips the WAL.
            with conn.transaction():
                conn.execute(TABLE_DDL)
                cur = conn.cursor()
                exporter = subprocess.Popen(  # noqa: S603 - our own module
                    export_argv, cwd=REPO, stdout=subprocess.PIPE
                )
                assert exporter.stdout is not None
                with cur.copy(f"COPY audit_events ({columns}) FROM STDIN (FORMAT csv)") as copy:
                    while chunk := exporter.stdout.read(1 << 20):
                        copy.write(chunk)
                if exporter.wait() != 0:
                    raise RuntimeError(f"export failed with code {exporter.returncode}")
            timings["copy_s"] = time.perf_counter() - t0
            log(f"postgres: COPY done in {timings['copy_s']:.0f}s")
            t1 = time.perf_counter()
            conn.execute(
                "CREATE TABLE audit_entity_log AS SELECT k AS entity_key, occurred_at, event_id "
                "FROM audit_events, unnest(entity_keys) AS k"
            )
            conn.execute("ALTER TABLE audit_entity_log ALTER entity_key SET NOT NULL")
            timings["entity_table_s"] = time.perf_counter() - t1
            for name, ddl in INDEXES:
                t = time.perf_counter()
                conn.execute(ddl)
                timings[f"index_{name}_s"] = time.perf_counter() - t
                log(f"postgres: {name} built in {timings[f'index_{name}_s']:.0f}s")
            t2 = time.perf_counter()
            conn.execute("VACUUM (ANALYZE) audit_events")
            conn.execute("VACUUM (ANALYZE) audit_entity_log")
            conn.execute("CHECKPOINT")
            timings["vacuum_analyze_s"] = time.perf_counter() - t2
        info = {"fingerprint": fingerprint, "timings": {k: round(v, 1) for k, v in timings.items()}}
        self.fingerprint_file.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        return info

    def load_info(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.fingerprint_file.read_bytes())
        return data


def pg_sizes(conn: Any) -> dict[str, Any]:
    """Bytes on disk: each table (heap + TOAST) and each index; totals per event."""
    tables = {}
    for table in ("audit_events", "audit_entity_log"):
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass), pg_table_size(%s::regclass), "
            "pg_indexes_size(%s::regclass), (SELECT count(*) FROM " + table + ")",
            (table, table, table),
        ).fetchone()
        tables[table] = {
            "total": int(row[0]),
            "table": int(row[1]),
            "indexes": int(row[2]),
            "rows": int(row[3]),
        }
    indexes = {
        r[0]: int(r[1])
        for r in conn.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid IN ('audit_events'::regclass, 'audit_entity_log'::regclass) ORDER BY 1"
        ).fetchall()
    }
    events = tables["audit_events"]["rows"]
    total = sum(t["total"] for t in tables.values())
    search = indexes.get("audit_events_search", 0)
    return {
        "tables": tables,
        "indexes": indexes,
        "total_bytes": total,
        "bytes_per_event": total / events if events else 0.0,
        "bytes_per_event_without_trigram": (total - search) / events if events else 0.0,
        "database_bytes": int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]),
    }


def server_version(conn: Any) -> str:
    return str(conn.execute("SELECT version()").fetchone()[0])


class PgQueries:
    """Runs specs on PostgreSQL: execute + fetchall into dicts, timed like the chDB side."""

    def __init__(self, conn: Any, scopes: dict[str, ReadScope]) -> None:
        from psycopg.rows import dict_row

        self.conn = conn
        self.cur = conn.cursor(row_factory=dict_row)
        self.scopes = scopes
        self.keysets: dict[str, tuple[Any, str] | None] = {}

    def _after(self, spec: dict[str, Any]) -> tuple[Any, str] | None:
        page = int(spec.get("page", 1))
        if page <= 1:
            return None
        key = f"{spec['caller']}:{spec['name']}"
        if key not in self.keysets:
            sql, params = pg_keyset_at(spec, self.scopes[spec["caller"]], (page - 1) * PAGE_SIZE - 1)
            row = self.conn.execute(sql, params).fetchone()
            self.keysets[key] = (row[0], row[1]) if row else None
        return self.keysets[key]

    def statement(self, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        scope = self.scopes[spec["caller"]]
        if spec.get("facets"):
            return pg_facets(spec, scope)
        if spec.get("timeline"):
            return pg_timeline(spec, scope, INTERVALS_MS[-1])
        return pg_page(spec, scope, self._after(spec))

    def run_once(self, spec: dict[str, Any]) -> dict[str, Any]:
        after = self._after(spec)  # setup, not timed
        started = time.perf_counter()
        scope = self.scopes[spec["caller"]]
        if spec.get("facets"):
            sql, params = pg_facets(spec, scope)
            # Never a prepared statement: after five runs PostgreSQL may switch to a generic plan,
            # and for the 1,000-token scope that plan was 8x slower (55 s instead of 6.5 s at 10M).
            # Planning each time costs a few ms, nothing next to the scan. Pages keep psycopg's
            # default (prepared after 5 runs), which was as fast or faster for them.
            self.cur.execute(sql, params, prepare=False)
            rows = self.cur.fetchall()
            ms = (time.perf_counter() - started) * 1000
            return {"ms": ms, "facets": facets_out(rows)}
        if spec.get("timeline"):
            # As the product's reader: the oldest row's time, then one aggregate in the interval
            # that fits the range into the buckets.
            sql, params = pg_oldest(spec, scope)
            oldest = self.conn.execute(sql, params).fetchone()
            buckets: dict[str, dict[str, int]] = {}
            if oldest is not None:
                span = int(spec["now_ms"]) - int(oldest[0])
                interval = next((i for i in INTERVALS_MS if span / i <= TIMELINE_BUCKETS), INTERVALS_MS[-1])
                sql, params = pg_timeline(spec, scope, interval)
                self.cur.execute(sql, params, prepare=False)
                for r in self.cur.fetchall():
                    buckets.setdefault(str(int(r["t"])), {})[r["outcome"]] = int(r["n"])
            ms = (time.perf_counter() - started) * 1000
            return {"ms": ms, "timeline": buckets}
        sql, params = pg_page(spec, scope, after)
        self.cur.execute(sql, params)
        rows = self.cur.fetchall()
        ms = (time.perf_counter() - started) * 1000
        return {
            "ms": ms,
            "ids": [str(r["event_id"]) for r in rows[:PAGE_SIZE]],
            "more": len(rows) > PAGE_SIZE,
        }

    def explain(self, spec: dict[str, Any]) -> str:
        sql, params = self.statement(spec)
        rows = self.conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
        return "\n".join(r[0] for r in rows)


assert DEEP_PAGE > 1
