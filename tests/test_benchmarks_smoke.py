"""The benchmark harness keeps working: `python -m benchmarks.run --scale smoke`, in seconds.

Only the shape of the results is checked (every figure present and positive);
timings are never asserted, the machine running the tests is not the one the
figures are about. PostgreSQL takes part only with AUDITLOG_BENCH_PG=1 (it needs
Debian's server and root to run it as `postgres`). The streaming path uses the
session's Kafka broker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
QUERIES = (
    "global_first",
    "global_filtered",
    "activity_first",
    "activity_deep",
    "entity_first",
    "entity_deep",
    "free_text",
    "facets",
    "timeline",
)
WITH_PG = os.environ.get("AUDITLOG_BENCH_PG", "") == "1"


def _harness(tmp_path: Path, *flags: str) -> dict[str, Any]:
    out = tmp_path / "smoke.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--scale",
        "smoke",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--no-profile",
        *flags,
    ]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"harness failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "Query (" in result.stdout or "--skip-queries" in flags
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["errors"] == {}
    return report


def _positive(value: Any, what: str) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool), f"{what} = {value!r}"
    assert math.isfinite(value) and value > 0, f"{what} = {value!r}"


def test_harness_smoke_queries_ingest_sizes(tmp_path: Path) -> None:
    flags = ["--skip-kafka"] + ([] if WITH_PG else ["--skip-postgres"])
    report = _harness(tmp_path, *flags)

    machine = report["machine"]
    for key in ("cpu_model", "cpus", "memory_bytes", "python", "chdb", "clickhouse", "git_commit"):
        assert machine[key], key
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3

    data = report["dataset"]
    assert data["counts"]["events"] == data["scale"]["base_events"] * data["scale"]["copies"]
    assert data["counts"]["entity_rows"] >= data["counts"]["events"]
    assert data["grants"] == 1000
    _positive(data["targets"]["grants_visible_events"], "grants_visible_events")

    rows = report["queries"]["results"]
    assert {(r["query"], r["caller"]) for r in rows} == {(q, c) for q in QUERIES for c in ("admin", "grants")}
    for r in rows:
        for key in ("p50", "p95"):
            _positive(r["chdb"][key], f"{r['query']}/{r['caller']} chdb {key}")
        assert r["chdb"]["n"] == report["queries"]["runs_per_query"]
        assert "ReadFromMergeTree" in r["chdb"]["plan"]
        if WITH_PG:
            _positive(r["postgres"]["p50"], f"{r['query']} postgres p50")
            _positive(r["ratio_p50"], f"{r['query']} ratio")
            assert r["same_rows"], f"{r['query']}/{r['caller']}: chDB and PostgreSQL disagree"
        if r["query"] not in ("facets", "timeline") and r["caller"] == "admin":
            # (The 1,000-grant caller may see no free-text match in a few thousand events.)
            assert r["chdb"]["rows"] > 0, f"{r['query']}/{r['caller']} returned nothing: a useless benchmark"

    _positive(report["sizes"]["chdb"]["bytes_per_event"], "chdb bytes per event")
    if WITH_PG:
        _positive(report["sizes"]["postgres"]["bytes_per_event"], "postgres bytes per event")
        _positive(report["sizes"]["ratio"], "size ratio")
        assert report["postgres"]["version"].startswith("PostgreSQL")

    ingest = report["ingest"]
    for path in ("embedded", "http"):
        _positive(ingest[path]["events_per_s"], f"{path} events/s")
        assert all(r["stored"] == r["events"] for r in ingest[path]["runs"])
    assert "streaming" not in ingest
    assert report["goals"], "the goals section is missing"


@pytest.mark.kafka
def test_harness_smoke_streaming(tmp_path: Path, kafka_bootstrap: str) -> None:
    report = _harness(
        tmp_path,
        "--skip-postgres",
        "--skip-queries",
        "--skip-embedded-ingest",
        "--kafka-bootstrap",
        kafka_bootstrap,
    )
    streaming = report["ingest"]["streaming"]
    e2e = streaming["end_to_end"]
    _positive(e2e["events_per_s"], "end-to-end events/s")
    for run in e2e["runs"]:
        assert run["rows_stored"] == run["events"] and run["balanced"]
        assert run["queryable_via_api"] == run["events"]
    _positive(streaming["drain"]["events_per_s"], "drain events/s")
    latency = streaming["latency"]
    assert latency["probes_missing"] == 0
    _positive(latency["p50_ms"], "latency p50")
    _positive(latency["p95_ms"], "latency p95")
    goals = {g["goal"] for g in report["goals"]}
    assert any("end to end" in g for g in goals) and any("queryable" in g for g in goals)
