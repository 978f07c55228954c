"""The event page's tamper-evidence panel: where the row sits in its log, and whether it
still hashes to the leaf that the newest signed checkpoint covers.

The page checks the row as stored now against the signed root, with the same
algorithm as `auditlog verify-export` (docs/tamper-evidence.md), so an altered row
says so where it is read. That check runs on the server being checked, against the
checkpoint the store holds, and does not open its signature (the API need not hold the
verifier keys, and a store one can write could hold a forged key beside a forged
note); the evidence an auditor keeps is the proof itself (linked, JSON), verified
offline against the published key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from producers.contract.tlog.checkpoint import Checkpoint
from producers.contract.tlog.leaf import proof_holds
from producers.contract.tlog.note import split_note
from query_api.inclusion import inclusion
from storage.tree import TreeStore


def proof_panel(tree: TreeStore, row: dict[str, Any], event: dict[str, Any], href: str) -> dict[str, Any]:
    """`state`: `no-leaf` (stored before the tree), `pending` (no signed checkpoint covers it
    yet), `proven` or `altered`; with the position, and the checkpoint when there is one."""
    if not row.get("log"):
        return {"state": "no-leaf"}
    log, index = str(row["log"]), int(row["leaf_index"])
    panel: dict[str, Any] = {"state": "pending", "log": log, "index": index, "href": href}
    proof = inclusion(tree, [row])[0]
    if proof is None:
        return panel
    text, signatures = split_note(proof["checkpoint"])
    checkpoint = Checkpoint.parse(text)
    signed = datetime.fromtimestamp(checkpoint.time_ms / 1000, tz=UTC)
    holds = checkpoint.size == proof["tree_size"] and proof_holds(event, proof, checkpoint.root)
    panel.update(
        state="proven" if holds else "altered",
        tree_size=checkpoint.size,
        origin=checkpoint.origin,
        signed_at=signed.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        signed_utc=signed.strftime("%Y-%m-%d %H:%M:%S UTC"),
        signers=[f"{name} ({blob[:4].hex()})" for name, blob in signatures],
        path_length=len(proof["audit_path"]),
    )
    return panel
