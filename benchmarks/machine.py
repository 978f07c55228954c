"""What the figures were measured on: CPU, memory, disk, load, software versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from benchmarks.common import BENCH_DIR, REPO


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 - tiny file
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):  # noqa: SIM115
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def chdb_versions() -> dict[str, str]:
    """chDB's and its ClickHouse's versions, asked of a child (this process never opens chDB)."""
    code = (
        "import chdb, orjson, sys; r = chdb.query('SELECT version() AS v', 'JSONEachRow');"
        "v = {'chdb': chdb.__version__, 'clickhouse': orjson.loads(r.bytes())['v']};"
        "sys.stdout.write(orjson.dumps(v).decode())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    import orjson

    data: dict[str, str] = orjson.loads(out.stdout)
    return data


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    disk = shutil.disk_usage(BENCH_DIR)
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": _mem_total_bytes(),
        "disk_free_bytes": disk.free,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {
            p: _package_version(p)
            for p in (
                "chdb",
                "clickhouse-connect",
                "psycopg",
                "faust-streaming",
                "confluent-kafka",
                "aiokafka",
            )
        },
        **chdb_versions(),
        "git_commit": git_commit(),
        "load_average_start": list(os.getloadavg()),
    }
