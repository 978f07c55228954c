"""Where one processed batch goes: the store, `audit.events.v1` and `audit.dlq`.

`Sink.write` returns only once every destination acknowledged the batch: the
store's insert (through `EventWriter`, which skips event ids it already holds),
and the Kafka producer's flush with no delivery error. The caller commits the
batch's offsets after that and never before (DESIGN 4.2), so a crash anywhere
in here means redelivery, never loss.

Redelivery is harmless for the store (dedupe by event_id). The Kafka outputs are
at-least-once: after a crash between produce and commit, a SIEM may see an event
twice with the same `event_id` (its idempotency key, also the message header
`x-event-id`). Every normalized event of a batch is produced, duplicates of the
store included: skipping them would lose the output of a batch whose insert
succeeded but whose produce did not.

Order inside `write`: rows, then Kafka (events and dead letters), then the
store's `dead_letters` table last, because that table has no dedupe: a retry
after a failed produce must not write the dead letters twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from storage.engine import Engine, Params, StoreError
from storage.store import Store
from storage.writer import EventWriter
from stream.batch import BatchOutcome, Rejected
from stream.ocsf import to_ocsf

log = logging.getLogger("auditlog.sink")

# A DLQ record larger than the topic accepts is kept in the store whole and on
# Kafka cut to this size, flagged with `x-payload-truncated`.
TRUNCATED_PAYLOAD_BYTES: Final = 1024 * 1024


KafkaHeaders = list[tuple[str, str | bytes | None]]


class SinkError(RuntimeError):
    """The batch did not reach every destination; retry it, do not commit it."""


@dataclass(frozen=True, slots=True)
class SinkResult:
    inserted: int
    duplicates: int
    dead_lettered: int
    produced: int


def producer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all: a retried send never duplicates or reorders within a partition."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "compression.type": "lz4",
        "batch.size": 1_000_000,
        # Room for a dead-lettered message as large as the broker accepted on audit.raw.
        "message.max.bytes": 32 * 1024 * 1024,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Give up on a send after this; the batch is then retried as a whole.
        "message.timeout.ms": 120_000,
        "log_level": 3,
        # librdkafka's own log lines (a broker down, ...) go through logging, not raw to stderr.
        "logger": logging.getLogger("auditlog.librdkafka"),
    }
    config.update(overrides)
    return config


def _event_key(event: dict[str, Any]) -> bytes:
    # Keyed by entity as the SDK keys audit.raw: one entity's events stay ordered on the output too.
    target = event["target"]
    return f"{event['infrastructure']}/{target['kind']}/{target['id']}".encode()


def dlq_headers(rejected: Rejected) -> KafkaHeaders:
    m = rejected.message
    headers: KafkaHeaders = [
        ("x-reason", rejected.reason.encode()),
        ("x-source-topic", m.topic.encode()),
        ("x-source-partition", str(m.partition).encode()),
        ("x-source-offset", str(m.offset).encode()),
        ("x-source-timestamp", str(m.timestamp_ms).encode()),
    ]
    if rejected.index is not None:
        headers.append(("x-envelope-index", str(rejected.index).encode()))
    return headers


class _Deliveries:
    """Delivery reports of one flush. Callbacks run on the thread that polls or flushes."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.too_large: list[int] = []
        self._lock = threading.Lock()

    def callback(self, tag: int | None) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                return
            with self._lock:
                if tag is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self.too_large.append(tag)
                else:
                    self.errors.append(f"{msg.topic()}: {err}")

        return on_delivery


class FaultyEngine:
    """Test-only fault-injection hook (setting `fault_insert_failures`).

    Wraps the store's engine so that, after `after` successful inserts into
    `audit_events`, the next `failures` inserts raise `StoreError`, as a lost
    ClickHouse connection or a rejected part would. With a small insert chunk
    size this fails a batch half way through: some chunks stored, the rest not.
    Never enabled unless the setting is given.
    """

    name = "faulty"

    def __init__(self, inner: Engine, *, failures: int, after: int = 0) -> None:
        self._inner = inner
        self._failures = failures
        self._after = after
        self.injected = 0

    def query(self, sql: str, *, params: Params | None = None) -> list[dict[str, Any]]:
        return self._inner.query(sql, params=params)

    def command(self, sql: str, *, params: Params | None = None) -> None:
        self._inner.command(sql, params=params)

    def insert_json(self, table: str, *, columns: Sequence[str], data: bytes) -> None:
        if table.endswith(".audit_events"):
            if self._after > 0:
                self._after -= 1
            elif self._failures > 0:
                self._failures -= 1
                self.injected += 1
                raise StoreError("injected fault: insert into audit_events refused (fault_insert_failures)")
        self._inner.insert_json(table, columns=columns, data=data)

    def stream(self, sql: str, *, params: Params | None = None) -> Any:
        return self._inner.stream(sql, params=params)

    def close(self) -> None:
        self._inner.close()


class Sink:
    def __init__(
        self,
        store: Store,
        producer: Producer,
        *,
        events_topic: str,
        dlq_topic: str,
        ocsf: bool = False,
        flush_timeout_s: float = 60.0,
        writer: EventWriter | None = None,
    ) -> None:
        self._store = store
        self._writer = writer or store.writer
        self._producer = producer
        self._events_topic = events_topic
        self._dlq_topic = dlq_topic
        self._ocsf = ocsf
        self._flush_timeout_s = flush_timeout_s

    def write(self, outcome: BatchOutcome) -> SinkResult:
        """Store, produce and flush one batch. Raises `StoreError` or `SinkError`; then retry it."""
        result = self._writer.write(outcome.rows)
        produced = self._produce(outcome)
        self._store.writer.write_dead_letters([r.dead_letter() for r in outcome.dead_letters])
        return SinkResult(
            inserted=result.inserted,
            duplicates=result.duplicates,
            dead_lettered=len(outcome.dead_letters),
            produced=produced,
        )

    # ---------------------------------------------------------------- kafka

    def _send(
        self,
        deliveries: _Deliveries,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: KafkaHeaders,
        tag: int | None = None,
    ) -> bool:
        """Queue one record; False if librdkafka refused it as too large at once."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=deliveries.callback(tag)
                )
                return True
            except BufferError:
                # Local queue full: let deliveries drain, then try again.
                self._producer.poll(0.05)
            except KafkaException as exc:
                if tag is not None and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    return False
                raise SinkError(f"cannot produce to {topic}: {exc}") from None

    def _produce(self, outcome: BatchOutcome) -> int:
        deliveries = _Deliveries()
        render = to_ocsf if self._ocsf else None
        content_type = b"application/json"
        fmt = b"ocsf" if self._ocsf else b"auditlog"
        for event in outcome.normalized_events:
            body = render(event) if render is not None else event
            self._send(
                deliveries,
                self._events_topic,
                orjson.dumps(body),
                _event_key(event),
                [
                    ("content-type", content_type),
                    ("x-format", fmt),
                    ("x-event-id", str(event["event_id"]).encode()),
                ],
            )
        too_large: list[int] = []
        for i, rejected in enumerate(outcome.dead_letters):
            if not self._send(
                deliveries,
                self._dlq_topic,
                rejected.payload,
                rejected.message.key,
                dlq_headers(rejected),
                tag=i,
            ):
                too_large.append(i)
        self._flush(deliveries)
        too_large.extend(deliveries.too_large)
        if too_large:
            # Second round, cut to size: the DLQ records that the topic would not take whole.
            deliveries = _Deliveries()
            for i in too_large:
                rejected = outcome.dead_letters[i]
                size = str(len(rejected.payload)).encode()
                headers = [*dlq_headers(rejected), ("x-payload-truncated", size)]
                self._send(
                    deliveries,
                    self._dlq_topic,
                    rejected.payload[:TRUNCATED_PAYLOAD_BYTES],
                    rejected.message.key,
                    headers,
                )
            self._flush(deliveries)
        return len(outcome.normalized_events) + len(outcome.dead_letters)

    def _flush(self, deliveries: _Deliveries) -> None:
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            raise SinkError(
                f"{remaining} records not acknowledged by Kafka after {self._flush_timeout_s:.0f}s"
            )
        if deliveries.errors:
            raise SinkError(
                f"{len(deliveries.errors)} records failed delivery, e.g. {'; '.join(deliveries.errors[:3])}"
            )

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)
