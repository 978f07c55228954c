"""`auditlog ingest FILE`: valid lines stored, bad lines reported by line number and kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

GOOD = {
    "schema_version": 1,
    "event_id": "0192f3a0-0000-7000-8000-000000000001",
    "occurred_at": "2026-10-01T08:15:30Z",
    "infrastructure": "acme",
    "actor": {"id": "u-1"},
    "action": "app.deploy",
    "target": {"kind": "application", "id": "app-1"},
}


def test_ingest_file_reports_bad_lines_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(orjson.dumps(GOOD) + b"\n\nnot json\n" + orjson.dumps({"schema_version": 2}) + b"\n")
    store = tmp_path / "store"
    directory = tmp_path / "directory.yaml"
    directory.write_text("infrastructure: acme\nusers: [{id: u-1, name: One}]\n")
    # Subprocesses: chDB opens one data folder per process, and this one already has the suite's.
    loaded = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", "directory", "load", "--store", str(store), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "directory of 'acme' loaded" in loaded.stdout
    run = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", "ingest", "--store", str(store), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert orjson.loads(run.stdout.strip().splitlines()[-1]) == {
        "received": 3,
        "stored": 1,
        "duplicates": 0,
        "rejected": 2,
    }
    assert "line 3 is not valid JSON" in run.stderr
    assert "line 4: unsupported schema_version 2" in run.stderr
    again = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", "ingest", "--store", str(store), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert orjson.loads(again.stdout.strip().splitlines()[-1])["duplicates"] == 1
    letters = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", "dead-letters", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert letters.returncode == 0, letters.stderr
    kept = [orjson.loads(line) for line in letters.stdout.splitlines()]
    # Each run kept both bad lines, with a code beside the words.
    assert sorted(x["code"] for x in kept) == ["invalid", "invalid", "not_json", "not_json"]
    assert {x["payload"] for x in kept if x["code"] == "not_json"} == {"not json"}
