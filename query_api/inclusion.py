"""Inclusion proofs of stored rows against their logs' newest signed checkpoints."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from producers.contract.tlog import merkle
from storage.tree import StoredCheckpoint, TreeStore


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def covering(checkpoints: Sequence[StoredCheckpoint], index: int) -> StoredCheckpoint | None:
    """The newest checkpoint of a log whose tree holds leaf `index`."""
    fit = [c for c in checkpoints if c.size > index]
    return max(fit, key=lambda c: (c.size, c.created_ms)) if fit else None


def inclusion(tree: TreeStore, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The proof of each row against its log's newest checkpoint (None: no checkpoint covers it
    yet, or the row is older than the tree). One node lookup per log for all the rows."""
    out: list[dict[str, Any] | None] = [None] * len(rows)
    by_log: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("log"):
            by_log.setdefault(row["log"], []).append(i)
    for log, members in by_log.items():
        newest = tree.latest_checkpoint(log, max_age_s=1.0)
        if newest is None:
            continue
        wanted = [i for i in members if int(rows[i]["leaf_index"]) < newest.size]
        ranges = {i: merkle.inclusion_ranges(int(rows[i]["leaf_index"]), newest.size) for i in wanted}
        nodes = tree.proof_nodes(log, merkle.coords_for(r for rs in ranges.values() for r in rs))
        for i in wanted:
            row = rows[i]
            out[i] = {
                "event_id": str(row["event_id"]),
                "log": log,
                "index": int(row["leaf_index"]),
                "tree_size": newest.size,
                "sealed": row["leaf_sealed"],
                "changes": row["changes"],
                "details": row["details"],
                "audit_path": [b64(h) for h in merkle.hashes_for(ranges[i], nodes)],
                "checkpoint": newest.note,
            }
    return out
