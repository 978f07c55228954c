"""Small shared helpers: paths, percentiles, free ports, JSON-lines children, CPU clocks."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
DATA_DIR = BENCH_DIR / ".data"
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"


def log(message: str) -> None:
    """Progress on stderr, timestamped; the table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): p95 of 15 runs is the 15th value, never interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "p50": statistics.median(values) if values else math.nan,
        "p95": percentile(values, 95),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "n": len(values),
        "runs": [round(v, 3) for v in values],
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields after the command: state is [0]; utime [11], stime [12], cutime [13], cstime [14].
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def python_child(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class JsonChild:
    """A child process speaking one JSON object per line on stdin/stdout (stderr goes to a log)."""

    def __init__(self, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.log_path = log_path
        self.proc = subprocess.Popen(  # noqa: S603 - our own modules, arguments built here
            argv,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"{argv[2] if len(argv) > 2 else argv}: did not start: {ready}")
        self.hello = ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"child exited ({self.proc.returncode}); log {self.log_path}:\n{tail}")
        data: dict[str, Any] = orjson.loads(line)
        return data

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(request) + b"\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"child error: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.call({"op": "exit"})
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def serve_json_lines(handler: Any) -> None:
    """The child side of JsonChild: `handler(request) -> reply` until {"op": "exit"}."""
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        request = orjson.loads(raw)
        if request.get("op") == "exit":
            out.write(b'{"bye":true}\n')
            out.flush()
            return
        try:
            reply = handler(request)
        except Exception as exc:  # reported to the parent, which raises
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        out.flush()


def say_ready(**info: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"ready": True, **info}) + b"\n")
    sys.stdout.buffer.flush()
