"""Step 3: insert the batch's rows into the store, once forever per event id.

The writer counts replays as duplicates and refuses other content under a stored id
as a conflict; a conflicting row leaves the batch here, as an `InvalidMessage` with
both content hashes, so it reaches the dead letters and never the SIEM stream as if
it were on record. Whatever the attempt, the same rows conflict: a retry of a later
step sees the same batch.

Each event for the SIEM stream learns its row's place in the Merkle tree (`position`:
log and leaf index, the stored copy's for a duplicate), so a SIEM can check it against
the published checkpoints and see a gap.
"""

from __future__ import annotations

from producers.contract.event import FieldError
from storage.writer import EventWriter
from stream.messages import Batch, InvalidMessage, one_line, payload_json
from stream.steps import Step
from stream.steps.retry import Retrying


class Insert:
    def __init__(self, writer: EventWriter, retry: Retrying, next_step: Step) -> None:
        self._writer = writer
        self._retry = retry
        self._next = next_step

    def submit(self, batch: Batch) -> None:
        rows = batch.rows
        result = self._retry("insert", lambda: self._writer.write(rows))
        batch.inserted, batch.duplicates, batch.conflicts = (
            result.inserted,
            result.duplicates,
            len(result.conflicts),
        )
        if result.conflicts:
            # By identity: a batch may hold one id twice, the first copy stored, the second not.
            _settle_conflicts(batch, {id(c.row): c.reason for c in result.conflicts})
        for row, event in zip(batch.rows, batch.events, strict=False):
            event["position"] = {"log": row["log"], "index": row["leaf_index"]} if row.get("log") else None
        self._next.submit(batch)


def _settle_conflicts(batch: Batch, reasons: dict[int, str]) -> None:
    keep = [i for i, row in enumerate(batch.rows) if id(row) not in reasons]
    for i, row in enumerate(batch.rows):
        reason = reasons.get(id(row))
        if reason is None:
            continue
        origin = batch.origins[i]
        batch.rejects.append(
            InvalidMessage(
                reason=one_line(reason),
                code="conflict",
                payload=payload_json(origin.item),
                lineage=origin.lineage,
                index=origin.index,
                infrastructure=row["infrastructure"],
                event_id=row["event_id"],
                errors=(FieldError(field="event_id", problem="is already stored with other content"),),
            )
        )
    batch.rows = [batch.rows[i] for i in keep]
    batch.origins = [batch.origins[i] for i in keep]
    if batch.events:
        batch.events = [batch.events[i] for i in keep]
