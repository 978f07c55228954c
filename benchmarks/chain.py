"""The worker's chain in one process, with and without the Merkle tree: what the tree costs it.

    python -m benchmarks.chain --events 200000 --runs 5 [--bootstrap 127.0.0.1:9092]

Each run times `stream.pipeline.worker_chain` (decode -> insert -> publish -> dead-letter ->
tally -> checkpoint -> commit) on the same envelopes, as the worker's edge hands them
over, into a fresh chDB store, twice, in alternating order:

- **tree**: the chain as the worker composes it, checkpoints signed every 10 s in their
  own thread (the e2e benchmark's interval, six times the default); the clock stops when
  the last batch is committed; the tail a stopping worker signs is timed apart, and its CPU
  counted;
- **no tree**: the same store with the view that makes every row a leaf dropped, the
  writer's check of its last insert's leaves skipped, and no checkpoint step.

The two differ by exactly what the tree adds to a batch, so their ratio is the tree's
cost on the worker, without the broker's fetches, faust and the producer that share
the end-to-end figures (`worker_throughput.py`). Wall time and the process's CPU time
(every thread: chDB's, librdkafka's) are reported; SIEM records go to the local broker.
Each variant runs in a child process of its own (chDB opens one data folder per process).
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
EVENTS_PER_ENVELOPE = 500
BATCH_EVENTS = 50_000  # what a worker's batch held in worker_throughput's drains


def _messages(n: int, partitions: int, seed: int) -> list[Any]:
    from benchmarks.ingest import fresh_events
    from producers.envelope import ENVELOPE_CONTENT_TYPE, encode_event, pack_envelope
    from stream.messages import RawMessage

    encoded = [encode_event(e) for e in fresh_events(n, seed=seed)]
    now_ms = int(time.time() * 1000)
    offsets = [0] * partitions
    out = []
    for k, i in enumerate(range(0, n, EVENTS_PER_ENVELOPE)):
        partition = k % partitions
        out.append(
            RawMessage(
                pack_envelope(encoded[i : i + EVENTS_PER_ENVELOPE]),
                (("content-type", ENVELOPE_CONTENT_TYPE.encode()),),
                "bench.raw",
                partition,
                offsets[partition],
                now_ms,
            )
        )
        offsets[partition] += 1
    return out


def _skip_leaf_checks(writer: Any) -> None:
    """The writer without its per-write check that its last insert's leaves are all there
    (one query of merkle_nodes a batch): a part of the tree's cost, and with no leaf view
    it would find every insert torn and mend it."""
    opened = writer._open

    def first_writes_only(logs: set[str]) -> None:
        opened({log for log in logs if log not in writer._heads})

    writer._open = first_writes_only


def child(store_path: Path, n: int, *, tree: bool, bootstrap: str, seed: int) -> dict[str, float]:
    from confluent_kafka import Producer

    from benchmarks.dataset import bench_directory
    from producers.contract.directory import Directories
    from producers.kafka_config import KafkaConnection, producer_config
    from storage.store import Store, StoreSettings
    from stream.checkpointer import Checkpointer, CheckpointSettings
    from stream.counters import Counters
    from stream.gc_pause import gc_paused
    from stream.pipeline import worker_chain
    from stream.settings import WorkerSettings
    from stream.steps import Step
    from stream.steps.checkpoint import CheckpointStep
    from stream.steps.guard import RejectGuard
    from stream.steps.retry import Retry
    from stream.topics import ensure_topics

    prefix = f"chain-{uuid.uuid4().hex[:8]}"
    settings = WorkerSettings(
        bootstrap_servers=bootstrap,
        raw_topic=f"{prefix}.raw",
        events_topic=f"{prefix}.events",
        dlq_topic=f"{prefix}.dlq",
        directory_topic=f"{prefix}.directory",
    )
    ensure_topics(settings)
    store = Store.open(StoreSettings(path=store_path))
    directory = bench_directory()
    store.directory.replace(directory)
    if not tree:
        store.engine.command(f"DROP VIEW {store.database}.merkle_leaves_mv")
        _skip_leaf_checks(store.writer)
    directories = Directories([directory])
    messages = _messages(n, settings.topic_partitions, seed)
    producer = Producer(producer_config(KafkaConnection(bootstrap_servers=bootstrap)))
    steps: list[CheckpointStep] = []

    def checkpoints(commit: Step) -> Step:
        cp = CheckpointSettings(dir=store_path.parent / "tlog")
        step = CheckpointStep(Checkpointer.from_settings(store.tree, cp), commit, interval_s=10)
        step.start()
        steps.append(step)
        return step

    counters = Counters()
    chain = worker_chain(
        settings,
        writer=store.writer,
        producer=producer,
        directories=lambda: directories,
        guard=RejectGuard(),
        retry=Retry(),
        counters=counters,
        on_batch=lambda batch: None,
        commit=lambda offsets: None,
        checkpoints=checkpoints if tree else None,
    )
    per_batch = max(1, BATCH_EVENTS // EVENTS_PER_ENVELOPE)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(messages), per_batch):
        with gc_paused():
            chain.submit_messages(messages[i : i + per_batch], {})
    wall = time.perf_counter() - wall
    # The tail signed, as a stopping worker does: its time is the shutdown's, not the batches',
    # and its CPU is counted, so that every leaf's signing is in the CPU figure.
    tail = time.perf_counter()
    for step in steps:
        step.stop()
    tail, cpu = time.perf_counter() - tail, time.process_time() - cpu
    assert counters.rows_stored == n and counters.balanced, counters
    leaves = store.engine.query(f"SELECT count() AS n FROM {store.database}.merkle_nodes WHERE level = 0")
    store.close()
    return {"seconds": wall, "cpu_seconds": cpu, "leaves": float(leaves[0]["n"]), "tail_seconds": tail}


def _run(n: int, *, tree: bool, bootstrap: str, seed: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="auditlog-chain-bench-"))
    args = [
        "--store",
        str(folder / "store"),
        "--events",
        str(n),
        "--bootstrap",
        bootstrap,
        "--seed",
        str(seed),
    ]
    out = subprocess.run(  # noqa: S603 - this module, arguments built here
        [sys.executable, "-m", "benchmarks.chain", "child", *args, *([] if tree else ["--no-tree"])],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    subprocess.run(["rm", "-rf", str(folder)], check=False)  # noqa: S603,S607
    result: dict[str, float] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["compare", "child"], default="compare")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--no-tree", action="store_true")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("AUDITLOG_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    args = parser.parse_args()
    if args.mode == "child":
        result = child(
            args.store, args.events, tree=not args.no_tree, bootstrap=args.bootstrap, seed=args.seed
        )
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    ratios: dict[str, list[float]] = {"seconds": [], "cpu_seconds": []}
    for run in range(1, args.runs + 1):
        order = (True, False) if run % 2 else (False, True)
        got = {tree: _run(args.events, tree=tree, bootstrap=args.bootstrap, seed=run) for tree in order}
        for key in ratios:
            ratios[key].append(got[False][key] / got[True][key])
        assert got[True]["leaves"] == args.events and got[False]["leaves"] == 0, got
        print(
            f"run {run}: tree {args.events / got[True]['seconds']:,.0f} events/s "
            f"({got[True]['cpu_seconds'] * 1e6 / args.events:.1f} µs CPU/event), no tree "
            f"{args.events / got[False]['seconds']:,.0f} events/s "
            f"({got[False]['cpu_seconds'] * 1e6 / args.events:.1f} µs CPU/event)",
            flush=True,
        )
    print(
        "throughput with the tree / without, median of per-run ratios: "
        f"{statistics.median(ratios['seconds']):.3f}x "
        f"(runs: {', '.join(f'{r:.3f}' for r in ratios['seconds'])}); CPU per event without / with: "
        f"{statistics.median(ratios['cpu_seconds']):.3f}x"
    )
    print(f"({args.events:,} events per run, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
