"""Signed checkpoints of every log: extend the tree, sign its new head, anchor it.

One run for a log reads the leaves stored since its last checkpoint, extends the
tree from the compact range of that checkpoint (its perfect subtrees, read back
from the store), keeps every perfect subtree it completes, and signs a C2SP
checkpoint chained to the previous one. The checkpoint goes to the store, to a
file under the checkpoint directory (`<dir>/logs/<log>/checkpoint`, and every one
kept as `<dir>/logs/<log>/<size>-<time>.checkpoint`: an anchor outside the store)
and to whatever `publish` sends it to (the worker: `audit.checkpoints.v1`).

Nodes are stored before the checkpoint that covers them: a crash in between leaves
nodes the next run computes again, identically. Runs of one log are serialized
per process; a log is checkpointed by the process that writes it (its partition's
owner, or the embedded store's process). Two processes can still sign one log at
once (a partition's old and new owner during a rebalance on a shared server): both
extend the newest checkpoint they read, and the chain forks. Nothing arbitrates
that, because nothing needs to: both roots are of one tree's prefixes, `auditlog
verify` checks each against the leaves and counts the fork, and the next
checkpoint extends the larger branch (tests/test_tlog.py makes one in process).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.contract.tlog import merkle
from producers.contract.tlog.checkpoint import Checkpoint, note_hash
from producers.contract.tlog.merkle import Frontier, fold
from producers.contract.tlog.note import Signer
from storage.store import Store, StoreSettings
from storage.tree import BLOCK_LEVEL, StoredCheckpoint, TreeStore
from storage.writer import LOCAL_LOG
from stream import signing_key

log = logging.getLogger("auditlog.checkpoints")

# A million leaves a statement: the first checkpoint of a large store's log holds its blocks'
# leaves in memory a million at a time (40 MB), not all at once.
BLOCKS_A_STATEMENT = 4096


class CheckpointSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITLOG_CHECKPOINT_", extra="ignore")

    enabled: bool = True
    origin: str = Field(
        default="auditlog",
        description="the key name, and the prefix of every log's origin (<origin>/<log>)",
        pattern=r"^[^\s+]+$",
    )
    dir: Path | None = Field(
        default=None,
        description="anchor files and published verifier keys (default: <chDB folder>-tlog beside the "
        "store, or ./auditlog-tlog for a server)",
    )
    key_file: Path | None = Field(
        default=None, description="the Ed25519 signing key (default <dir>/signing.key)"
    )
    interval_s: float = Field(default=60.0, gt=0, description="at least this often while events arrive")
    topic: str = "audit.checkpoints.v1"

    def beside(self, store: StoreSettings) -> CheckpointSettings:
        """These settings with the default directory of `store` filled in."""
        if self.dir is not None:
            return self
        folder = (
            store.path.parent / f"{store.path.name}-tlog" if store.engine == "chdb" else Path("auditlog-tlog")
        )
        return self.model_copy(update={"dir": folder})

    @property
    def anchor_dir(self) -> Path:
        return self.dir if self.dir is not None else Path("auditlog-tlog")

    @property
    def signing_key_file(self) -> Path:
        return self.key_file or self.anchor_dir / "signing.key"

    def signer(self) -> Signer:
        return signing_key.load_or_create(
            self.signing_key_file, name=self.origin, publish_dir=self.anchor_dir
        )


@dataclass(frozen=True)
class Made:
    """A checkpoint just made: what `publish` receives."""

    log: str
    origin: str
    checkpoint: Checkpoint
    note: str
    verifier_key: str


def anchor_folder(anchor_dir: Path, log_name: str) -> Path:
    """Where a log's checkpoint files are kept: `<dir>/logs/<log>` (a partition's log is a
    folder per topic), never outside `<dir>/logs`."""
    parts = [p for p in log_name.split("/") if p not in ("", ".", "..")]
    return anchor_dir / "logs" / (Path(*parts) if parts else Path("_"))


class Checkpointer:
    def __init__(
        self,
        tree: TreeStore,
        signer: Signer,
        *,
        origin: str,
        anchor_dir: Path | None,
        publish: Callable[[Made], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tree = tree
        self._signer = signer
        self._origin = origin
        self._anchor = anchor_dir
        self._publish = publish
        self._clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def from_settings(
        cls, tree: TreeStore, settings: CheckpointSettings, publish: Callable[[Made], None] | None = None
    ) -> Checkpointer:
        return cls(
            tree, settings.signer(), origin=settings.origin, anchor_dir=settings.anchor_dir, publish=publish
        )

    def _lock(self, log_name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(log_name, threading.Lock())

    def origin_of(self, log_name: str) -> str:
        return f"{self._origin}/{log_name}"

    def run(self, logs: Iterable[str] | None = None, *, force: bool = False) -> list[Made]:
        """A checkpoint of each log that grew since its last one (every log when `force`)."""
        made = []
        for log_name in sorted(set(logs) if logs is not None else self._tree.logs()):
            one = self.checkpoint(log_name, force=force)
            if one is not None:
                made.append(one)
        return made

    def checkpoint(self, log_name: str, *, force: bool = False) -> Made | None:
        with self._lock(log_name):
            last = self._tree.latest_checkpoint(log_name)
            start = last.size if last else 0
            end, after = self._tree.leaf_run(log_name, start)
            if after is not None:
                # A crash committed part of an insert: the writer gives these positions to
                # the events that come again, and signing resumes past them then.
                log.error(
                    "log %s: positions %d to %d have no leaf yet; checkpoints stop before them",
                    log_name, end, after - 1,
                )  # fmt: skip
            if end == start and not force and last is not None:
                return None
            if end == 0 and last is None and not force:
                return None
            root = self._extend(log_name, last, end)
            checkpoint = Checkpoint(
                origin=self.origin_of(log_name),
                size=end,
                root=root,
                time_ms=int(self._clock() * 1000),
                prev=note_hash(last.note) if last else None,
            )
            note = self._signer.sign(checkpoint.text())
            verifier = self._signer.verifier
            self._tree.save_checkpoint(
                StoredCheckpoint(
                    log=log_name,
                    size=checkpoint.size,
                    root=checkpoint.root,
                    created_ms=checkpoint.time_ms,
                    key_id=verifier.key_id,
                    verifier_key=str(verifier),
                    note=note,
                )
            )
            made = Made(log_name, checkpoint.origin, checkpoint, note, str(verifier))
            self._anchor_file(made)
            if self._publish is not None:
                self._publish(made)
            log.info("checkpoint %s: %d leaves", checkpoint.origin, checkpoint.size)
            return made

    def _extend(self, log_name: str, last: StoredCheckpoint | None, end: int) -> bytes:
        """Keep the perfect subtrees the leaves [start, end) complete (`start`: the size `last`
        signed), and return the root of the tree of `end` leaves.

        The whole blocks of 256 leaves are hashed by the store (`TreeStore.hash_blocks`, in
        ClickHouse, which keeps their levels 1 and 8); the tree above their roots here, one
        node per 256 leaves, from the subtrees of level 8 and up of the last checkpoint's
        compact range; and the block not yet whole (at most 255 leaves) here too. Only subtrees that end
        past `start` are stored: those before it were stored by an earlier checkpoint.

        Before anything is signed, the tree below `start` must still be the one `last` signed:
        its stored compact range hashes to `last`'s root, and the leaves of its partial block
        to that range's low subtrees; otherwise nothing is extended (a fork signed by this
        process would hide what changed)."""
        start = last.size if last else 0
        coords = Frontier.coords(start)
        stored = self._tree.nodes(log_name, coords)
        missing = [c for c in coords if c not in stored]
        if missing:
            raise RuntimeError(
                f"log {log_name}: the tree of its last checkpoint ({start} leaves) lacks the subtrees "
                f"{missing[:4]}: run `auditlog verify --log {log_name}`"
            )
        changed = last is not None and fold([stored[c] for c in coords]) != last.root
        start_base = (start >> BLOCK_LEVEL) << BLOCK_LEVEL
        below: list[bytes] = []
        if not changed:
            below = self._block_leaves(log_name, start_base, start)
            rebuilt = merkle.levels(below) if below else []
            offset = start >> BLOCK_LEVEL
            changed = any(
                rebuilt[level][idx - (offset << (BLOCK_LEVEL - level))] != stored[(level, idx)]
                for level, idx in coords
                if level < BLOCK_LEVEL
            )
        if changed:
            raise RuntimeError(
                f"log {log_name}: the stored tree no longer matches its last checkpoint ({start} leaves): "
                f"run `auditlog verify --log {log_name}`"
            )
        high_coords = [c for c in coords if c[0] >= BLOCK_LEVEL]
        high = Frontier(start >> BLOCK_LEVEL, [stored[c] for c in high_coords])
        above: list[tuple[int, int, bytes]] = []
        for first in range(start >> BLOCK_LEVEL, end >> BLOCK_LEVEL, BLOCKS_A_STATEMENT):
            stop = min(end >> BLOCK_LEVEL, first + BLOCKS_A_STATEMENT)
            high.extend(self._tree.hash_blocks(log_name, first, stop, after=start), above)
        base = (end >> BLOCK_LEVEL) << BLOCK_LEVEL
        # The partial block's leaves below `start` were just read when it is still the same block.
        tail = below + self._block_leaves(log_name, start, end) if base == start_base else []
        low = Frontier()
        completed: list[tuple[int, int, bytes]] = []
        low.extend(tail or self._block_leaves(log_name, base, end), completed)
        # Of the partial block, only the subtrees these leaves complete: a quiet log's block
        # fills over many checkpoints, and each would store the same subtrees again.
        self._tree.put_nodes(
            log_name,
            [(level + BLOCK_LEVEL, idx, h) for level, idx, h in above]
            + [
                (level, (base >> level) + idx, h)
                for level, idx, h in completed
                if ((base >> level) + idx + 1) << level > start
            ],
        )
        return fold([*high.hashes, *low.hashes])

    def _block_leaves(self, log_name: str, first: int, stop: int) -> list[bytes]:
        """The leaves [first, stop) of one block, every position held: of two leaves at one
        position (evidence `auditlog verify` reports) the smaller hash, as the store's block
        hashing takes it, so that every checkpoint extends one and the same tree."""
        found: dict[int, bytes] = {}
        for index, leaf in self._tree.leaves(log_name, first, stop):
            found[index] = min(found.get(index, leaf), leaf)
        if len(found) != stop - first:
            raise RuntimeError(
                f"log {log_name}: positions of [{first}, {stop}) lack a leaf: "
                f"run `auditlog verify --log {log_name}`"
            )
        return [found[i] for i in range(first, stop)]

    def _anchor_file(self, made: Made) -> None:
        if self._anchor is None:
            return
        folder = anchor_folder(self._anchor, made.log)
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / f"{made.checkpoint.size:012d}-{made.checkpoint.time_ms}.checkpoint"
        for path in (kept, folder / "checkpoint"):
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w") as f:
                f.write(made.note)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)


class Ticker:
    """Runs the checkpointer every `interval_s` in a thread of its own (the embedded store's
    process); a failed run is logged and tried again at the next tick."""

    def __init__(
        self, checkpointer: Checkpointer, *, interval_s: float, logs: Iterable[str] | None = None
    ) -> None:
        self._checkpointer = checkpointer
        self._interval = interval_s
        self._logs = list(logs) if logs is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="auditlog-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._checkpointer.run(self._logs)
            except Exception:
                log.exception("checkpoint run failed; retried in %.0f s", self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            self._checkpointer.run(self._logs)
        except Exception:
            log.exception("the last checkpoint run failed")


def start_checkpoints(store: Store, store_settings: StoreSettings) -> Ticker | None:
    """Sign the log this process writes (`local`: HTTP, files, the record of reads) now and then
    every interval, until the returned ticker is stopped; a last checkpoint is made at the stop.
    The logs of Kafka partitions are their workers' to sign."""
    settings = CheckpointSettings().beside(store_settings)
    if not settings.enabled:
        return None
    checkpointer = Checkpointer.from_settings(store.tree, settings)
    checkpointer.run([LOCAL_LOG])
    ticker = Ticker(checkpointer, interval_s=settings.interval_s, logs=[LOCAL_LOG])
    ticker.start()
    return ticker
