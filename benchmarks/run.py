"""The benchmark harness: how fast, how big, against the goals and against PostgreSQL.

    python -m benchmarks.run --scale 1m                  # 1M events; also 10m, or smoke (seconds)
    python -m benchmarks.run --scale smoke --skip-postgres --skip-kafka

Prints a table and writes the results as JSON (default benchmarks/results/<scale>.json).
Every figure is the median (and p95) of several runs; chDB and PostgreSQL are asked
the same questions over the same rows, interleaved, in the same run; the machine
is described in the output. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BENCH_DIR,
    DATA_DIR,
    RESULTS_DIR,
    JsonChild,
    log,
    median,
    python_child,
    summary,
)
from benchmarks.dataset import ADMIN_USER, GRANTS_USER, SCALES, Scale, bench_directory
from benchmarks.queries import FIRST_PAGE, QUERIES, same_facets, spec

GOAL_STREAM_EVENTS_PER_S = 30_000
GOAL_LATENCY_P95_MS = 2_000
GOAL_FIRST_PAGE_P95_MS = 100
# The goals of the scales that have their own: pages at 10M and 100M, and the viewer's
# aggregates (facets, timeline) there.
GOAL_FIRST_PAGE_P95_MS_AT = {"10m": 25, "100m": 50}
GOAL_FREE_TEXT_P95_MS_AT = {"10m": 50}
GOAL_AGGREGATE_P95_MS_AT = {"10m": 300, "100m": 2_000}
AGGREGATE_QUERIES = ("facets", "timeline")
GOAL_PG_RATIO = 5.0
RATIO_QUERIES = ("global_first", "global_filtered", "facets", "timeline")


# ------------------------------------------------------------------------------ sections


# What the stored rows depend on: a change to any of these rebuilds a cached data set.
_ROW_SOURCES = (
    "storage/migrations.py",
    "storage/record.py",
    "storage/scope_predicate.py",
    "producers/contract/permissions.py",
    "storage/writer.py",
    "stream/steps.py",
    "producers/contract/event.py",
    "producers/contract/directory.py",
    "auditlog/demo_data.py",
    "benchmarks/dataset.py",
)


def source_fingerprint() -> str:
    digest = hashlib.sha256()
    for rel in _ROW_SOURCES:
        path = BENCH_DIR.parent / rel
        digest.update(rel.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return digest.hexdigest()[:16]


def build_dataset(scale: Scale, data_dir: Path, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    root = data_dir / scale.name
    store, meta_path = root / "store", root / "meta.json"
    fingerprint = source_fingerprint()
    if not rebuild and meta_path.exists():
        meta: dict[str, Any] = orjson.loads(meta_path.read_bytes())
        if meta.get("source_fingerprint") == fingerprint and meta.get("scale") == dataclasses.asdict(scale):
            log(
                f"dataset: reusing {root} ({meta['counts']['events']:,} events, built {meta.get('built_at')})"
            )
            return store, meta
        log("dataset: the schema, the pipeline or the scale changed since the last build: rebuilding")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    log(f"dataset: generating {scale.base_events:,} events x {scale.copies} copies into {store}")
    started = time.perf_counter()
    argv = python_child(
        "benchmarks.dataset", "build", "--scale", scale.name, "--store", str(store), "--meta", str(meta_path)
    )
    import subprocess

    subprocess.run(argv, check=True, cwd=BENCH_DIR.parent)  # noqa: S603
    meta = orjson.loads(meta_path.read_bytes())
    meta["timings"]["total_s"] = round(time.perf_counter() - started, 1)
    # The largest child waited for so far: the build is the first (Linux: KiB).
    meta["build_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    meta["source_fingerprint"] = fingerprint
    meta_path.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    log(f"dataset: {meta['counts']['events']:,} events in {meta['timings']['total_s']:.0f}s")
    return store, meta


def scopes() -> dict[str, Any]:
    from producers.contract.directory import Directories
    from producers.contract.permissions import Caller, scope_for

    directory = bench_directory()
    return {
        name: scope_for(
            Caller(user_id=user, infrastructure=directory.infrastructure), Directories([directory])
        )
        for name, user in (("admin", ADMIN_USER), ("grants", GRANTS_USER))
    }


def start_postgres(
    scale: Scale, store: Path, meta: dict[str, Any], *, reload: bool
) -> tuple[Any, dict[str, Any]]:
    from benchmarks.postgres import PgCluster, ensure_installed

    bindir = ensure_installed()
    cluster = PgCluster(BENCH_DIR / ".pg" / scale.name, bindir)
    fingerprint = {"build_id": meta["build_id"], "events": meta["counts"]["events"]}
    info: dict[str, Any]
    if not reload and cluster.loaded(fingerprint):
        log(f"postgres: reusing the loaded cluster in {cluster.root}")
        cluster.start()
        info = cluster.load_info()
    else:
        log(f"postgres: initdb in {cluster.root}")
        cluster.init()
        cluster.start()
        started = time.perf_counter()
        info = cluster.load(python_child("benchmarks.dataset", "export", "--store", str(store)), fingerprint)
        info["load_s"] = round(time.perf_counter() - started, 1)
        cluster.fingerprint_file.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
        log(f"postgres: loaded in {info['load_s']:.0f}s")
    return cluster, info


def run_queries(
    scale: Scale, store: Path, meta: dict[str, Any], pg: Any | None, runs: int, work: Path, profile: bool
) -> dict[str, Any]:
    from benchmarks.postgres import PgQueries

    targets = meta["targets"]
    ch = JsonChild(
        python_child("benchmarks.chdb_server", "--store", str(store)), log_path=work / "chdb_server.log"
    )
    pgq = PgQueries(pg, scopes()) if pg is not None else None
    results: list[dict[str, Any]] = []
    try:
        for name, title, first in QUERIES:
            for caller in ("admin", "grants"):
                s = spec(name, caller, targets)
                for _ in range(2):  # warm-up: caches, prepared statements, cursors
                    ch.call({"op": "run", "spec": s})
                    if pgq is not None:
                        pgq.run_once(s)
                ch_ms: list[float] = []
                pg_ms: list[float] = []
                ch_last: dict[str, Any] = {}
                pg_last: dict[str, Any] = {}
                for i in range(runs):
                    # Alternate who goes first, so that neither always runs on the other's warm cache.
                    order = ("ch", "pg") if i % 2 == 0 else ("pg", "ch")
                    for who in order:
                        if who == "ch":
                            ch_last = ch.call({"op": "run", "spec": s})
                            ch_ms.append(ch_last["ms"])
                        elif pgq is not None:
                            pg_last = pgq.run_once(s)
                            pg_ms.append(pg_last["ms"])
                row: dict[str, Any] = {
                    "query": name,
                    "title": title,
                    "first_page": first,
                    "caller": caller,
                    "spec": s,
                    "chdb": summary(ch_ms),
                }
                if "ids" in ch_last:
                    row["chdb"]["rows"] = len(ch_last["ids"])
                if pgq is not None:
                    row["postgres"] = summary(pg_ms)
                    row["ratio_p50"] = row["postgres"]["p50"] / row["chdb"]["p50"]
                    row["ratio_p95"] = row["postgres"]["p95"] / row["chdb"]["p95"]
                    if "ids" in ch_last:
                        row["postgres"]["rows"] = len(pg_last["ids"])
                        a, b = set(ch_last["ids"]), set(pg_last["ids"])
                        row["same_rows"] = a == b
                        row["row_overlap"] = len(a & b) / max(1, len(a | b))
                    elif "timeline" in ch_last:
                        row["same_rows"] = ch_last["timeline"] == pg_last["timeline"]
                    else:
                        row["same_rows"] = same_facets(ch_last["facets"], pg_last["facets"])
                results.append(row)
                pg_text = (
                    f", PG p50 {row['postgres']['p50']:.1f} ms ({row['ratio_p50']:.1f}x)"
                    if pgq is not None
                    else ""
                )
                log(f"query {name:16s} {caller:6s}: chDB p50 {row['chdb']['p50']:.1f} ms{pg_text}")
        # Why the figures are what they are: plans, rows read, and a Python profile of the slowest.
        for row in results:
            ex = ch.call({"op": "explain", "spec": row["spec"]})
            row["chdb"]["storage_rows_read"] = ex["storage_rows_read"]
            row["chdb"]["storage_bytes_read"] = ex["storage_bytes_read"]
            row["chdb"]["plan"] = clip_plan(ex["plan"])
            row["chdb"]["sql"] = ex["sql"]
            if pgq is not None:
                row["postgres"]["plan"] = clip_plan(pgq.explain(row["spec"]))
        profiles = {}
        if profile:
            slowest = sorted(results, key=lambda r: -r["chdb"]["p50"])[:4]
            for row in slowest:
                n = max(3, min(20, int(2000 / max(row["chdb"]["p50"], 1))))
                top = ch.call({"op": "profile", "spec": row["spec"], "runs": n, "limit": 12})["top"]
                profiles[f"{row['query']}/{row['caller']}"] = top
        sizes = ch.call({"op": "sizes"})
        memory = ch.call({"op": "memory"})
    finally:
        ch.close()
    return {
        "runs_per_query": runs,
        "results": results,
        "profiles": profiles,
        "chdb_sizes": sizes,
        "chdb_peak_rss_bytes": memory["peak_rss_bytes"],
    }


def clip_plan(plan: str, width: int = 300) -> str:
    """Plans print the 1,000 bound tokens in full; keep each line readable (and the JSON small)."""
    return "\n".join(line if len(line) <= width else line[:width] + " …" for line in plan.splitlines())


def run_embedded_ingest(scale: Scale, work: Path, runs: int, profile: bool) -> dict[str, Any]:
    import subprocess

    def one(tag: str, *extra: str) -> dict[str, Any]:
        store = work / f"ingest-{tag}" / "store"
        if store.exists():
            shutil.rmtree(store)
        argv = python_child(
            "benchmarks.ingest",
            "embedded",
            "--store",
            str(store),
            "--events",
            str(scale.ingest_events),
            *extra,
        )
        out = subprocess.run(argv, cwd=BENCH_DIR.parent, capture_output=True, check=False)  # noqa: S603
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode(errors="replace")[-3000:])
        shutil.rmtree(store, ignore_errors=True)
        data: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
        return data

    results = []
    for run in range(runs):
        r = one(str(run))
        results.append(r)
        log(f"ingest: embedded {r['events_per_s']:,.0f} events/s")
    rates = [r["events_per_s"] for r in results]
    out: dict[str, Any] = {
        "batch": 20_000,
        "events_per_s": median(rates),
        "summary": summary(rates),
        "runs": results,
    }
    if profile:
        out["profile"] = one("profiled", "--profile")["profile"]
    return out


# ------------------------------------------------------------------------------ report


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    scale = report["scale"]
    out: list[dict[str, Any]] = []
    stream = report.get("ingest", {}).get("streaming", {})
    if "end_to_end" in stream:
        v = stream["end_to_end"]["events_per_s"]
        out.append(
            {
                "goal": f">= {GOAL_STREAM_EVENTS_PER_S:,} events/s per worker end to end",
                "measured": round(v),
                "met": v >= GOAL_STREAM_EVENTS_PER_S,
            }
        )
    if "latency" in stream:
        v = stream["latency"]["p95_ms"]
        out.append(
            {
                "goal": f"producer-to-queryable p95 < {GOAL_LATENCY_P95_MS} ms",
                "measured": round(v),
                "met": v < GOAL_LATENCY_P95_MS,
            }
        )
    rows = report.get("queries", {}).get("results", [])
    page_goal = GOAL_FIRST_PAGE_P95_MS_AT.get(scale, GOAL_FIRST_PAGE_P95_MS)
    for r in rows:
        if r["query"] in FIRST_PAGE:
            v = r["chdb"]["p95"]
            who = r["caller"] + (", reader only" if _reader_only(r) else "")
            goal = GOAL_FREE_TEXT_P95_MS_AT.get(scale, page_goal) if r["query"] == "free_text" else page_goal
            out.append(
                {
                    "goal": f"{r['query']} ({who}) p95 <= {goal} ms at {scale}",
                    "measured": round(v, 1),
                    "met": v <= goal,
                }
            )
    aggregate_goal = GOAL_AGGREGATE_P95_MS_AT.get(scale)
    for r in rows:
        if aggregate_goal and r["query"] in AGGREGATE_QUERIES:
            v = r["chdb"]["p95"]
            out.append(
                {
                    "goal": f"{r['query']} ({r['caller']}) p95 <= {aggregate_goal:,} ms at {scale}",
                    "measured": round(v, 1),
                    "met": v <= aggregate_goal,
                }
            )
    for r in rows:
        if r["query"] in RATIO_QUERIES and "ratio_p50" in r:
            v = r["ratio_p50"]
            out.append(
                {
                    "goal": f"{r['query']} ({r['caller']}) >= {GOAL_PG_RATIO:g}x faster than PostgreSQL",
                    "measured": round(v, 1),
                    "met": v >= GOAL_PG_RATIO,
                }
            )
    sizes = report.get("sizes", {})
    if "ratio" in sizes:
        v = sizes["ratio"]
        out.append(
            {
                "goal": f">= {GOAL_PG_RATIO:g}x smaller than PostgreSQL (bytes per event)",
                "measured": round(v, 1),
                "met": v >= GOAL_PG_RATIO,
            }
        )
    return out


def _n(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _reader_only(row: dict[str, Any]) -> bool:
    return bool(row["query"].startswith("activity") and row["caller"] == "grants")


def _row(label: str, value: str, note: str = "") -> str:
    return f"  {label:56s} {value:>12s}  {note}".rstrip()


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    m = report["machine"]
    pgv = report.get("postgres", {}).get("version", "PostgreSQL not run")
    lines.append(
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"Linux {m['kernel']}; Python {m['python']}, chDB {m['chdb']} (ClickHouse {m['clickhouse']})"
    )
    lines.append(f"         {pgv.split(' on ')[0]}; commit {m['git_commit']}")
    la0, la1 = m["load_average_start"], m.get("load_average_end", [math.nan])
    by_section = m.get("load_average_by_section") or {}
    if by_section:
        steps = ", ".join(f"{k} {v[0]:.2f}" for k, v in by_section.items())
        lines.append(f"Load average (1 min) when each section started: {steps}")
    else:
        lines.append(f"Load average (1 min): {la0[0]:.2f} at start, {la1[0]:.2f} at end")
    d = report.get("dataset")
    if d:
        c, sc, t = d["counts"], d["scale"], d["targets"]
        share = 100 * t["grants_visible_events"] / max(1, c["events"])
        lines.append(
            f"Data: {c['events']:,} events ({sc['base_events']:,} generated x {sc['copies']} copies over "
            f"{sc['days_per_copy'] * sc['copies']} days), {c['entity_rows']:,} entity-log rows, "
            f"{d['applications']:,} applications"
        )
        lines.append(
            f"      the 1,000-grant caller may read {t['grants_visible_events']:,} of them ({share:.1f}%)"
        )
    ing = report.get("ingest", {})
    if ing:
        lines.append("")
        lines.append(f"{'Ingest (median of runs)':58s} {'events/s':>12s}")
        if "embedded" in ing:
            e = ing["embedded"]
            label = "embedded: BatchIngestor.ingest, 20k batches, fresh chDB"
            lines.append(_row(label, _n(e["events_per_s"]), f"({e['summary']['n']} runs)"))
        if "http" in ing:
            e = ing["http"]
            label = f"embedded: POST /v1/events, {e['batch']:,}-event NDJSON bodies"
            lines.append(_row(label, _n(e["events_per_s"]), f"({e['summary']['n']} runs)"))
        s = ing.get("streaming", {})
        if "end_to_end" in s:
            e2e = s["end_to_end"]
            busy = median([r["worker_cores_busy"] for r in e2e["runs"]])
            label = "streaming: SDK -> Kafka -> 1 worker -> chDB, end to end"
            note = f"({e2e['summary']['n']} runs; worker {busy:.2f} cores busy)"
            lines.append(_row(label, _n(e2e["events_per_s"]), note))
            lines.append(_row("streaming: backlog drain, 1 worker", _n(s["drain"]["events_per_s"])))
        if "latency" in s:
            lt = s["latency"]
            lines.append(
                f"  producer-to-queryable at {lt['rate']:,}/s for {lt['seconds']:.0f}s: "
                f"p50 {_n(lt['p50_ms'])} ms, p95 {_n(lt['p95_ms'])} ms, max {_n(lt['max_ms'])} ms "
                f"({lt['probes']} probes, polled every {lt['poll_interval_ms']:.0f} ms)"
            )
    q = report.get("queries")
    if q and q.get("results"):
        has_pg = any("postgres" in r for r in q["results"])
        lines.append("")
        title = f"Query ({q['runs_per_query']} runs, ms)"
        head = f"{title:32s} {'caller':7s} {'chDB p50':>9s} {'p95':>8s}"
        if has_pg:
            head += f" {'PG p50':>9s} {'p95':>9s} {'PG/chDB':>8s} {'same':>5s}"
        lines.append(head)
        for r in q["results"]:
            ch = r["chdb"]
            caller = r["caller"] + ("*" if _reader_only(r) else "")
            line = f"  {r['query']:30s} {caller:7s} {_n(ch['p50'], 1):>9s} {_n(ch['p95'], 1):>8s}"
            if "postgres" in r:
                pg = r["postgres"]
                same = "yes" if r["same_rows"] else "NO"
                ratio = _n(r["ratio_p50"], 1) + "x"
                line += f" {_n(pg['p50'], 1):>9s} {_n(pg['p95'], 1):>9s} {ratio:>8s} {same:>5s}"
            lines.append(line)
        if any(_reader_only(r) for r in q["results"]):
            lines.append(
                "  * reader only: the API answers 403 (an activity log needs Manage Infrastructure and Users)"
            )
    sz = report.get("sizes")
    if sz:
        lines.append("")
        ch = sz["chdb"]
        tables = ch["tables"]
        # Results saved before migration 4 name the full-row audit_entity_log instead.
        entity = "audit_entity_index" if "audit_entity_index" in tables else "audit_entity_log"
        lines.append(
            f"Bytes on disk per event: chDB {_n(ch['bytes_per_event'])} "
            f"(audit_events {_n(tables['audit_events']['bytes'] / 2**20, 1)} MiB incl. its projection, "
            f"{entity} {_n(tables[entity]['bytes'] / 2**20, 1)} MiB)"
        )
        peak = q.get("chdb_peak_rss_bytes") if q else None
        built = report.get("dataset", {}).get("build_peak_rss_bytes")
        if peak or built:
            lines.append(
                f"Peak memory (RSS): queries {_n((peak or 0) / 2**20)} MiB, "
                f"dataset build {_n((built or 0) / 2**20)} MiB"
            )
        if "postgres" in sz:
            pg = sz["postgres"]
            ev = pg["tables"]["audit_events"]
            lines.append(
                f"                         PostgreSQL {_n(pg['bytes_per_event'])} "
                f"(heap {_n(ev['table'] / 2**20)} MiB, indexes {_n(ev['indexes'] / 2**20)} MiB, "
                f"entity table + index {_n(pg['tables']['audit_entity_log']['total'] / 2**20)} MiB); "
                f"{_n(pg['bytes_per_event_without_trigram'])} without the trigram index"
            )
            lines.append(
                f"                         PostgreSQL / chDB: {sz['ratio']:.1f}x "
                f"({sz['ratio_without_trigram']:.1f}x without the trigram index)"
            )
    g = report.get("goals")
    if g:
        lines.append("")
        lines.append("Goals")
        for item in g:
            lines.append(f"  [{'met ' if item['met'] else 'MISS'}] {item['goal']}: {item['measured']:,}")
    errors = report.get("errors")
    if errors:
        lines.append("")
        for k, v in errors.items():
            lines.append(f"ERROR in {k}: {v.strip().splitlines()[-1] if v.strip() else v}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--skip-postgres", action="store_true", help="chDB only")
    parser.add_argument("--skip-kafka", action="store_true", help="no broker: no streaming figures")
    parser.add_argument("--skip-ingest", action="store_true", help="no ingest figures at all")
    parser.add_argument("--skip-embedded-ingest", action="store_true", help="no BatchIngestor / HTTP figures")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument("--runs", type=int, help="timed runs per query (default: the scale's)")
    parser.add_argument("--kafka-bootstrap", help="use this running broker instead of starting one")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the data set (and reload PostgreSQL)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where built stores are kept")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/<scale>.json)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print the table of a results file, exit")
    args = parser.parse_args(argv)
    if args.render:
        saved: dict[str, Any] = orjson.loads(args.render.read_bytes())
        saved["goals"] = goals(saved)
        print(render(saved))
        return 0

    from benchmarks.machine import describe, git_commit

    scale = SCALES[args.scale]
    runs = args.runs or scale.runs
    profile = not args.no_profile
    out_path = args.out or RESULTS_DIR / f"{scale.name}.json"
    work = args.data_dir / "work" / f"{scale.name}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "scale": scale.name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    errors: dict[str, str] = {}
    report["machine"] = describe()
    log(
        f"machine: {report['machine']['cpu_model']}, {report['machine']['cpus']} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )

    loads: dict[str, list[float]] = {}
    report["machine"]["load_average_by_section"] = loads

    def mark(section: str) -> None:
        loads[section] = [round(x, 2) for x in os.getloadavg()]

    def save() -> None:
        report["errors"] = errors
        report["duration_s"] = round(time.time() - started, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))

    mark("dataset")
    store, meta = build_dataset(scale, args.data_dir, args.rebuild)
    report["dataset"] = meta
    cluster = None
    conn = None
    try:
        if not args.skip_postgres:
            try:
                from benchmarks.postgres import pg_sizes, server_version

                cluster, info = start_postgres(scale, store, meta, reload=args.rebuild)
                conn = cluster.connect()
                report["postgres"] = {
                    "version": server_version(conn),
                    "load": info,
                    "settings": __import__("benchmarks.postgres", fromlist=["SETTINGS"]).SETTINGS,
                }
            except Exception:
                errors["postgres"] = traceback.format_exc()
                log(f"postgres failed: {errors['postgres'].strip().splitlines()[-1]}")
        mark("queries")
        if not args.skip_queries:
            try:
                report["queries"] = run_queries(scale, store, meta, conn, runs, work, profile)
            except Exception:
                errors["queries"] = traceback.format_exc()
                log(f"queries failed: {errors['queries'].strip().splitlines()[-1]}")
            save()
        sizes: dict[str, Any] = {"chdb": report.get("queries", {}).get("chdb_sizes") or meta["sizes"]}
        if conn is not None:
            from benchmarks.postgres import pg_sizes

            sizes["postgres"] = pg_sizes(conn)
            sizes["ratio"] = sizes["postgres"]["bytes_per_event"] / sizes["chdb"]["bytes_per_event"]
            sizes["ratio_without_trigram"] = (
                sizes["postgres"]["bytes_per_event_without_trigram"] / sizes["chdb"]["bytes_per_event"]
            )
        report["sizes"] = sizes
    finally:
        if conn is not None:
            conn.close()
        if cluster is not None:
            cluster.stop()
            log("postgres: stopped")
    save()

    if not args.skip_ingest:
        mark("ingest")
        ingest: dict[str, Any] = {}
        report["ingest"] = ingest
        ingest_runs = 3 if scale.name != "smoke" else 1
        if not args.skip_embedded_ingest:
            try:
                ingest["embedded"] = run_embedded_ingest(scale, work, ingest_runs, profile)
            except Exception:
                errors["ingest_embedded"] = traceback.format_exc()
            save()
            try:
                from benchmarks.ingest import fresh_events
                from benchmarks.streaming import http_ingest

                batch = 10_000 if scale.name != "smoke" else 1_000
                ingest["http"] = http_ingest(
                    fresh_events(scale.ingest_events, seed=17), work, batch=batch, runs=ingest_runs
                )
                log(f"ingest: HTTP {ingest['http']['events_per_s']:,.0f} events/s")
            except Exception:
                errors["ingest_http"] = traceback.format_exc()
            save()
        mark("streaming")
        if not args.skip_kafka:
            try:
                from benchmarks.streaming import run_streaming

                ingest["streaming"] = run_streaming(
                    events_n=scale.stream_events,
                    runs=scale.stream_runs,
                    rate=scale.latency_rate,
                    seconds=scale.latency_seconds,
                    profile=profile,
                    bootstrap=args.kafka_bootstrap,
                )
            except Exception:
                errors["streaming"] = traceback.format_exc()
                log(f"streaming failed: {errors['streaming'].strip().splitlines()[-1]}")
    mark("end")
    report["machine"]["load_average_end"] = list(os.getloadavg())
    # Children import the product afresh: a change made while the run went on shows here.
    report["machine"]["git_commit_end"] = git_commit()
    report["goals"] = goals(report)
    save()
    shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    print(f"\nresults: {out_path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
