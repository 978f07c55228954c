"""`auditlog verify`: the store checked against its signed checkpoints, naming what changed.

For each log:

1. its checkpoints, from the store and from the anchor directory (files outside the
   store), each verified against the trusted verifier keys; a checkpoint missing from
   the store, badly signed, or chained to one that is gone is a finding (two chained
   to one, a fork of two signers, is counted, not a finding);
2. its leaves, read in index order: a missing or doubled position is a finding; the
   tree they make is compared with the root of every checkpoint. The first root that
   differs is localized through the perfect subtrees stored when it was signed;
3. every row, hashed by the store (`storage.leaf_sql`) and compared with its leaf:
   altered (same event, other bytes), inserted (a row at no leaf), deleted (a leaf
   without its row), reordered (an event's row at another event's position);
4. truncation: the newest signed checkpoint covers positions the store no longer has.

A leaf whose row is gone is reported as expired, not as tampering, when a purge
accounts for it (`storage.retention`): its position's tombstone names its event, the
purge that removed it is an `audit_log.purge` event of the log, and the leaf's own time
(which its hash covers) is older than that purge's cutoff for the row's rule. Without
tombstones (a TTL of the cluster DDL), `expired_before_ms` gives the horizon. The leaf
hashes outlive the rows, so the tree still verifies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from producers.contract.tlog.checkpoint import Checkpoint, note_hash, open_checkpoint
from producers.contract.tlog.leaf import leaf_data_of
from producers.contract.tlog.merkle import Frontier, leaf_hash, levels, node_hash, root_at
from producers.contract.tlog.note import NoteError, Verifier
from storage.retention import Tombstone
from storage.tree import RowCheck, TreeStore
from stream.checkpointer import anchor_folder


@dataclass(frozen=True)
class Finding:
    kind: str
    """altered, inserted, deleted, reordered, truncated, doubled, gap, root, checkpoint"""
    log: str
    detail: str
    index: int | None = None
    event_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class LogReport:
    log: str
    leaves: int = 0
    rows_checked: str = "all"
    checkpoints: int = 0
    newest_checkpoint: int | None = None
    expired: int = 0
    forks: int = 0
    """Checkpoints that share their predecessor with another: two signers at once, not tampering."""
    findings: list[Finding] = field(default_factory=list)
    doubled: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, object]:
        return {
            "log": self.log,
            "leaves": self.leaves,
            "rows_checked": self.rows_checked,
            "checkpoints": self.checkpoints,
            "newest_checkpoint_size": self.newest_checkpoint,
            "expired": self.expired,
            "forks": self.forks,
            "ok": not self.findings,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class _Signed:
    checkpoint: Checkpoint
    note: str
    in_store: bool
    in_anchor: bool


def anchor_notes(anchor_dir: Path | None, log: str) -> list[str]:
    if anchor_dir is None:
        return []
    folder = anchor_folder(anchor_dir, log)
    if not folder.is_dir():
        return []
    return [p.read_text() for p in sorted(folder.glob("*.checkpoint"))]


def anchored_logs(anchor_dir: Path | None) -> list[str]:
    if anchor_dir is None or not (anchor_dir / "logs").is_dir():
        return []
    root = anchor_dir / "logs"
    return sorted({str(p.parent.relative_to(root)) for p in root.rglob("*.checkpoint")})


def _checkpoints(
    report: LogReport,
    store_notes: Sequence[str],
    anchored: Sequence[str],
    verifiers: list[Verifier],
    origin: str,
) -> list[_Signed]:
    """The log's valid checkpoints, in chain order; every other one is a finding."""
    notes: dict[str, list[bool]] = {}
    for note in store_notes:
        notes.setdefault(note, [False, False])[0] = True
    for note in anchored:
        notes.setdefault(note, [False, False])[1] = True
    valid: list[_Signed] = []
    for note, (in_store, in_anchor) in notes.items():
        try:
            cp = open_checkpoint(note, verifiers)
        except NoteError as exc:
            where = "store" if in_store else "anchor directory"
            report.findings.append(Finding("checkpoint", report.log, f"a checkpoint in the {where}: {exc}"))
            continue
        if cp.origin != origin:
            report.findings.append(
                Finding(
                    "checkpoint", report.log, f"a checkpoint of origin {cp.origin!r}, expected {origin!r}"
                )
            )
            continue
        if not in_store:
            report.findings.append(
                Finding(
                    "checkpoint",
                    report.log,
                    f"the checkpoint of size {cp.size} ({_when(cp)}) is in the anchor directory but missing "
                    "from the store",
                )
            )
        valid.append(_Signed(cp, note, in_store, in_anchor))
    # A checkpoint names its predecessor (`prev`); a signer extends the newest it sees, so the
    # predecessor has no more leaves. Two checkpoints naming one predecessor are a fork: two
    # signers of one log at once (during a rebalance on a shared server, or `auditlog
    # checkpoint` beside a worker). A fork is no tampering (every root is checked against the
    # leaves below, so both branches are prefixes of one tree); a predecessor that is neither
    # in the store nor in the anchor directory is: a checkpoint removed or replaced.
    valid.sort(key=lambda s: (s.checkpoint.size, s.checkpoint.time_ms))
    by_hash = {note_hash(s.note): s for s in valid}
    successors: dict[bytes | None, int] = {}
    for signed in valid:
        cp = signed.checkpoint
        successors[cp.prev] = successors.get(cp.prev, 0) + 1
        if cp.prev is None:
            continue
        parent = by_hash.get(cp.prev)
        if parent is None:
            report.findings.append(
                Finding(
                    "checkpoint",
                    report.log,
                    f"the checkpoint of size {cp.size} ({_when(cp)}) chains to a checkpoint that is "
                    "neither in the store nor in the anchor directory: one was removed or replaced",
                )
            )
        elif parent.checkpoint.size > cp.size:
            report.findings.append(
                Finding(
                    "checkpoint",
                    report.log,
                    f"the checkpoint of size {cp.size} ({_when(cp)}) chains to one of more leaves "
                    f"({parent.checkpoint.size})",
                )
            )
    report.forks = sum(n - 1 for n in successors.values() if n > 1)
    report.checkpoints = len(valid)
    return valid


def _when(cp: Checkpoint) -> str:
    return cp.text().split("\n")[3].removeprefix("time ")


def _tree(report: LogReport, tree: TreeStore, signed: list[_Signed]) -> None:
    """Leaves against the signed roots."""
    log = report.log
    by_size: dict[int, list[_Signed]] = {}
    for s in signed:
        by_size.setdefault(s.checkpoint.size, []).append(s)
    doubled = tree.duplicate_positions(log)
    for table, index, ids in doubled:
        report.findings.append(
            Finding(
                "doubled",
                log,
                f"position {index} is held by {len(ids)} {table}s, of events {', '.join(ids)}: "
                "one was inserted",
                index=index,
            )
        )
    report.doubled = {index for _, index, _ in doubled}
    hashes: list[bytes] = []
    for index, leaf in tree.leaves(log):
        if index == len(hashes) - 1 and index in report.doubled:
            continue  # a second leaf at one position, reported above; the tree takes the first
        if index != len(hashes):
            report.findings.append(
                Finding("gap", log, f"positions {len(hashes)} to {index - 1} have no leaf", index=len(hashes))
            )
            break
        hashes.append(leaf)
    expected = report.leaves = len(hashes)
    # Every signed root recomputed from the one sequence of leaves: the checkpoints that match
    # are prefixes of one another, which is their consistency.
    tree_levels = levels(hashes)
    good = 0
    bad: _Signed | None = None
    for size in sorted(by_size):
        if size > expected:
            break
        root = root_at(tree_levels, size) if size else Frontier().root()
        for s in by_size[size]:
            if s.checkpoint.root == root:
                good = size if bad is None else good
            elif bad is None:
                bad = s
    if bad is not None:
        _localize(report, tree, good, bad.checkpoint)
    newest = max((s.checkpoint for s in signed), key=lambda c: c.size, default=None)
    if newest is not None:
        report.newest_checkpoint = newest.size
        if newest.size > expected:
            report.findings.append(
                Finding(
                    "truncated",
                    log,
                    f"the checkpoint of {_when(newest)} signed {newest.size} leaves; the store has "
                    f"{expected}: positions {expected} to {newest.size - 1} ({newest.size - expected} "
                    "events) are missing",
                    index=expected,
                )
            )


def _localize(report: LogReport, tree: TreeStore, good: int, bad: Checkpoint) -> None:
    """Which leaves of (good, bad.size] changed: the pairs whose parent no longer matches the
    parent stored when the tree was extended. Without the original leaves one cannot tell
    which of two siblings changed, only the pair."""
    log = report.log
    leaves = dict(tree.leaves(log, good - good % 2, bad.size))
    pairs = [k for k in range(good // 2, bad.size // 2)]
    stored = tree.nodes(log, [(1, k) for k in pairs])
    suspects = []
    for k in pairs:
        left, right = leaves.get(2 * k), leaves.get(2 * k + 1)
        if left is None or right is None:
            continue
        if (1, k) in stored and stored[(1, k)] != node_hash(left, right):
            suspects.append(k)
    if bad.size % 2 and bad.size - 1 >= good:
        suspects_odd = f"; position {bad.size - 1} cannot be checked against a stored pair"
    else:
        suspects_odd = ""
    where = (
        ", ".join(f"{2 * k} or {2 * k + 1}" for k in suspects[:20])
        if suspects
        else f"somewhere in positions {good} to {bad.size - 1}"
    )
    report.findings.append(
        Finding(
            "root",
            log,
            f"the leaves do not hash to the root signed for {bad.size} leaves ({_when(bad)}); the last "
            f"signed tree that still matches has {good}: a leaf was altered at position "
            f"{where}{suspects_odd}",
            index=2 * suspects[0] if suspects else good,
        )
    )


def _rows(
    report: LogReport,
    checks: list[RowCheck],
    *,
    since_ms: int | None,
    until_ms: int | None,
    expired_before_ms: int | None,
    tombstones_of: Callable[[str], dict[int, Tombstone]],
) -> None:
    log = report.log
    tombstones: dict[int, Tombstone] | None = None
    if since_ms is not None or until_ms is not None:
        report.rows_checked = f"occurred_at in [{since_ms}, {until_ms}) ms"
    leaf_of = {c.leaf_event_id: c.index for c in checks if c.leaf_event_id is not None}
    row_of = {c.row_event_id: c.index for c in checks if c.row_event_id is not None}
    for c in checks:
        if c.index in report.doubled:
            continue
        if c.row_event_id is not None and c.leaf_event_id is not None and c.row_event_id == c.leaf_event_id:
            report.findings.append(
                Finding(
                    "altered",
                    log,
                    f"the row of event {c.row_event_id} at position {c.index} does not hash to its leaf",
                    index=c.index,
                    event_id=c.row_event_id,
                )
            )
            continue
        if c.row_event_id is not None:
            moved_from = leaf_of.get(c.row_event_id)
            if moved_from is not None and moved_from != c.index:
                report.findings.append(
                    Finding(
                        "reordered",
                        log,
                        f"event {c.row_event_id} is stored at position {c.index}; "
                        f"its leaf is at {moved_from}",
                        index=c.index,
                        event_id=c.row_event_id,
                    )
                )
            else:
                report.findings.append(
                    Finding(
                        "inserted",
                        log,
                        f"event {c.row_event_id} is stored at position {c.index}, which is no leaf of it",
                        index=c.index,
                        event_id=c.row_event_id,
                    )
                )
        if c.leaf_event_id is not None and c.leaf_event_id not in row_of:
            if expired_before_ms is not None and _expired(log, c, expired_before_ms):
                report.expired += 1
                continue
            if tombstones is None:
                tombstones = tombstones_of(log)
            stone = tombstones.get(c.index)
            why = _not_purged(log, c, stone) if stone is not None else ""
            if stone is not None and not why:
                report.expired += 1
                continue
            report.findings.append(
                Finding(
                    "deleted",
                    log,
                    f"the row of event {c.leaf_event_id} (leaf {c.index}) is missing{why}",
                    index=c.index,
                    event_id=c.leaf_event_id,
                )
            )


def _not_purged(log: str, c: RowCheck, stone: Tombstone) -> str:
    """Why a tombstone does not account for a missing row ('' when it does): a purge removes
    only what its rule had expired, and every purge is an `audit_log.purge` event of the log."""
    if stone.event_id != c.leaf_event_id:
        return f"; its position's tombstone names another event ({stone.event_id})"
    if not stone.recorded:
        return f"; its tombstone names purge {stone.purge_id}, which is no audit_log.purge event of the log"
    if not _expired(log, c, stone.cutoff_ms):
        return f"; purge {stone.purge_id} ({stone.rule}) expired only events older than its cutoff"
    return ""


def _expired(log: str, c: RowCheck, horizon_ms: int) -> bool:
    """The leaf's own record says its event is older than the horizon, and that record is the
    one its hash covers (the tree check vouches for the hash): a row removed by retention."""
    if c.leaf_occurred_ms is None or c.leaf_body is None or c.leaf_hash is None:
        return False
    data = leaf_data_of(log, c.index, c.leaf_occurred_ms, c.leaf_body.hex())
    return c.leaf_occurred_ms < horizon_ms and leaf_hash(data) == c.leaf_hash


def _signed_tree(
    tree: TreeStore, log: str, *, verifiers: list[Verifier], origin: str, anchor_dir: Path | None
) -> LogReport:
    report = LogReport(log)
    # The anchor first: a checkpoint is written to the store before its file, so one made
    # while this runs is in both or in the store only, never in the anchor alone.
    anchored = anchor_notes(anchor_dir, log)
    signed = _checkpoints(
        report, [c.note for c in tree.checkpoints(log)], anchored, verifiers, f"{origin}/{log}"
    )
    _tree(report, tree, signed)
    return report


def verify_log(
    tree: TreeStore,
    log: str,
    *,
    verifiers: list[Verifier],
    origin: str,
    anchor_dir: Path | None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    expired_before_ms: int | None = None,
) -> LogReport:
    [report] = verify_store(
        tree,
        verifiers=verifiers,
        origin=origin,
        anchor_dir=anchor_dir,
        logs=[log],
        since_ms=since_ms,
        until_ms=until_ms,
        expired_before_ms=expired_before_ms,
    )
    return report


def verify_store(
    tree: TreeStore,
    *,
    verifiers: list[Verifier],
    origin: str,
    anchor_dir: Path | None,
    logs: Iterable[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    expired_before_ms: int | None = None,
) -> list[LogReport]:
    names = sorted(set(logs) if logs is not None else set(tree.logs()) | set(anchored_logs(anchor_dir)))
    # The store hashes every row (one scan, in its own threads) while this thread rebuilds the
    # trees from their leaves and checks them against the signed roots.
    with ThreadPoolExecutor(max_workers=1) as pool:
        rows = pool.submit(tree.row_mismatches, names, since_ms=since_ms, until_ms=until_ms)
        reports = [
            _signed_tree(tree, name, verifiers=verifiers, origin=origin, anchor_dir=anchor_dir)
            for name in names
        ]
        checks = rows.result()
    for report in reports:
        _rows(
            report,
            checks.get(report.log, []),
            since_ms=since_ms,
            until_ms=until_ms,
            expired_before_ms=expired_before_ms,
            tombstones_of=tree.tombstones,
        )
        report.findings.sort(key=lambda f: (f.index if f.index is not None else -1, f.kind))
    if logs is None:
        reports.append(outside_tree(tree))
    return reports


def outside_tree(tree: TreeStore) -> LogReport:
    """Rows in no log. Those stored before the tree (migration 9) are counted; one received
    since was put there by something other than the writer: inserted."""
    report = LogReport("")
    before, inserted = tree.rows_outside_tree()
    report.rows_checked = f"{before} rows stored before the tree existed"
    for event_id in inserted:
        report.findings.append(
            Finding(
                "inserted",
                "",
                f"event {event_id} is stored in no log: the store held {before} such rows when the tree "
                "began, and no writer stores one since",
                event_id=event_id,
            )
        )
    return report
