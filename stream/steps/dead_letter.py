"""Step 5: every refusal of the batch kept, with its reason: on `audit.dlq` (when the
chain has a Kafka output) and in the store's `dead_letters` table.

The topic first, then the table: the table keeps a Kafka message's letters once
however often the message comes back, the topic is at-least-once (a redelivered
message's letters carry the same `x-source-*` coordinates, by which a consumer can
drop the repeat).
"""

from __future__ import annotations

from storage.writer import EventWriter
from stream.messages import Batch, InvalidMessage
from stream.steps import Step
from stream.steps.delivery import Delivery, KafkaHeaders, Record
from stream.steps.retry import Retrying


def dlq_headers(invalid: InvalidMessage) -> KafkaHeaders:
    lineage = invalid.lineage
    headers: KafkaHeaders = [
        ("x-reason", invalid.reason.encode()),
        ("x-reason-code", invalid.code.encode()),
        ("x-source-topic", lineage.topic.encode()),
        ("x-source-partition", str(lineage.partition).encode()),
        ("x-source-offset", str(lineage.offset).encode()),
        ("x-source-timestamp", str(lineage.received_at_ms).encode()),
    ]
    if invalid.index is not None:
        headers.append(("x-envelope-index", str(invalid.index).encode()))
    return headers


class DeadLetter:
    def __init__(
        self,
        writer: EventWriter,
        retry: Retrying,
        next_step: Step,
        *,
        delivery: Delivery | None = None,
        topic: str = "",
    ) -> None:
        self._writer = writer
        self._retry = retry
        self._next = next_step
        self._delivery = delivery
        self._topic = topic

    def submit(self, batch: Batch) -> None:
        rejects = batch.rejects
        if rejects and self._delivery is not None:
            delivery, topic = self._delivery, self._topic

            def records() -> list[Record]:
                return [
                    Record(topic, r.payload, r.lineage.key, dlq_headers(r), cuttable=True) for r in rejects
                ]

            batch.produced += self._retry("dead-letter produce", lambda: delivery.deliver(batch, records))
        if rejects:
            letters = [r.dead_letter() for r in rejects]
            self._retry("dead-letter store", lambda: self._writer.write_dead_letters(letters))
        self._next.submit(batch)
