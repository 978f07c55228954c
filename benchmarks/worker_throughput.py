"""Stream worker throughput, end to end with envelopes: SDK -> audit.raw -> worker -> chDB + audit.events.v1.

Two figures per run, each the median of `--runs` runs on fresh topics and a fresh store:

- **end to end**: the worker is started and has joined its group, then N events
  are published through the SDK (envelopes, as producers send them); the clock
  runs from the first publish to the moment the worker has stored the last
  event and committed (its stats file says so).
- **backlog drain**: N events wait in audit.raw before the worker starts; the
  clock runs from the start of its first batch to the end of its last, i.e.
  the worker's own rate without the producer's.

Usage (a broker must be running; `deploy/kafka/local-broker.sh start` gives one):

    python benchmarks/worker_throughput.py --bootstrap 127.0.0.1:9092 --events 200000 --runs 3

`--compare REF` runs the worker of another commit (a git worktree of REF) side by side:
each run measures both, in alternating order, on the same broker and machine state,
and the report gives each one's medians and the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producers.contract.directory import Directory  # noqa: E402
from producers.directory_publisher import publish_snapshots  # noqa: E402
from producers.kafka_config import KafkaConnection  # noqa: E402
from producers.publisher import ProducerSettings, Publisher  # noqa: E402
from stream.settings import WorkerSettings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

ENTITIES = 500


def make_events(n: int, seed: str) -> list[dict[str, Any]]:
    """Realistic ~600-byte events over many entities, so that every partition gets work."""
    events = []
    for i in range(n):
        app = f"app-{i % ENTITIES:04d}"
        events.append(
            {
                "schema_version": 1,
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}/{i}")),
                "occurred_at": f"2026-10-01T{(i // 3_600_000) % 24:02d}:{(i // 60_000) % 60:02d}:"
                f"{(i // 1000) % 60:02d}.{i % 1000:03d}Z",
                "infrastructure": "bench",
                "environment": "env-prod",
                "actor": {
                    "id": f"u-{i % 97}",
                    "name": "someone",
                    "type": "user",
                    "ip": "10.0.0.7",
                    "user_agent": "Mozilla/5.0",
                    "session_id": f"s-{i % 1000}",
                },
                "action": "application.deploy",
                "target": {"kind": "application", "id": app, "name": app},
                "related": [{"kind": "environment", "id": "env-prod", "name": "Production"}],
                "changes": [{"field": "version", "old": "1.2", "new": "1.3"}],
                "details": {"sequence": i, "modules": 3},
                "source": {"service": "lifetime", "host": "lt-1", "version": "11.20"},
                "request_id": f"req-{i}",
            }
        )
    return events


def publish(bootstrap: str, topic: str, events: list[dict[str, Any]], spool: Path) -> float:
    settings = ProducerSettings(
        bootstrap_servers=bootstrap, topic=topic, spool_dir=spool, client_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    started = time.perf_counter()
    with Publisher(settings) as pub:
        for i in range(0, len(events), 10_000):
            pub.publish_many(events[i : i + 10_000])
        report = pub.flush(300)
        assert report.ok, report
    return time.perf_counter() - started


class Worker:
    def __init__(
        self, bootstrap: str, prefix: str, workdir: Path, batch_size: int, repo: Path = REPO
    ) -> None:
        self.stats_path = workdir / "stats.json"
        self.log_path = workdir / "worker.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments built here
            [
                sys.executable,
                "-m",
                "auditlog.cli",
                "-v",
                "worker",
                "--store",
                str(workdir / "store"),
                "--bootstrap",
                bootstrap,
                "--group",
                f"{prefix}-g",
                "--raw-topic",
                f"{prefix}.raw",
                "--events-topic",
                f"{prefix}.events",
                "--dlq-topic",
                f"{prefix}.dlq",
                "--directory-topic",
                f"{prefix}.directory",
                "--batch-size",
                str(batch_size),
                "--stats-file",
                str(self.stats_path),
            ],
            # `python -m` puts the working directory first on sys.path: the worker runs that tree's code.
            cwd=repo,
            # Ops port 0: workers of one run must not contend for the default port.
            env={
                **os.environ,
                "AUDITLOG_WORKER_FAUST_DATADIR": str(workdir / "faust"),
                "AUDITLOG_WORKER_OPS_PORT": "0",
                # Checkpoints signed every 10 s (not 60): their cost is in the figures. Trees
                # before the Merkle tree ignore both.
                "AUDITLOG_CHECKPOINT_DIR": str(workdir / "tlog"),
                "AUDITLOG_CHECKPOINT_INTERVAL_S": "10",
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = orjson.loads(self.stats_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return data

    def wait(self, predicate: Any, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: see {self.log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}; see {self.log_path}")
            time.sleep(0.05)

    def joined(self) -> bool:
        self._log.flush()
        return b"Setting newly assigned partitions" in self.log_path.read_bytes()

    def cpu_s(self) -> float:
        """CPU seconds of the worker process so far, every thread (chDB's and librdkafka's too)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self._log.close()


def serve_bench(bootstrap: str, prefix: str) -> None:
    """Publish a directory for the events' infrastructure: a worker refuses events of one it
    does not serve."""
    directory = Directory.model_validate(
        {"infrastructure": "bench", "infrastructures": [{"id": "bench", "name": "Bench"}]}
    )
    publish_snapshots(
        directory.snapshots(),
        connection=KafkaConnection(bootstrap_servers=bootstrap),
        topic=f"{prefix}.directory",
    )


def one_run(bootstrap: str, n: int, batch_size: int, partitions: int, repo: Path = REPO) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="auditlog-bench-"))
    (workdir / "faust").mkdir()
    out: dict[str, float] = {}

    # End to end: worker waiting, then the producers start.
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(_settings(bootstrap, prefix, partitions))
    serve_bench(bootstrap, prefix)
    _mk(workdir / "e2e")
    worker = Worker(bootstrap, prefix, workdir / "e2e", batch_size, repo)
    try:
        worker.wait(worker.joined, "the worker to join its group")
        events = make_events(n, prefix)
        cpu = worker.cpu_s()
        started = time.perf_counter()
        publish_s = publish(bootstrap, f"{prefix}.raw", events, workdir / "spool-e2e")
        worker.wait(lambda: int(worker.stats().get("events_in", 0)) >= n, f"{n} events stored")
        elapsed = time.perf_counter() - started
        cpu = worker.cpu_s() - cpu
        stats = worker.stats()
        assert stats["rows_stored"] == n and stats["balanced"], stats
        out["e2e_events_per_s"] = n / elapsed
        # What the worker spends per event, every thread: steadier than a rate on a shared machine.
        out["e2e_worker_cpu_us"] = cpu * 1e6 / n
        out["publish_events_per_s"] = n / publish_s
    finally:
        worker.stop()

    # Backlog drain: everything published first, then the worker starts.
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(_settings(bootstrap, prefix, partitions))
    serve_bench(bootstrap, prefix)
    events = make_events(n, prefix)
    publish(bootstrap, f"{prefix}.raw", events, workdir / "spool-drain")
    _mk(workdir / "drain")
    worker = Worker(bootstrap, prefix, workdir / "drain", batch_size, repo)
    try:
        worker.wait(lambda: int(worker.stats().get("events_in", 0)) >= n, f"{n} events stored")
        stats = worker.stats()
        assert stats["rows_stored"] == n and stats["balanced"], stats
        out["drain_events_per_s"] = n / (stats["last_batch_at"] - stats["first_batch_at"])
        out["drain_batches"] = stats["batches"]
    finally:
        worker.stop()
    return out


def group_drain(bootstrap: str, n: int, batch_size: int, partitions: int, workers: int) -> dict[str, float]:
    """`workers` processes in one consumer group drain one backlog, each into a store of its own
    (chDB opens a data folder in one process; a shared store needs a ClickHouse server). The
    clock runs from the first batch of any to the last batch of all."""
    workdir = Path(tempfile.mkdtemp(prefix="auditlog-bench-"))
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(_settings(bootstrap, prefix, partitions))
    serve_bench(bootstrap, prefix)
    publish(bootstrap, f"{prefix}.raw", make_events(n, prefix), workdir / "spool")
    started = []
    for i in range(workers):
        _mk(workdir / f"w{i}")
        started.append(Worker(bootstrap, prefix, workdir / f"w{i}", batch_size))
    try:

        def drained() -> bool:
            return sum(int(w.stats().get("events_in", 0)) for w in started) >= n

        started[0].wait(drained, f"{n} events stored by {workers} workers")
        time.sleep(2)  # a redelivered batch after a rebalance shows up in the counts
        stats = [w.stats() for w in started]
    finally:
        for w in started:
            w.stop()
    busy = [s for s in stats if s.get("first_batch_at")]
    elapsed = max(s["last_batch_at"] for s in busy) - min(s["first_batch_at"] for s in busy)
    return {
        "events_per_s": n / elapsed,
        # Batches a worker stored but could not commit before a rebalance moved the partition:
        # stored again by the new owner, in its own store (on a shared store, deduped).
        "redelivered": sum(int(s["events_in"]) for s in busy) - n,
    }


def _mk(path: Path) -> None:
    (path / "faust").mkdir(parents=True, exist_ok=True)


def _settings(bootstrap: str, prefix: str, partitions: int) -> WorkerSettings:
    return WorkerSettings(
        bootstrap_servers=bootstrap,
        raw_topic=f"{prefix}.raw",
        events_topic=f"{prefix}.events",
        dlq_topic=f"{prefix}.dlq",
        directory_topic=f"{prefix}.directory",
        topic_partitions=partitions,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("AUDITLOG_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=20_000, help="worker batch size, in messages")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--compare", metavar="REF", help="also run the worker of this commit, side by side")
    parser.add_argument(
        "--group-of", type=int, metavar="N", help="instead: backlog drain by 1 worker and by N in one group"
    )
    args = parser.parse_args()
    if args.group_of:
        scaling(args)
        return

    trees = {"this tree": REPO}
    if args.compare:
        trees[args.compare] = worktree(args.compare)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for run in range(1, args.runs + 1):
        order = list(trees.items()) if run % 2 else list(reversed(trees.items()))
        for name, repo in order:
            r = one_run(args.bootstrap, args.events, args.batch_size, args.partitions, repo)
            results[name].append(r)
            print(
                f"run {run} [{name}]: end to end {r['e2e_events_per_s']:,.0f} events/s "
                f"(SDK publish alone {r['publish_events_per_s']:,.0f}/s; "
                f"worker CPU {r['e2e_worker_cpu_us']:.1f} µs/event); "
                f"backlog drain {r['drain_events_per_s']:,.0f} events/s in {r['drain_batches']:.0f} batches",
                flush=True,
            )
    for name, runs in results.items():
        for key, label in (
            ("e2e_events_per_s", "end to end"),
            ("drain_events_per_s", "backlog drain"),
            ("publish_events_per_s", "SDK publish"),
        ):
            print(f"[{name}] median {label}: {statistics.median(r[key] for r in runs):,.0f} events/s")
        cpu = statistics.median(r["e2e_worker_cpu_us"] for r in runs)
        print(f"[{name}] median worker CPU end to end: {cpu:.1f} µs/event")
    if args.compare:
        ours, theirs = results["this tree"], results[args.compare]
        for key, label in (("e2e_events_per_s", "end to end"), ("drain_events_per_s", "backlog drain")):
            ratios = [a[key] / b[key] for a, b in zip(ours, theirs, strict=True)]
            print(f"this tree / {args.compare}, {label}: median ratio {statistics.median(ratios):.2f}x")
        cpu = statistics.median(
            a["e2e_worker_cpu_us"] / b["e2e_worker_cpu_us"] for a, b in zip(ours, theirs, strict=True)
        )
        print(f"this tree / {args.compare}, worker CPU per event: median ratio {cpu:.2f}x")
    print(f"({args.events:,} events per run, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


def scaling(args: argparse.Namespace) -> None:
    ratios = []
    for run in range(1, args.runs + 1):
        sizes = (1, args.group_of) if run % 2 else (args.group_of, 1)
        rates = {}
        for k in sizes:
            r = group_drain(args.bootstrap, args.events, args.batch_size, args.partitions, k)
            rates[k] = r["events_per_s"]
            print(
                f"run {run} [{k} worker(s)]: backlog drain {r['events_per_s']:,.0f} events/s "
                f"({r['redelivered']:.0f} events redelivered after the rebalance)",
                flush=True,
            )
        ratios.append(rates[args.group_of] / rates[1])
    print(f"{args.group_of} workers / 1 worker, backlog drain: median ratio {statistics.median(ratios):.2f}x")
    print(f"({args.events:,} events per run, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


def worktree(ref: str) -> Path:
    """A checkout of `ref` under benchmarks/.work, made once per commit."""
    sha = subprocess.run(  # noqa: S603 - git, with a ref the operator named
        ["git", "rev-parse", "--short", ref],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = REPO / "benchmarks" / ".work" / f"tree-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO, check=True)  # noqa: S603,S607
    return path


if __name__ == "__main__":
    main()
