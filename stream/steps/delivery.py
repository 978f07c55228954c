"""Producing one batch's records to Kafka and waiting for every acknowledgement.

Shared by the publish and dead-letter steps. `deliver` returns only once the broker
acknowledged every record (idempotent producer, acks=all); otherwise it raises
`SinkError` and the step retries it. A retry re-sends only the records that failed:
records still queued in the producer from an attempt that timed out (a broker
restarting) are waited for, not sent again, which would duplicate them on the output
topic and could put an entity's events out of order there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.steps.retry import SinkError

KafkaHeaders = list[tuple[str, str | bytes | None]]

# A DLQ record larger than the topic accepts is kept in the store whole and on
# Kafka cut to this size, flagged with `x-payload-truncated`.
TRUNCATED_PAYLOAD_BYTES: Final = 1024 * 1024


@dataclass(slots=True)
class Record:
    topic: str
    value: bytes
    key: bytes | None
    headers: KafkaHeaders
    cuttable: bool = False
    """A dead letter: too large for the topic, it is cut to size (the store keeps it whole)."""
    truncated: bool = False

    def cut(self) -> None:
        if not self.cuttable or self.truncated:
            return
        size = str(len(self.value)).encode()
        self.value = self.value[:TRUNCATED_PAYLOAD_BYTES]
        self.headers = [*self.headers, ("x-payload-truncated", size)]
        self.truncated = True


class _Deliveries:
    """Where one batch's records stand, across attempts."""

    def __init__(self, batch: object, records: list[Record]) -> None:
        self.batch = batch
        self.records = records
        self.acked: set[int] = set()
        self.inflight: set[int] = set()
        self.errors: dict[int, str] = {}
        self.too_large: set[int] = set()
        self.lock = threading.Lock()

    def callback(self, tag: int) -> Callable[[KafkaError | None, Message], None]:
        # Runs on the thread that polls or flushes the producer.
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with self.lock:
                self.inflight.discard(tag)
                if err is None:
                    self.acked.add(tag)
                elif err.code() == KafkaError.MSG_SIZE_TOO_LARGE and self.records[tag].cuttable:
                    self.too_large.add(tag)
                else:
                    self.errors[tag] = f"{msg.topic()}: {err}"

        return on_delivery

    def unsent(self) -> list[int]:
        with self.lock:
            return [t for t in range(len(self.records)) if t not in self.acked and t not in self.inflight]

    @property
    def done(self) -> bool:
        with self.lock:
            return len(self.acked) == len(self.records)


class Delivery:
    """One producer's deliveries, one batch at a time."""

    def __init__(self, producer: Producer, *, flush_timeout_s: float) -> None:
        self._producer = producer
        self._flush_timeout_s = flush_timeout_s
        self._state: _Deliveries | None = None

    def deliver(self, batch: object, records: Callable[[], list[Record]]) -> int:
        """Produce `records()` of `batch` (built once per batch) and wait for their acks."""
        state = self._state
        if state is None or state.batch is not batch:
            state = self._state = _Deliveries(batch, records())
        for _ in range(2):  # the second round only for dead letters cut to size
            for tag in state.unsent():
                state.errors.pop(tag, None)
                self._send(state, tag)
            remaining = self._producer.flush(self._flush_timeout_s)
            if not state.too_large:
                break
            for tag in sorted(state.too_large):
                state.records[tag].cut()
            state.too_large.clear()
        if state.errors:
            sample = "; ".join(list(state.errors.values())[:3])
            raise SinkError(f"{len(state.errors)} records failed delivery, e.g. {sample}")
        if remaining or not state.done:
            raise SinkError(
                f"{len(state.records) - len(state.acked)} records not acknowledged by Kafka "
                f"after {self._flush_timeout_s:.0f}s"
            )
        self._state = None
        return len(state.records)

    def _send(self, state: _Deliveries, tag: int) -> None:
        record = state.records[tag]
        while True:
            state.inflight.add(tag)
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=state.callback(tag),
                )
                return
            except BufferError:
                # Local queue full: let deliveries drain, then try again.
                state.inflight.discard(tag)
                self._producer.poll(0.05)
            except KafkaException as exc:
                state.inflight.discard(tag)
                code = exc.args[0].code() if exc.args else None
                if code == KafkaError.MSG_SIZE_TOO_LARGE and record.cuttable:
                    if record.truncated:
                        raise SinkError(f"cannot produce to {record.topic} even cut to size: {exc}") from None
                    record.cut()
                    continue
                raise SinkError(f"cannot produce to {record.topic}: {exc}") from None

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)
