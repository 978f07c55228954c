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
    conflicts: int = 0
    """Of `dead_lettered`: rows refused because their id is on record with other content."""


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
        ("x-reason-code", rejected.code.encode()),
        ("x-source-topic", m.topic.encode()),
        ("x-source-partition", str(m.partition).encode()),
        ("x-source-offset", str(m.offset).encode()),
        ("x-source-timestamp", str(m.timestamp_ms).encode()),
    ]
    if rejected.index is not None:
        headers.append(("x-envelope-index", str(rejected.index).encode()))
    return headers


@dataclass(slots=True)
class _Record:
    topic: str
    value: bytes
    key: bytes | None
    headers: KafkaHeaders
    dead_letter: Rejected | None = None
    truncated: bool = False


class _Deliveries:
    """Where one batch's records stand, across write attempts of that batch.

    A retry re-sends only the records that failed. Records still queued in the
    producer from an attempt that timed out (a broker restarting) are waited
    for, not sent again: that would duplicate them on the output topics and
    could put an entity's events out of order there.
    """

    def __init__(self, outcome: BatchOutcome, records: list[_Record]) -> None:
        self.outcome = outcome
        self.records = records
        self.acked: set[int] = set()
        self.inflight: set[int] = set()
        self.errors: dict[int, str] = {}
        self.too_large: set[int] = set()
        self._lock = threading.Lock()

    def callback(self, tag: int) -> Callable[[KafkaError | None, Message], None]:
        # Runs on the thread that polls or flushes the producer.
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                self.inflight.discard(tag)
                if err is None:
                    self.acked.add(tag)
                elif (
                    err.code() == KafkaError.MSG_SIZE_TOO_LARGE and self.records[tag].dead_letter is not None
                ):
                    self.too_large.add(tag)
                else:
                    self.errors[tag] = f"{msg.topic()}: {err}"

        return on_delivery

    def unsent(self) -> list[int]:
        with self._lock:
            return [t for t in range(len(self.records)) if t not in self.acked and t not in self.inflight]

    @property
    def done(self) -> bool:
        with self._lock:
            return len(self.acked) == len(self.records)


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
        self._deliveries: _Deliveries | None = None
        # One batch at a time: a write abandoned by a cancelled caller may still be running
        # in its thread when the batch is retried.
        self._lock = threading.Lock()

    def write(self, outcome: BatchOutcome) -> SinkResult:
        """Store, produce and flush one batch. Raises `StoreError` or `SinkError`; then retry it.

        A row the store refuses as a conflict (its id on record with other content) is
        dead-lettered with that reason and both hashes instead of produced: whatever the
        attempt, the same rows conflict, so a retry produces the same records."""
        with self._lock:
            result = self._writer.write(outcome.rows)
            settled = outcome.without_conflicts([(c.row["event_id"], c.reason) for c in result.conflicts])
            produced = self._produce(outcome, settled)
            self._store.writer.write_dead_letters([r.dead_letter() for r in settled.dead_letters])
            self._deliveries = None
        return SinkResult(
            inserted=result.inserted,
            duplicates=result.duplicates,
            dead_lettered=len(settled.dead_letters),
            produced=produced,
            conflicts=len(result.conflicts),
        )

    # ---------------------------------------------------------------- kafka

    def _records(self, outcome: BatchOutcome) -> list[_Record]:
        fmt = b"ocsf" if self._ocsf else b"auditlog"
        records = []
        for event in outcome.normalized_events:
            body = to_ocsf(event) if self._ocsf else event
            headers: KafkaHeaders = [
                ("content-type", b"application/json"),
                ("x-format", fmt),
                ("x-event-id", str(event["event_id"]).encode()),
            ]
            records.append(_Record(self._events_topic, orjson.dumps(body), _event_key(event), headers))
        for rejected in outcome.dead_letters:
            records.append(
                _Record(
                    self._dlq_topic, rejected.payload, rejected.message.key, dlq_headers(rejected), rejected
                )
            )
        return records

    def _produce(self, outcome: BatchOutcome, settled: BatchOutcome) -> int:
        state = self._deliveries
        if state is None or state.outcome is not outcome:
            state = self._deliveries = _Deliveries(outcome, self._records(settled))
        for _ in range(2):  # the second round only for DLQ records cut to size
            for tag in state.unsent():
                state.errors.pop(tag, None)
                self._send(state, tag)
            remaining = self._producer.flush(self._flush_timeout_s)
            if not state.too_large:
                break
            for tag in sorted(state.too_large):
                self._truncate(state.records[tag])
            state.too_large.clear()
        if state.errors:
            sample = "; ".join(list(state.errors.values())[:3])
            raise SinkError(f"{len(state.errors)} records failed delivery, e.g. {sample}")
        if remaining or not state.done:
            raise SinkError(
                f"{len(state.records) - len(state.acked)} records not acknowledged by Kafka "
                f"after {self._flush_timeout_s:.0f}s"
            )
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
                if code == KafkaError.MSG_SIZE_TOO_LARGE and record.dead_letter is not None:
                    if record.truncated:
                        raise SinkError(f"cannot produce to {record.topic} even cut to size: {exc}") from None
                    self._truncate(record)
                    continue
                raise SinkError(f"cannot produce to {record.topic}: {exc}") from None

    @staticmethod
    def _truncate(record: _Record) -> None:
        """A dead letter larger than the DLQ takes: kept whole in the store, cut to size on Kafka."""
        if record.dead_letter is None or record.truncated:
            return
        size = str(len(record.dead_letter.payload)).encode()
        record.value = record.dead_letter.payload[:TRUNCATED_PAYLOAD_BYTES]
        record.headers = [*dlq_headers(record.dead_letter), ("x-payload-truncated", size)]
        record.truncated = True

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_s)
