"""Step 4: the normalized, enriched events to `audit.events.v1`, for SIEMs.

At-least-once: after a crash between this step and the commit, a SIEM may see an
event twice with the same `event_id` (its idempotency key, also the header
`x-event-id`). Every accepted event of a batch is produced, the store's duplicates
included: skipping them would lose the output of a batch whose insert succeeded
but whose produce did not. Conflicts left the batch at the insert step.
"""

from __future__ import annotations

from typing import Any

import orjson

from stream.messages import Batch
from stream.ocsf import to_ocsf
from stream.steps import Step
from stream.steps.delivery import Delivery, KafkaHeaders, Record
from stream.steps.retry import Retrying


def _event_key(event: dict[str, Any]) -> bytes:
    # Keyed by entity as the SDK keys audit.raw: one entity's events stay ordered on the output too.
    target = event["target"]
    return f"{event['infrastructure']}/{target['kind']}/{target['id']}".encode()


def event_records(events: list[dict[str, Any]], *, topic: str, ocsf: bool) -> list[Record]:
    fmt = b"ocsf" if ocsf else b"auditlog"
    records = []
    for event in events:
        body = to_ocsf(event) if ocsf else event
        headers: KafkaHeaders = [
            ("content-type", b"application/json"),
            ("x-format", fmt),
            ("x-event-id", str(event["event_id"]).encode()),
        ]
        position = event.get("position")
        if position:
            headers += [("x-log", position["log"].encode()), ("x-log-index", str(position["index"]).encode())]
        records.append(Record(topic, orjson.dumps(body), _event_key(event), headers))
    return records


class Publish:
    def __init__(
        self, delivery: Delivery, retry: Retrying, next_step: Step, *, topic: str, ocsf: bool = False
    ) -> None:
        self._delivery = delivery
        self._retry = retry
        self._next = next_step
        self._topic = topic
        self._ocsf = ocsf

    def submit(self, batch: Batch) -> None:
        def records() -> list[Record]:
            return event_records(batch.events, topic=self._topic, ocsf=self._ocsf)

        batch.produced += self._retry("publish", lambda: self._delivery.deliver(batch, records))
        self._next.submit(batch)
