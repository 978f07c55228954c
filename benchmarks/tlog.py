"""What the tamper evidence costs: signing, verifying and proving at scale, and ingest side by side.

python -m benchmarks.tlog store  --store DIR [--proofs 200]
    on a store built by `python -m benchmarks.dataset build --scale 10m`: the first
    checkpoint of every log (the whole tree, from nothing), `auditlog verify` of every
    row and leaf, and inclusion proofs of random events (the API's own code);
python -m benchmarks.tlog proofs --store DIR --compare REF [--proofs 300] [--runs 3]
    the proofs of `store --proofs-only` (checkpoints already made), by this tree and by
    REF alternately on the same store: a proof's cost as measured side by side;
python -m benchmarks.tlog ingest --compare REF [--events 100000] [--runs 3]
    embedded ingest (`benchmarks.ingest embedded`, fresh stores) of this tree and of REF,
    alternately: the tree's cost on the ingest path, as a ratio measured side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import REPO
from benchmarks.dataset import DATABASE
from benchmarks.worker_throughput import worktree


def store_figures(path: Path, proofs: int, *, proofs_only: bool = False) -> None:
    from auditlog.verify_store import verify_store
    from producers.contract.tlog.note import Signer
    from storage.store import Store, StoreSettings
    from stream.checkpointer import Checkpointer

    store = Store.open(StoreSettings(path=path, database=DATABASE))
    tree = store.tree
    rows = store.event_count()
    signer = Signer.generate("auditlog")
    anchor = Path(tempfile.mkdtemp(prefix="auditlog-tlog-bench-"))
    if proofs_only:
        _proofs(store, proofs)
        return
    store.engine.command(f"TRUNCATE TABLE {DATABASE}.checkpoints")
    store.engine.command(
        f"ALTER TABLE {DATABASE}.merkle_nodes DELETE WHERE level > 0 SETTINGS mutations_sync = 2"
    )
    t = time.perf_counter()
    made = Checkpointer(tree, signer, origin="auditlog", anchor_dir=anchor).run()
    sign_s = time.perf_counter() - t
    leaves = sum(m.checkpoint.size for m in made)
    print(f"rows {rows:,}, leaves {leaves:,} in {len(made)} logs", flush=True)
    print(f"first checkpoint of every log (the whole tree from nothing): {sign_s:.1f} s", flush=True)

    times = []
    for _ in range(3):
        t = time.perf_counter()
        reports = verify_store(tree, verifiers=[signer.verifier], origin="auditlog", anchor_dir=anchor)
        times.append(time.perf_counter() - t)
        assert all(not r.findings for r in reports), [f for r in reports for f in r.findings][:5]
    print(
        f"auditlog verify, every row and leaf: median {statistics.median(times):.1f} s of 3 "
        f"({', '.join(f'{x:.1f}' for x in times)})",
        flush=True,
    )

    _proofs(store, proofs)


def _proofs(store: Any, proofs: int) -> None:
    from query_api.inclusion import inclusion
    from storage.reader import _SELECT_PROVABLE

    tree = store.tree
    ids = [
        r["id"]
        for r in store.engine.query(
            f"SELECT toString(event_id) AS id FROM {DATABASE}.audit_events "
            "ORDER BY rand() LIMIT {n:UInt32}",
            params={"n": proofs},
        )
    ]
    read_ms, proof_ms = [], []
    for event_id in ids:
        t = time.perf_counter()
        # As the endpoint does: the event's row (the read of GET /v1/events/{id}), then its proof.
        [row] = store.engine.query(
            f"SELECT {_SELECT_PROVABLE} FROM {DATABASE}.audit_events WHERE event_id = toUUID({{id:String}}) "
            f"AND occurred_at IN (SELECT occurred_at FROM {DATABASE}.event_keys "
            "WHERE event_id = toUUID({id:String})) LIMIT 1",
            params={"id": event_id},
        )
        t2 = time.perf_counter()
        proof = inclusion(tree, [row])[0]
        proof_ms.append((time.perf_counter() - t2) * 1000)
        read_ms.append((t2 - t) * 1000)
        assert proof is not None
    for what, ms in (
        ("the proof itself (checkpoint + audit path)", proof_ms),
        ("the event's row read", read_ms),
    ):
        ms.sort()
        print(
            f"{what}: p50 {ms[len(ms) // 2]:.1f} ms, p95 {ms[int(len(ms) * 0.95)]:.1f} ms ({len(ms)} events)"
        )
    print(f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    store.close()


def _ingest_rate(repo: Path, events: int, seed: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="auditlog-ingest-bench-"))
    run = subprocess.run(  # noqa: S603 - our own benchmark module, arguments built here
        [sys.executable, "-m", "benchmarks.ingest", "embedded", "--store", str(folder / "store"),
         "--events", str(events), "--seed", str(seed)],
        cwd=repo,  # `python -m` runs that tree's code
        env={**os.environ, "AUDITLOG_CHECKPOINT_DIR": str(folder / "tlog")},
        capture_output=True,
        check=True,
    )  # fmt: skip
    return float(orjson.loads(run.stdout.splitlines()[-1])["events_per_s"])


def ingest_compare(ref: str, events: int, runs: int) -> None:
    other = worktree(ref)
    ratios = []
    for run in range(1, runs + 1):
        seed = random.randrange(1_000_000)
        mine = _ingest_rate(REPO, events, seed)
        theirs = _ingest_rate(other, events, seed)
        ratios.append(mine / theirs)
        print(f"run {run} this-tree {mine:,.0f} {ref} {theirs:,.0f} ratio {mine / theirs:.3f}", flush=True)
    print(
        f"embedded ingest, this tree / {ref}: median ratio {statistics.median(ratios):.3f}x over {runs} runs"
    )


def proofs_compare(path: Path, ref: str, proofs: int, runs: int) -> None:
    path = path.resolve()  # each tree runs from its own folder
    other = worktree(ref)
    trees = [("this tree", REPO), (ref, other)]
    for run in range(1, runs + 1):
        for name, repo in trees if run % 2 else trees[::-1]:
            out = subprocess.run(  # noqa: S603 - our own benchmark module, arguments built here
                [sys.executable, "-m", "benchmarks.tlog", "store", "--store", str(path),
                 "--proofs", str(proofs), "--proofs-only"],
                cwd=repo, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            own = next(line for line in out.splitlines() if line.startswith("the proof itself"))
            print(f"run {run} {name}: {own}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("store")
    s.add_argument("--store", type=Path, required=True)
    s.add_argument("--proofs", type=int, default=200)
    s.add_argument("--proofs-only", action="store_true", help="only the proofs (checkpoints already made)")
    c = sub.add_parser("proofs")
    c.add_argument("--store", type=Path, required=True)
    c.add_argument("--compare", required=True, metavar="REF")
    c.add_argument("--proofs", type=int, default=300)
    c.add_argument("--runs", type=int, default=3)
    i = sub.add_parser("ingest")
    i.add_argument("--compare", required=True, metavar="REF")
    i.add_argument("--events", type=int, default=100_000)
    i.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "store":
        store_figures(args.store, args.proofs, proofs_only=args.proofs_only)
    elif args.command == "proofs":
        proofs_compare(args.store, args.compare, args.proofs, args.runs)
    else:
        ingest_compare(args.compare, args.events, args.runs)


if __name__ == "__main__":
    main()
