"""Streaming: SDK publish -> Kafka -> `auditlog worker --with-api` -> chDB; and the HTTP ingest endpoint.

- **end to end** (per worker process): the worker has joined its group; the
  clock runs from the first `Publisher.publish_many` to the end of the batch
  that stored the last event (the worker's stats file; rows are queryable once
  the insert returned). The count is then checked through the API.
- **backlog drain**: the events wait in `audit.raw` before the worker starts;
  first batch start to last batch end: the worker's own rate.
- **producer-to-queryable latency**: events published at a steady rate with
  `occurred_at` = the publish time; every 20th is a probe (actor `bench-probe`)
  whose first appearance in `GET /v1/events?actor=bench-probe&since=...` is
  polled every `POLL_S`; latency = first seen - published. Read auditing is
  off for this worker (AUDITLOG_API_AUDIT_READS=false): ten polls a second
  would otherwise each store an audit_log.read event.
- **profile**: one extra end-to-end run with py-spy sampling the worker's
  thread that holds the GIL (`--gil`: one worker process is bound by one core's
  worth of Python), not counted in the medians.

The broker is `deploy/kafka/local-broker.sh` with a private AUDITLOG_KAFKA_HOME
(`benchmarks/.kafka`, fresh data every run) on free ports, stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BENCH_DIR,
    REPO,
    WORK_DIR,
    cpu_seconds,
    free_port,
    log,
    median,
    percentile,
    summary,
)
from benchmarks.ingest import fresh_events
from benchmarks.profiles import summarize_collapsed

BROKER_SCRIPT = REPO / "deploy" / "kafka" / "local-broker.sh"
KAFKA_HOME = BENCH_DIR / ".kafka"
PROBE_ACTOR = "bench-probe"
PROBE_EVERY = 20
POLL_S = 0.1
PARTITIONS = 6
_BATCH_LINE = re.compile(r"batch: (\d+) messages, (\d+) events -> .*? in ([0-9.]+)s")


def py_spy() -> Path | None:
    """The py-spy sampling profiler next to this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


class Broker:
    def __init__(self, home: Path = KAFKA_HOME) -> None:
        self.home = home
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AUDITLOG_KAFKA_HOME": str(self.home),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }

    def _script(self, command: str, timeout: float) -> None:
        result = subprocess.run(  # noqa: S603 - the project's own script
            ["bash", str(BROKER_SCRIPT), command],  # noqa: S607
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"local-broker.sh {command} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def start(self) -> None:
        # Fresh state; the jars are reused (or copied from the project's own broker folders).
        for stale in ("data", "cluster-id", "bootstrap", "run.env", "kafka.pid"):
            path = self.home / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        libs = self.home / "libs"
        if not any(libs.glob(".complete-*")):
            for candidate in (REPO / ".local" / "kafka" / "libs", REPO / ".local" / "kafka-test" / "libs"):
                if any(candidate.glob(".complete-*")):
                    shutil.rmtree(libs, ignore_errors=True)
                    shutil.copytree(candidate, libs)
                    break
        self._script("start", 900)

    def stop(self) -> None:
        self._script("stop", 120)

    def pid(self) -> int | None:
        try:
            return int((self.home / "kafka.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def _child_json(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, cwd=REPO, capture_output=True, check=False)  # noqa: S603
    if out.returncode != 0:
        raise RuntimeError(f"{argv}: {out.stderr.decode(errors='replace')[-3000:]}")
    data: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    return data


def prepare_store(store: Path) -> str:
    """A fresh store with the benchmark directory and an administrator's API key (in a child)."""
    return str(
        _child_json([sys.executable, "-m", "benchmarks.ingest", "prepare", "--store", str(store)])["key"]
    )


def _settings(bootstrap: str, prefix: str) -> Any:
    from stream.settings import WorkerSettings

    return WorkerSettings(
        bootstrap_servers=bootstrap,
        raw_topic=f"{prefix}.raw",
        events_topic=f"{prefix}.events",
        dlq_topic=f"{prefix}.dlq",
        directory_topic=f"{prefix}.directory",
        topic_partitions=PARTITIONS,
    )


class Worker:
    """`auditlog worker --with-api` on a fresh store, its stats file and its API."""

    def __init__(self, bootstrap: str, prefix: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.store = workdir / "store"
        self.key = prepare_store(self.store)
        self.stats_path = workdir / "stats.json"
        self.log_path = workdir / "worker.log"
        self.api_port = free_port()
        self._log = self.log_path.open("wb")
        (workdir / "faust").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments built here
            [sys.executable, "-m", "auditlog.cli", "-v", "worker", "--store", str(self.store),
             "--bootstrap", bootstrap, "--group", f"{prefix}-g", "--raw-topic", f"{prefix}.raw",
             "--events-topic", f"{prefix}.events", "--dlq-topic", f"{prefix}.dlq",
             "--directory-topic", f"{prefix}.directory", "--partitions", str(PARTITIONS),
             "--stats-file", str(self.stats_path), "--with-api", "--port", str(self.api_port)],
            cwd=REPO,
            env={
                **os.environ,
                "AUDITLOG_WORKER_FAUST_DATADIR": str(workdir / "faust"),
                "AUDITLOG_WORKER_OPS_PORT": "0",
                "AUDITLOG_API_AUDIT_READS": "false",
                "XDG_STATE_HOME": str(workdir / "state"),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = orjson.loads(self.stats_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return data

    def wait(self, predicate: Any, what: str, timeout: float = 600, poll: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; see {self.log_path}")
            time.sleep(poll)

    def joined(self) -> bool:
        self._log.flush()
        return b"Setting newly assigned partitions" in self.log_path.read_bytes()

    def log_size(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def batches(self, since: int = 0) -> dict[str, Any]:
        """The worker's own batch lines (`batch: M messages, N events -> ... in S s`) after byte `since`."""
        self._log.flush()
        with self.log_path.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        found = [(int(m[0]), int(m[1]), float(m[2])) for m in _BATCH_LINE.findall(text)]
        seconds = [b[2] for b in found]
        return {
            "batches": len(found),
            "messages": sum(b[0] for b in found),
            "events": sum(b[1] for b in found),
            "busy_seconds": round(sum(seconds), 2),
            "events_per_batch_p50": median([b[1] for b in found]),
            "batch_seconds_p50": median(seconds),
            "batch_seconds_p95": percentile(seconds, 95),
        }

    def api(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )

    def api_ready(self) -> bool:
        import httpx

        try:
            with self.api() as client:
                return bool(client.get("/healthz").status_code == 200)
        except httpx.HTTPError:
            return False

    def count(self) -> int:
        with self.api() as client:
            r = client.get("/v1/events", params={"limit": 1, "include_total": "true"})
            r.raise_for_status()
            return int(r.json()["total"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _publisher(bootstrap: str, topic: str, spool: Path) -> Any:
    from producers.publisher import ProducerSettings, Publisher

    settings = ProducerSettings(
        bootstrap_servers=bootstrap, topic=topic, spool_dir=spool, client_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    return Publisher(settings)


def _publish_all(bootstrap: str, topic: str, events: list[dict[str, Any]], spool: Path) -> float:
    started = time.perf_counter()
    with _publisher(bootstrap, topic, spool) as pub:
        for i in range(0, len(events), 10_000):
            pub.publish_many(events[i : i + 10_000])
        report = pub.flush(300)
        if not report.ok:
            raise RuntimeError(f"publish failed: {report}")
    return time.perf_counter() - started


def _ensure_topics(bootstrap: str, prefix: str) -> None:
    from stream.topics import ensure_topics

    ensure_topics(_settings(bootstrap, prefix))


def end_to_end(
    broker: Broker, events: list[dict[str, Any]], workdir: Path, *, profile: bool = False
) -> tuple[dict[str, Any], Worker]:
    """One end-to-end run; returns the figures and the still-running worker (caller stops it)."""
    n = len(events)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker.bootstrap, prefix, workdir)
    try:
        worker.wait(worker.joined, "the worker to join its group", timeout=180, poll=0.1)
        worker.wait(worker.api_ready, "the worker's API", timeout=60, poll=0.1)
    except Exception:
        worker.stop()
        raise
    spy: subprocess.Popen[bytes] | None = None
    spy_out = workdir / "worker.pyspy.txt"
    if profile:
        spy = subprocess.Popen(  # noqa: S603
            [str(py_spy()), "record", "--pid", str(worker.proc.pid),
             "--threads", "--gil", "--rate", "200", "--format", "raw", "--output", str(spy_out),
             "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    cpu = {"worker": cpu_seconds(worker.proc.pid), "broker": cpu_seconds(broker.pid() or 0)}
    cpu_self = time.process_time()
    wall0 = time.time()
    started = time.perf_counter()
    publish_s = _publish_all(broker.bootstrap, f"{prefix}.raw", events, workdir / "spool")
    worker.wait(lambda: int(worker.stats().get("events_in", 0)) >= n, f"{n} events stored")
    stats = worker.stats()
    elapsed = float(stats["last_batch_at"]) - wall0
    waited = time.perf_counter() - started
    cpu = {
        "worker": cpu_seconds(worker.proc.pid) - cpu["worker"],
        "broker": cpu_seconds(broker.pid() or 0) - cpu["broker"],
        "publisher": time.process_time() - cpu_self,
    }
    result: dict[str, Any] = {
        "events": n,
        "seconds": elapsed,
        "events_per_s": n / elapsed,
        "publish_events_per_s": n / publish_s,
        "observed_seconds": waited,
        "batches": stats.get("batches"),
        "rows_stored": stats.get("rows_stored"),
        "balanced": stats.get("balanced"),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "worker_cores_busy": round(cpu["worker"] / elapsed, 2),
        "queryable_via_api": worker.count(),
        "worker_batches": worker.batches(),
    }
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
        if spy_out.exists():
            result["profile"] = summarize_collapsed(spy_out, limit=25)
            result["profile"]["raw"] = str(spy_out.relative_to(REPO))
    return result, worker


def drain(broker: Broker, events: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    n = len(events)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    _ensure_topics(broker.bootstrap, prefix)
    _publish_all(broker.bootstrap, f"{prefix}.raw", events, workdir / "spool")
    worker = Worker(broker.bootstrap, prefix, workdir)
    try:
        worker.wait(lambda: int(worker.stats().get("events_in", 0)) >= n, f"{n} events stored")
        stats = worker.stats()
        seconds = float(stats["last_batch_at"]) - float(stats["first_batch_at"])
        return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "batches": stats["batches"]}
    finally:
        worker.stop()


def latency(
    broker: Broker, worker: Worker, topic: str, events: list[dict[str, Any]], rate: int, seconds: float
) -> dict[str, Any]:
    """Publish at `rate`/s for `seconds`; every PROBE_EVERY-th event is a probe polled for through the API."""
    outstanding: dict[str, tuple[float, int]] = {}  # event_id -> (published wall time, occurred ms)
    seen: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    polls = [0]

    def poll() -> None:
        with worker.api() as client:
            while True:
                with lock:
                    pending = dict(outstanding)
                if not pending and done.is_set():
                    return
                if pending:
                    since_ms = min(ms for _, ms in pending.values()) - 1
                    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since_ms / 1000)) + (
                        f".{since_ms % 1000:03d}Z"
                    )
                    r = client.get("/v1/events", params={"actor": PROBE_ACTOR, "since": since, "limit": 1000})
                    now = time.time()
                    polls[0] += 1
                    if r.status_code == 200:
                        with lock:
                            for item in r.json()["items"]:
                                entry = outstanding.pop(item["event_id"], None)
                                if entry is not None:
                                    seen.append(now - entry[0])
                time.sleep(POLL_S)

    log_from = worker.log_size()
    poller = threading.Thread(target=poll, name="latency-poller", daemon=True)
    poller.start()
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    total = int(rate * seconds)
    sent = 0
    started = time.perf_counter()
    with _publisher(broker.bootstrap, topic, worker.workdir / "spool-latency") as pub:
        while sent < total:
            due = started + (sent / rate)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            batch = []
            now = time.time()
            now_ms = int(now * 1000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{now_ms % 1000:03d}Z"
            for _ in range(per_tick):
                ev = dict(events[sent % len(events)])
                ev["event_id"] = str(uuid.uuid4())
                ev["occurred_at"] = stamp
                if sent % PROBE_EVERY == 0:
                    ev["actor"] = {"id": PROBE_ACTOR, "name": "Latency probe", "type": "service"}
                    ev["details"] = {**ev.get("details", {}), "published_at_ms": now_ms}
                    with lock:
                        outstanding[ev["event_id"]] = (now, now_ms)
                batch.append(ev)
                sent += 1
            pub.publish_many(batch)
        publish_seconds = time.perf_counter() - started
        pub.flush(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if not outstanding:
                break
        time.sleep(0.1)
    done.set()
    poller.join(30)
    with lock:
        missing = len(outstanding)
    ms = [s * 1000 for s in seen]
    return {
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": sent / publish_seconds,
        "events": sent,
        "probes": len(ms) + missing,
        "probes_missing": missing,
        "polls": polls[0],
        "poll_interval_ms": POLL_S * 1000,
        "p50_ms": median(ms),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms) if ms else None,
        "worker_batches": worker.batches(log_from),
    }


def http_ingest(events: list[dict[str, Any]], workdir: Path, *, batch: int, runs: int) -> dict[str, Any]:
    """POST /v1/events (NDJSON) into `auditlog serve` on a fresh store, `batch` events per request."""
    import httpx

    results = []
    for run in range(runs):
        rundir = workdir / f"http-{run}"
        key = prepare_store(rundir / "store")
        port = free_port()
        log_path = rundir / "serve.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "auditlog.cli", "serve", "--store", str(rundir / "store"),
                 "--port", str(port)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                client = httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=300,
                )
                deadline = time.monotonic() + 60
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get("/healthz").status_code == 200:
                            break
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"auditlog serve did not come up; see {log_path}")
                    time.sleep(0.1)
                bodies = [
                    b"\n".join(orjson.dumps(e) for e in events[i : i + batch])
                    for i in range(0, len(events), batch)
                ]
                cpu0 = cpu_seconds(proc.pid)
                started = time.perf_counter()
                stored = 0
                for body in bodies:
                    r = client.post(
                        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
                    )
                    r.raise_for_status()
                    stored += int(r.json()["stored"])
                elapsed = time.perf_counter() - started
                results.append(
                    {
                        "events": len(events),
                        "stored": stored,
                        "seconds": elapsed,
                        "events_per_s": len(events) / elapsed,
                        "server_cpu_seconds": round(cpu_seconds(proc.pid) - cpu0, 2),
                        "body_mb": round(sum(len(b) for b in bodies) / len(bodies) / 1e6, 2),
                    }
                )
                client.close()
            finally:
                proc.terminate()
                proc.wait(30)
        shutil.rmtree(rundir / "store", ignore_errors=True)
    rates = [r["events_per_s"] for r in results]
    return {"batch": batch, "events_per_s": median(rates), "summary": summary(rates), "runs": results}


def run_streaming(
    *, events_n: int, runs: int, rate: int, seconds: float, profile: bool, bootstrap: str | None = None
) -> dict[str, Any]:
    workdir = WORK_DIR / f"stream-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    events = fresh_events(events_n, seed=23)
    broker: Broker | None = None
    out: dict[str, Any] = {"events_per_run": events_n, "partitions": PARTITIONS}
    try:
        if bootstrap is None:
            broker = Broker()
            log(f"streaming: starting a broker on {broker.bootstrap}")
            broker.start()
            target = broker
        else:
            target = Broker()
            target.bootstrap = bootstrap
        e2e = []
        worker: Worker | None = None
        for run in range(runs):
            result, worker = end_to_end(target, events, workdir / f"e2e-{run}")
            e2e.append(result)
            log(
                f"streaming: end to end {result['events_per_s']:,.0f} events/s "
                f"(worker {result['worker_cores_busy']} cores busy)"
            )
            if run < runs - 1:
                worker.stop()
        assert worker is not None
        try:
            topic = _topic_of(worker)
            lat = latency(target, worker, topic, events, rate, seconds)
            log(f"streaming: latency p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms at {rate}/s")
        finally:
            worker.stop()
        drains = []
        for run in range(runs):
            d = drain(target, events, workdir / f"drain-{run}")
            drains.append(d)
            log(f"streaming: backlog drain {d['events_per_s']:,.0f} events/s")
        out["end_to_end"] = {
            "events_per_s": median([r["events_per_s"] for r in e2e]),
            "summary": summary([r["events_per_s"] for r in e2e]),
            "runs": e2e,
        }
        out["drain"] = {
            "events_per_s": median([r["events_per_s"] for r in drains]),
            "summary": summary([r["events_per_s"] for r in drains]),
            "runs": drains,
        }
        out["latency"] = lat
        if profile and py_spy() is None:
            log("streaming: py-spy not found (pip install py-spy): no worker profile")
            out["profiled_run"] = {"skipped": "py-spy not installed"}
        elif profile:
            result, worker = end_to_end(target, events, workdir / "profiled", profile=True)
            worker.stop()
            out["profiled_run"] = result
    finally:
        if broker is not None:
            broker.stop()
    for sub in workdir.glob("*/store"):
        shutil.rmtree(sub, ignore_errors=True)
    return out


def _topic_of(worker: Worker) -> str:
    args = worker.proc.args
    assert isinstance(args, list)
    return str(args[args.index("--raw-topic") + 1])
