"""The tamper evidence: the Merkle tree, signed checkpoints, and `auditlog verify` naming what changed.

The tree and the notes are checked against published vectors (RFC 6962's test
leaves, Go's signed-note example) and an independent recursive model; the store's
SQL leaf hash against the Python one; each kind of tampering against `verify`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from auditlog.verify_store import LogReport, verify_log, verify_store
from producers.contract.directory import Directories, load_directory
from producers.contract.tlog import merkle
from producers.contract.tlog.checkpoint import Checkpoint, note_hash, open_checkpoint
from producers.contract.tlog.leaf import event_leaf_hash
from producers.contract.tlog.note import NoteError, Signer, Verifier
from storage.engine import Engine
from storage.leaf_sql import leaf_hash_sql
from storage.store import Store
from storage.tree import TreeStore
from stream.batch_ingest import BatchIngestor, IngestReport
from stream.checkpointer import Checkpointer

GOLDEN = Path(__file__).parent / "golden"

# RFC 6962's test leaves and the roots of their first n (certificate-transparency's tree tests).
RFC6962_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962's definition, recursively: the model the iterative code is checked against."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_roots_match_rfc6962_vectors() -> None:
    leaves = [merkle.leaf_hash(bytes.fromhex(x)) for x in RFC6962_LEAVES]
    for n, root in enumerate(RFC6962_ROOTS, start=1):
        assert merkle.root_of(leaves[:n]).hex() == root
    assert merkle.root_of([]) == hashlib.sha256(b"").digest()


def test_proofs_at_every_size_against_the_recursive_model() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(67)]
    nodes: dict[merkle.Coord, bytes] = {}
    frontier = merkle.Frontier()
    completed: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        frontier.append(leaf, completed)
        assert frontier.root() == _mth(leaves[: frontier.size])
    nodes.update({(level, idx): h for level, idx, h in completed})

    def lookup(coords: set[merkle.Coord]) -> dict[merkle.Coord, bytes]:
        return {c: nodes[c] for c in coords}

    for size in range(1, 68):
        root = _mth(leaves[:size])
        for index in range(size):
            path = merkle.prove_inclusion(index, size, lookup)
            assert merkle.verify_inclusion(index, size, leaves[index], path, root)
            assert not merkle.verify_inclusion(index, size, merkle.leaf_hash(b"forged"), path, root)
            if size > 1:
                assert not merkle.verify_inclusion((index + 1) % size, size, leaves[index], path, root)
        for old in range(1, size + 1):
            proof = merkle.prove_consistency(old, size, lookup)
            assert merkle.verify_consistency(old, size, _mth(leaves[:old]), root, proof)
            if old < size:
                assert not merkle.verify_consistency(old, size, merkle.leaf_hash(b"x"), root, proof)


def test_extending_a_frontier_is_appending_its_leaves_one_by_one() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(300)]
    for size in (0, 1, 2, 3, 7, 8, 9, 16, 31, 100):
        for n in (0, 1, 2, 5, 8, 33, 64, 199):
            one, many = merkle.Frontier(), merkle.Frontier()
            for leaf in leaves[:size]:
                one.append(leaf)
                many.append(leaf)
            by_one: list[tuple[int, int, bytes]] = []
            at_once: list[tuple[int, int, bytes]] = []
            for leaf in leaves[size : size + n]:
                one.append(leaf, by_one)
            many.extend(leaves[size : size + n], at_once)
            assert (many.size, many.hashes) == (one.size, one.hashes)
            assert many.root() == _mth(leaves[: size + n])
            assert sorted(at_once) == sorted(c for c in by_one if c[0] > 0)


def test_signed_note_interoperates_with_the_go_reference() -> None:
    # golang.org/x/mod/sumdb/note's example, signed by its published key.
    verifier = Verifier.parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    text = (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    sig = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
    note = f"{text}\n— PeterNeumann {sig}\n"
    assert verifier.verify(note) == text
    with pytest.raises(NoteError, match="not valid"):
        verifier.verify(note.replace("cryptography", "cryptographY"))
    with pytest.raises(NoteError, match="does not match"):
        Verifier.parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_checkpoint_round_trip_and_another_key_refused() -> None:
    signer, other = Signer.generate("auditlog"), Signer.generate("auditlog")
    cp = Checkpoint("auditlog/local", 42, hashlib.sha256(b"r").digest(), 1_796_000_000_123, prev=b"\x01" * 32)
    note = signer.sign(cp.text())
    assert open_checkpoint(note, [signer.verifier]) == cp
    assert Verifier.parse(str(signer.verifier)) == signer.verifier
    with pytest.raises(NoteError, match="no signature"):
        open_checkpoint(note, [other.verifier])
    assert open_checkpoint(note, [other.verifier, signer.verifier]) == cp


# -- the store ------------------------------------------------------------------------------


def _events(n: int, *, start: int = 0, occurred: str = "2026-09-01T10:00:{s:02d}Z") -> list[dict[str, Any]]:
    return [
        {
            "schema_version": 1,
            "event_id": str(uuid.UUID(int=10_000 + i)),
            "occurred_at": occurred.format(s=i % 60),
            "infrastructure": "acme",
            "actor": {"id": "u-priya", "name": "Priya “Ops” Raman"},
            "action": "application.deploy",
            "target": {"kind": "application", "id": f"app-{i % 3}", "name": "Billing Portal ✓"},
            "related": [] if i % 2 else [{"kind": "environment", "id": "env-prod"}],
            "details": {"n": i, "big": 2**53 - 1, "f": 0.1, "text": 'line\nbreak \\ "quoted" 日本'},
            "changes": [{"field": "version", "old": f"1.{i}", "new": f"1.{i + 1}"}] if i % 3 else [],
        }
        for i in range(start, start + n)
    ]


def _report(store: Store, events: list[dict[str, Any]]) -> IngestReport:
    directory = load_directory(GOLDEN / "directory.yaml")
    served = Directories([directory.model_copy(update={"infrastructure": "acme"})])
    return BatchIngestor(store, lambda: served, source="api").ingest(events, received_at_ms=1_796_000_000_000)


def _ingest(store: Store, events: list[dict[str, Any]]) -> None:
    report = _report(store, events)
    assert report.stored == len(events) and not report.rejected


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("auditlog")


def _checkpointer(store: Store, signer: Signer, anchor: Path | None = None) -> Checkpointer:
    return Checkpointer(store.tree, signer, origin="auditlog", anchor_dir=anchor)


def _verify(store: Store, signer: Signer, anchor: Path | None = None, **kw: Any) -> LogReport:
    return verify_log(
        store.tree, "local", verifiers=[signer.verifier], origin="auditlog", anchor_dir=anchor, **kw
    )


def _kinds(report: LogReport) -> list[tuple[str, int | None, str | None]]:
    return [(f.kind, f.index, f.event_id) for f in report.findings]


def _signed_store(
    store: Store, signer: Signer, n: int = 40, anchor: Path | None = None
) -> list[dict[str, Any]]:
    _ingest(store, _events(n))
    _checkpointer(store, signer, anchor).run()
    rows = store.engine.query(
        f"SELECT toString(event_id) AS id, leaf_index AS i FROM {store.database}.audit_events "
        "ORDER BY leaf_index"
    )
    assert [int(r["i"]) for r in rows] == list(range(n))
    return rows


def _sql(store: Store, statement: str, **params: Any) -> None:
    store.engine.command(
        statement.replace("{db}", store.database) + " SETTINGS mutations_sync = 2", params=params
    )


def test_sql_leaf_hash_is_the_python_one(store: Store) -> None:
    _ingest(store, _events(30))
    db = store.database
    rows = store.engine.query(
        f"SELECT *, toString(content_hash) AS ch, toUnixTimestamp64Milli(occurred_at) AS o, "
        f"toUnixTimestamp64Milli(received_at) AS r FROM {db}.audit_events ORDER BY leaf_index"
    )
    leaves = dict(store.tree.leaves("local"))
    assert len(rows) == len(leaves) == 30
    for row in rows:
        values = {**row, "occurred_at": row["o"], "received_at": row["r"], "content_hash": int(row["ch"])}
        assert event_leaf_hash("local", int(row["leaf_index"]), values) == leaves[int(row["leaf_index"])]


def test_positions_are_contiguous_once_per_event_and_the_tree_verifies(store: Store, signer: Signer) -> None:
    _signed_store(store, signer, 25)
    _ingest(store, _events(10, start=25))
    # A replay stores nothing and adds no leaf; the next checkpoint chains to the first.
    served = Directories(
        [load_directory(GOLDEN / "directory.yaml").model_copy(update={"infrastructure": "acme"})]
    )
    again = BatchIngestor(store, lambda: served, source="api")
    assert again.ingest(_events(5), received_at_ms=1_796_000_000_000).duplicates == 5
    made = _checkpointer(store, signer).run()
    assert [m.checkpoint.size for m in made] == [35]
    first, second = store.tree.checkpoints("local")
    assert open_checkpoint(second.note, [signer.verifier]).prev == note_hash(first.note)
    report = _verify(store, signer)
    assert report.findings == [] and report.leaves == 35 and report.checkpoints == 2
    assert _checkpointer(store, signer).run() == []  # nothing new, nothing signed


def test_an_altered_row_is_named(store: Store, signer: Signer) -> None:
    rows = _signed_store(store, signer)
    _sql(store, "ALTER TABLE {db}.audit_events UPDATE actor_id = 'mallory' WHERE leaf_index = 17")
    assert _kinds(_verify(store, signer)) == [("altered", 17, rows[17]["id"])]


def test_inserted_rows_are_named(store: Store, signer: Signer) -> None:
    rows = _signed_store(store, signer)
    db = store.database
    forged = [str(uuid.uuid4()), str(uuid.uuid4())]
    # One forged into a signed position (the view gives it a leaf there too), one into no log.
    for event_id, log in zip(forged, ("local", ""), strict=True):
        store.engine.command(
            f"INSERT INTO {db}.audit_events SELECT * REPLACE (toUUID({{id:String}}) AS event_id, "
            f"{{log:String}} AS log) FROM {db}.audit_events WHERE leaf_index = 5 LIMIT 1",
            params={"id": event_id, "log": log},
        )
    report = _verify(store, signer)
    doubled = [f for f in report.findings if f.kind == "doubled"]
    assert [f.index for f in doubled] == [5, 5]  # the row and the leaf
    assert all(forged[0] in f.detail and rows[5]["id"] in f.detail for f in doubled)
    assert {f.kind for f in report.findings} <= {"doubled", "root"}
    [outside] = [
        r
        for r in verify_store(store.tree, verifiers=[signer.verifier], origin="auditlog", anchor_dir=None)
        if not r.log
    ]
    assert _kinds(outside) == [("inserted", None, forged[1])]


def test_a_deleted_row_is_named(store: Store, signer: Signer) -> None:
    rows = _signed_store(store, signer)
    _sql(store, "ALTER TABLE {db}.audit_events DELETE WHERE leaf_index = 3")
    assert _kinds(_verify(store, signer)) == [("deleted", 3, rows[3]["id"])]
    # The same row expired by retention: reported as expired, not as tampering.
    report = _verify(store, signer, expired_before_ms=1_900_000_000_000)
    assert report.findings == [] and report.expired == 1
    # A deletion dressed up as expiry (the leaf's time set back): its hash no longer covers it.
    _sql(
        store,
        "ALTER TABLE {db}.merkle_nodes UPDATE occurred_at = toDateTime64('2020-01-01', 3, 'UTC') "
        "WHERE idx = 3",
    )
    report = _verify(store, signer, expired_before_ms=1_700_000_000_000)
    assert _kinds(report) == [("deleted", 3, rows[3]["id"])] and report.expired == 0


def test_reordered_rows_are_named(store: Store, signer: Signer) -> None:
    rows = _signed_store(store, signer)
    _sql(
        store,
        "ALTER TABLE {db}.audit_events UPDATE leaf_index = multiIf(leaf_index = 8, 9, leaf_index = 9, 8, "
        "leaf_index) WHERE leaf_index IN (8, 9)",
    )
    assert _kinds(_verify(store, signer)) == [
        ("reordered", 8, rows[9]["id"]),
        ("reordered", 9, rows[8]["id"]),
    ]


def test_a_truncation_names_the_missing_newest_positions(store: Store, signer: Signer) -> None:
    _signed_store(store, signer)
    _sql(store, "ALTER TABLE {db}.audit_events DELETE WHERE leaf_index >= 33")
    _sql(store, "ALTER TABLE {db}.merkle_nodes DELETE WHERE idx >= 33 AND level = 0")
    report = _verify(store, signer)
    assert [(f.kind, f.index) for f in report.findings] == [("truncated", 33)]
    assert "positions 33 to 39 (7 events) are missing" in report.findings[0].detail


def test_a_row_and_its_leaf_altered_together_are_localized_by_the_signed_root(
    store: Store, signer: Signer
) -> None:
    _signed_store(store, signer)
    db = store.database
    _sql(store, "ALTER TABLE {db}.audit_events UPDATE outcome = 'failure' WHERE leaf_index = 22")
    # The forger recomputes the leaf too, so that row and leaf agree again.
    _sql(
        store,
        "ALTER TABLE {db}.merkle_nodes UPDATE hash = (SELECT any(h) FROM (SELECT "
        + leaf_hash_sql()
        + f" AS h FROM {db}.audit_events WHERE leaf_index = 22)) WHERE level = 0 AND idx = 22",
    )
    report = _verify(store, signer)
    assert [(f.kind, f.index) for f in report.findings] == [("root", 22)]
    assert "22 or 23" in report.findings[0].detail


def test_a_checkpoint_signed_by_another_key_and_one_removed_from_the_store(
    store: Store, signer: Signer, tmp_path: Path
) -> None:
    _signed_store(store, signer, anchor=tmp_path)
    _ingest(store, _events(5, start=40))
    _checkpointer(store, signer, tmp_path).run()
    forger = Signer.generate("auditlog")
    cp = store.tree.latest_checkpoint("local")
    assert cp is not None
    store.tree.save_checkpoint(
        cp.__class__(
            **{**cp.__dict__, "note": forger.sign(Checkpoint.parse(cp.note.split("\n\n")[0] + "\n").text())}
        )
    )
    # The first checkpoint removed from the store: its anchor file still tells.
    _sql(store, "ALTER TABLE {db}.checkpoints DELETE WHERE tree_size = 40")
    details = [f.detail for f in _verify(store, signer, anchor=tmp_path).findings]
    assert any("no signature of auditlog" in d for d in details), details
    assert any("size 40" in d and "missing from the store" in d for d in details), details


def _cli(*args: str, anchor: Path | None = None) -> subprocess.CompletedProcess[str]:
    # A process of its own: chDB opens one store folder per process, and this one holds the tests'.
    env = {**os.environ, **({"AUDITLOG_CHECKPOINT_DIR": str(anchor)} if anchor else {})}
    return subprocess.run(
        [sys.executable, "-m", "auditlog.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_cli_checkpoint_and_verify_on_a_store_folder(tmp_path: Path) -> None:
    folder, anchor, events = tmp_path / "data", tmp_path / "tlog", tmp_path / "events.ndjson"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in _events(12)))
    where = ["--store", str(folder)]
    at = [*where, "--checkpoint-dir", str(anchor)]
    directory = _cli("directory", "load", *where, "--infrastructure", "acme", str(GOLDEN / "directory.yaml"))
    assert directory.returncode == 0, directory.stderr
    # A file ingest signs its logs when it ends, with the key of the checkpoint directory.
    assert _cli("ingest", *where, str(events), anchor=anchor).returncode == 0
    run = _cli("checkpoint", *at)
    assert run.returncode == 0, run.stderr
    made = orjson.loads(run.stdout.splitlines()[0])
    assert made["size"] == 12 and (anchor / "logs" / "local" / "checkpoint").read_text() == made["note"]
    run = _cli("verify", *at)
    assert run.returncode == 0, run.stderr
    assert orjson.loads(run.stdout.splitlines()[0])["leaves"] == 12 and "OK: 1 logs" in run.stderr
    # Another key given as the trusted one: the checkpoints no longer verify.
    other = str(Signer.generate("auditlog").verifier)
    run = _cli("verify", *at, "--public-key", other)
    assert run.returncode == 1 and "no signature of auditlog" in run.stderr
    # A rotation keeps the old verifier key published: old checkpoints still verify.
    assert _cli("signing-key", "rotate", *at).returncode == 0
    assert _cli("checkpoint", *at).returncode == 0
    run = _cli("verify", *at)
    assert run.returncode == 0, run.stderr
    assert len((anchor / "verifier-keys.txt").read_text().splitlines()) == 2
    # A row altered behind the log's back: named, exit 1.
    store = _cli("verify", *at, "--log", "local")
    assert store.returncode == 0


def _from_partition(store: Store, events: list[dict[str, Any]], partition: int) -> list[dict[str, Any]]:
    from producers.contract.event import parse_event
    from stream.messages import Lineage
    from stream.transform import process

    served = Directories(
        [load_directory(GOLDEN / "directory.yaml").model_copy(update={"infrastructure": "acme"})]
    )
    rows = [
        process(parse_event(e), served, Lineage("kafka", 1_796_000_000_000, "audit.raw", partition, i))
        for i, e in enumerate(events)
    ]
    store.writer.write(rows)
    return rows


def test_the_checkpoint_step_signs_the_logs_of_its_partitions_once_a_minute(
    store: Store, signer: Signer
) -> None:
    from stream.messages import Batch
    from stream.steps import Done
    from stream.steps.checkpoint import CheckpointStep

    now = [0.0]
    step = CheckpointStep(_checkpointer(store, signer), Done(), interval_s=60, clock=lambda: now[0])
    step.submit(Batch(rows=_from_partition(store, _events(6), 0)))
    step.tick()
    assert store.tree.checkpoints("audit.raw/0") == []  # not due yet
    now[0] = 61.0
    step.tick()
    [cp] = store.tree.checkpoints("audit.raw/0")
    assert cp.size == 6
    now[0] = 62.0
    step.submit(Batch(rows=_from_partition(store, _events(3, start=6), 0)))
    step.tick()
    assert len(store.tree.checkpoints("audit.raw/0")) == 1  # a minute has not passed since
    # A duplicate of an event stored from partition 0, read again from partition 1: this worker
    # signs partition 1's log, never the stored copy's.
    again = _from_partition(store, _events(1), 1)
    assert again[0]["log"] == "audit.raw/0"
    now[0] = 130.0
    step.submit(Batch(rows=_from_partition(store, _events(3, start=9), 0) + again))
    step.tick()
    assert [c.size for c in store.tree.checkpoints("audit.raw/0")] == [6, 12]
    assert store.tree.checkpoints("audit.raw/1") == []  # partition 1 wrote no leaf: nothing to sign


def test_the_checkpoint_step_signs_in_its_own_thread_and_signs_the_tail_when_stopped(
    store: Store, signer: Signer
) -> None:
    from stream.messages import Batch
    from stream.steps.checkpoint import CheckpointStep

    class Recording:
        def __init__(self) -> None:
            self.threads: list[str] = []

        def submit(self, batch: Batch) -> None:
            self.threads.append(threading.current_thread().name)

    signed_in: list[str] = []
    checkpointer = Checkpointer(
        store.tree,
        signer,
        origin="auditlog",
        anchor_dir=None,
        publish=lambda made: signed_in.append(threading.current_thread().name),
    )
    after = Recording()
    step = CheckpointStep(checkpointer, after, interval_s=0.2)
    step.start()
    step.submit(Batch(rows=_from_partition(store, _events(5), 0)))
    assert after.threads == [threading.current_thread().name]  # passed on at once
    deadline = time.monotonic() + 30
    while not store.tree.checkpoints("audit.raw/0") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c.size for c in store.tree.checkpoints("audit.raw/0")] == [5]
    assert signed_in == ["auditlog-checkpoints"]
    step.submit(Batch(rows=_from_partition(store, _events(2, start=5), 0)))
    step.stop()  # due or not, what is pending is signed before the worker stops
    assert [c.size for c in store.tree.checkpoints("audit.raw/0")] == [5, 7]


def test_a_replay_into_an_empty_store_gives_the_same_tree(chdb_engine: Engine, signer: Signer) -> None:
    roots = []
    for _ in range(2):
        store = Store(chdb_engine, database="t_" + uuid.uuid4().hex[:12])
        _ingest(store, _events(23))
        _ingest(store, _events(9, start=23))
        [made] = _checkpointer(store, signer).run()
        roots.append((made.checkpoint.size, made.checkpoint.root))
    assert roots[0] == roots[1] and roots[0][0] == 32


def test_positions_a_crash_left_without_a_leaf_are_filled_by_the_events_that_come_again(
    chdb_engine: Engine, signer: Signer
) -> None:
    from storage import writer

    database = "t_" + uuid.uuid4().hex[:12]
    store = Store(chdb_engine, database=database)
    _ingest(store, _events(10))
    # A crash mid-insert committed some of its parts only: rows 3, 4 and 7 and their leaves are lost.
    _sql(store, "ALTER TABLE {db}.audit_events DELETE WHERE leaf_index IN (3, 4, 7)")
    _sql(store, "ALTER TABLE {db}.merkle_nodes DELETE WHERE idx IN (3, 4, 7)")
    lost = [str(uuid.UUID(int=10_000 + i)) for i in (3, 4, 7)]
    _sql(store, "ALTER TABLE {db}.event_keys DELETE WHERE event_id IN {ids:Array(UUID)}", ids=lost)
    assert _checkpointer(store, signer).run()[0].checkpoint.size == 3  # signing stops at the gap
    writer._STATES.pop((id(chdb_engine), database))  # the process restarts
    restarted = Store(chdb_engine, database=database)
    _ingest(restarted, [e for i, e in enumerate(_events(10)) if i in (3, 4, 7)])  # redelivered
    _ingest(restarted, _events(2, start=10))
    [made] = _checkpointer(restarted, signer).run()
    assert made.checkpoint.size == 12
    assert _verify(restarted, signer).findings == []


def _count(store: Store, sql: str) -> int:
    [row] = store.engine.query(sql.replace("{db}", store.database))
    return int(next(iter(row.values())))


@pytest.mark.parametrize(
    "lost",
    [
        ("merkle_nodes",),
        ("event_keys",),
        ("audit_entity_index",),
        ("merkle_nodes", "event_keys", "audit_entity_index"),
    ],
)
def test_rows_a_crash_tore_from_their_views_are_mended_before_their_events_come_again(
    chdb_engine: Engine, signer: Signer, lost: tuple[str, ...]
) -> None:
    """An insert commits the row's part before its views' parts: a crash between them leaves
    rows without their leaves, keys or index rows, whose events are then redelivered."""
    from storage import writer

    database = "t_" + uuid.uuid4().hex[:12]
    store = Store(chdb_engine, database=database)
    _ingest(store, _events(10))
    torn = [str(uuid.UUID(int=10_000 + i)) for i in (7, 8, 9)]
    for table in lost:
        _sql(store, f"ALTER TABLE {{db}}.{table} DELETE WHERE event_id IN {{ids:Array(UUID)}}", ids=torn)
    writer._STATES.pop((id(chdb_engine), database))  # the process restarts
    restarted = Store(chdb_engine, database=database)
    redelivered = _report(restarted, _events(3, start=7))
    assert (redelivered.stored, redelivered.duplicates) == (0, 3)  # on record already
    _ingest(restarted, _events(2, start=10))
    assert _count(restarted, "SELECT count() FROM {db}.audit_events") == 12  # nothing stored twice
    assert _count(restarted, "SELECT uniqExact(leaf_index) FROM {db}.audit_events") == 12
    assert _count(restarted, "SELECT count() FROM {db}.audit_entity_index") == _count(
        restarted, "SELECT sum(length(entity_keys)) FROM {db}.audit_events"
    )
    [made] = _checkpointer(restarted, signer).run()
    assert made.checkpoint.size == 12
    assert _verify(restarted, signer).findings == []


def test_a_failed_view_is_mended_before_the_next_write(store: Store, signer: Signer) -> None:
    """A view that fails after the row's part is committed (here a fourth one, made to fail on
    one event; chDB's streaming insert does not even report it): the next write finds the
    rows without their leaves and keys and mends them, so the batch sent again is duplicates."""
    from storage.engine import StoreError

    _ingest(store, _events(5))
    db, failing = store.database, str(uuid.UUID(int=10_007))
    store.engine.command(f"CREATE TABLE {db}.trap (n UInt8) ENGINE = MergeTree ORDER BY n")
    store.engine.command(
        f"CREATE MATERIALIZED VIEW {db}.trap_mv TO {db}.trap AS "
        f"SELECT throwIf(event_id = toUUID('{failing}'), 'the view failed') AS n FROM {db}.audit_events"
    )
    with contextlib.suppress(StoreError):  # a ClickHouse server reports it
        _ingest(store, _events(5, start=5))
    store.engine.command(f"DROP VIEW {db}.trap_mv")
    again = _report(store, _events(5, start=5))
    assert (again.stored, again.duplicates) == (0, 5)  # the retry: found, not stored twice
    _ingest(store, _events(1, start=10))
    assert _count(store, "SELECT count() FROM {db}.audit_events") == 11
    assert _count(store, "SELECT count() FROM {db}.event_keys") == 11
    [made] = _checkpointer(store, signer).run()
    assert made.checkpoint.size == 11
    assert _verify(store, signer).findings == []


def _tree_of(store: Store, log: str = "local") -> dict[merkle.Coord, bytes]:
    """Every perfect subtree of the log, hashed here from its leaves."""
    tree = merkle.levels([h for _, h in store.tree.leaves(log)])
    return {(level, idx): h for level, row in enumerate(tree) for idx, h in enumerate(row)}


def test_proof_nodes_hashed_from_their_leaves_are_the_trees(store: Store, signer: Signer) -> None:
    _signed_store(store, signer, n=45)
    coords = [(level, idx) for level in range(6) for idx in range(45 >> level)]
    tree = _tree_of(store)
    assert store.tree.proof_nodes("local", coords) == {c: tree[c] for c in coords}
    # A low node whose leaves are not all there is not made up.
    _sql(store, "ALTER TABLE {db}.merkle_nodes DELETE WHERE level = 0 AND idx = 5")
    assert (2, 1) not in store.tree.proof_nodes("local", [(2, 1), (2, 0)])


def test_proof_nodes_of_a_tree_past_one_block_match_the_stored_ones(store: Store, signer: Signer) -> None:
    _signed_store(store, signer, n=700)
    coords = [(level, idx) for level in range(10) for idx in range(700 >> level)]
    tree = _tree_of(store)
    # What the checkpointer kept: of the two whole blocks of 256 (hashed by the store) and
    # above them, levels 1 and 8 up; of the third block, every subtree it completed.
    stored = store.tree.nodes("local", coords)
    kept = [c for c in coords if c[0] in (0, 1) or c[0] >= 8 or c[1] << c[0] >= 512]
    assert stored == {c: tree[c] for c in kept}
    cold = TreeStore(store.engine, database=store.database)
    assert cold.proof_nodes("local", coords) == {
        c: tree[c] for c in coords
    }  # the high levels read, then kept
    for index in (0, 255, 256, 511, 699):
        path = [c for r in merkle.inclusion_ranges(index, 700) for c in merkle.coords_for([r])]
        assert cold.proof_nodes("local", path) == {c: tree[c] for c in path}


def test_checkpoints_in_steps_keep_the_subtrees_and_roots_of_one_made_at_once(
    store: Store, signer: Signer
) -> None:
    """Blocks hashed by the store at every kind of boundary (inside a block, on one, several
    blocks at once) give the roots and subtrees that one pass over the leaves does, each
    subtree kept once."""
    checkpointer = _checkpointer(store, signer)
    roots: list[tuple[int, bytes]] = []
    size = 0
    for n in (1, 3, 9, 130, 255, 256, 257, 700, 768, 1030):
        _ingest(store, _events(n - size, start=size))
        size = n
        [made] = checkpointer.run()
        roots.append((made.checkpoint.size, made.checkpoint.root))
    tree = merkle.levels([h for _, h in store.tree.leaves("local")])
    assert roots == [(n, merkle.root_at(tree, n)) for n, _ in roots]
    whole = _tree_of(store)
    coords = [(level, idx) for level in range(1, 11) for idx in range(1030 >> level)]
    stored = store.tree.nodes("local", coords)
    # Every stored subtree is the one pass's; level 1 and 8 up are all there; of levels 2 to
    # 7, only what a block not yet whole at a checkpoint completed (here: of blocks 0 and 2,
    # which filled over several checkpoints, and of the last one, [1024, 1030)).
    assert stored == {c: whole[c] for c in stored}
    assert {c for c in coords if c[0] == 1 or c[0] >= 8} <= set(stored)
    assert not [c for c in stored if 2 <= c[0] < 8 and (c[1] << c[0]) >> 8 in (1, 3)]
    assert [c for c in stored if 2 <= c[0] < 8 and (c[1] << c[0]) >> 8 == 0]
    # Each subtree stored once, however many checkpoints a block took to fill.
    assert _count(store, "SELECT count() FROM {db}.merkle_nodes WHERE level > 0") == len(stored)
    # A proof of leaves at each of those sizes, and between each two, from what is stored.
    cold = TreeStore(store.engine, database=store.database)
    leaves = dict(store.tree.leaves("local"))
    for (old, old_root), (size, root) in itertools.pairwise(roots):
        for index in {0, size // 2, size - 1}:
            path = merkle.prove_inclusion(index, size, lambda c: cold.proof_nodes("local", c))
            assert merkle.verify_inclusion(index, size, leaves[index], path, root)
        proof = merkle.prove_consistency(old, size, lambda c: cold.proof_nodes("local", c))
        assert merkle.verify_consistency(old, size, old_root, root, proof)
    assert _verify(store, signer).findings == []


def test_a_checkpoint_is_refused_when_the_tree_below_the_last_one_changed(
    store: Store, signer: Signer
) -> None:
    checkpointer = _checkpointer(store, signer)
    _ingest(store, _events(5))
    [first] = checkpointer.run()
    _ingest(store, _events(3, start=5))
    _sql(store, "ALTER TABLE {db}.merkle_nodes DELETE WHERE level = 0 AND idx = 2")
    # Signing 8 leaves now would sign a root of other leaves than the 5 already signed.
    with pytest.raises(RuntimeError, match="lack a leaf"):
        checkpointer.checkpoint("local")
    _sql(
        store,
        "ALTER TABLE {db}.merkle_nodes UPDATE hash = unhex(repeat('ab', 32)) WHERE level = 2 AND idx = 0",
    )
    with pytest.raises(RuntimeError, match="no longer matches its last checkpoint"):
        checkpointer.checkpoint("local")
    assert [c.size for c in store.tree.checkpoints("local")] == [first.checkpoint.size]


class _StaleTree(TreeStore):
    """A second signer that read the log's newest checkpoint before the first one signed."""

    def __init__(self, store: Store, stale: Any) -> None:
        super().__init__(store.engine, database=store.database)
        self._stale = stale

    def latest_checkpoint(self, log: str, *, max_age_s: float = 0.0) -> Any:
        return self._stale


def test_two_signers_at_once_fork_the_chain_and_a_removed_link_is_found(store: Store, signer: Signer) -> None:
    _signed_store(store, signer, n=10)
    first = store.tree.latest_checkpoint("local")
    assert first is not None
    _ingest(store, _events(5, start=10))
    [a] = _checkpointer(store, signer).run()
    _ingest(store, _events(5, start=15))
    # The other signer (a partition's next owner, mid-rebalance) extends the first checkpoint too.
    [b] = Checkpointer(_StaleTree(store, first), signer, origin="auditlog", anchor_dir=None).run()
    assert (a.checkpoint.prev, b.checkpoint.prev) == (note_hash(first.note), note_hash(first.note))
    assert (a.checkpoint.size, b.checkpoint.size) == (15, 20)
    [c] = _checkpointer(store, signer).run(force=True)
    assert c.checkpoint.prev == note_hash(b.note)
    report = _verify(store, signer)
    assert report.findings == [] and report.forks == 1 and report.checkpoints == 4

    # A link of the chain removed from the store (no anchor kept): its successor tells.
    _sql(store, "ALTER TABLE {db}.checkpoints DELETE WHERE tree_size = 10")
    details = [f.detail for f in _verify(store, signer).findings]
    assert any("size 15" in d and "neither in the store nor in the anchor" in d for d in details), details
    assert any("size 20" in d and "neither in the store nor in the anchor" in d for d in details), details
