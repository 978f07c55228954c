"""`auditlog verify-export`: an NDJSON export with proofs, verified offline, without the store.

The file (GET /v1/events/export?format=ndjson&proofs=true) holds checkpoint lines
`{"checkpoint": {"log", "note"}}`, each before the first row it proves, and event
lines, each with its `proof`. A checkpoint must be signed by one of the trusted
verifier keys and be of the origin `<origin>/<log>`, where `<origin>` is the one
given or else the name of the key that signed it (the installation's
`AUDITLOG_CHECKPOINT_ORIGIN` names both): a checkpoint of another installation's
log, signed by a key trusted for both, proves nothing here. For every event: the
signed checkpoint it names is opened; the proof's `changes` and `details` texts
parse to the event's own; the leaf is rebuilt from the event as shown
(`producers.contract.tlog.leaf.values_from_event`) and the audit path must lead
from it to the signed root. Anything else is a problem, named by line and event.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from producers.contract.tlog.checkpoint import open_signed_checkpoint
from producers.contract.tlog.leaf import proof_holds
from producers.contract.tlog.note import NoteError, Verifier


@dataclass
class ExportCheck:
    rows: int = 0
    verified: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "verified": self.verified,
            "checkpoints": self.checkpoints,
            "ok": not self.problems,
            "problems": self.problems,
        }


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _row_problem(event: dict[str, Any], roots: dict[tuple[str, int], bytes]) -> str | None:
    proof = event.get("proof")
    if not isinstance(proof, dict):
        return "carries no proof (stored before the tree, or not yet under a signed checkpoint)"
    log, index, size = proof["log"], int(proof["index"]), int(proof["tree_size"])
    if str(proof["event_id"]) != str(event["event_id"]):
        return f"its proof is for another event ({proof['event_id']})"
    if event.get("position") != {"log": log, "index": index}:
        return f"its position {event.get('position')} is not the one proved ({log}, {index})"
    root = roots.get((log, size))
    if root is None:
        return f"no signed checkpoint of log {log} with {size} leaves precedes it"
    if (
        orjson.loads(proof["changes"]) != event["changes"]
        or orjson.loads(proof["details"]) != event["details"]
    ):
        return "its changes or details differ from the texts its leaf hashes"
    if not proof_holds(event, proof, root):
        return f"it does not hash to leaf {index} of the signed tree of {size} leaves: altered"
    return None


def verify_export(data: bytes, verifiers: list[Verifier], *, origin: str | None = None) -> ExportCheck:
    check = ExportCheck()
    roots: dict[tuple[str, int], bytes] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            check.problems.append(f"line {number}: not JSON ({exc})")
            continue
        if "checkpoint" in item:
            try:
                log, note = item["checkpoint"]["log"], item["checkpoint"]["note"]
                cp, signer = open_signed_checkpoint(note, verifiers)
            except (NoteError, KeyError, TypeError) as exc:
                check.problems.append(f"line {number}: a checkpoint that does not verify: {exc}")
                continue
            expected = f"{origin or signer.name}/{log}"
            if cp.origin != expected:
                check.problems.append(
                    f"line {number}: a checkpoint of origin {cp.origin!r}, expected {expected!r}"
                )
                continue
            roots[(log, cp.size)] = cp.root
            check.checkpoints += 1
            continue
        check.rows += 1
        try:
            problem = _row_problem(item, roots)
        except (KeyError, TypeError, ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            problem = f"a malformed row or proof ({type(exc).__name__}: {exc})"
        if problem is None:
            check.verified += 1
        else:
            check.problems.append(f"line {number}, event {item.get('event_id')}: {problem}")
    return check
