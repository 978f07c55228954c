"""The publishing SDK: contract events to Kafka, batched, ordered per entity, never silently lost.

Delivery guarantee: **at least once**. Every event is either acknowledged by Kafka
(idempotent producer, ``acks=all``), written to the on-disk spool to be re-sent,
or reported as failed (to ``on_delivery`` and in the `DeliveryReport`, and kept
in ``<spool_dir>/rejected.ndjson``). Re-sending after a timeout may deliver an
event twice; that is harmless because each event carries its ``event_id`` and
the store dedupes by it. Exactly-once would need Kafka transactions end to end
for no gain at the store.

How events travel
-----------------
* The Kafka key of an event is ``{infrastructure}/{target.kind}/{target.id}``,
  so all the tasks performed to one entity land in one partition, in order.
* Events bound for the same partition are grouped into one Kafka message, an
  envelope (`producers.envelope`): the worker's cost is per message, not per
  event. An envelope holds at most ``envelope_max_bytes`` (900 KB) and
  ``envelope_max_events``; a lone event is sent as a plain event message.
* Because the SDK groups by partition it must pick the partition itself. It uses
  the Java client's default partitioner, ``murmur2(key) & 0x7fffffff % partitions``
  (librdkafka's ``murmur2_random``), so these messages land where any Java,
  librdkafka or kafka-python producer configured that way would put the same
  key. The partition count comes from the cluster's metadata, is cached, and
  is refreshed after a delivery error and every ``metadata_refresh_s``.
* At most one message per partition is in flight (stop-and-wait at the
  envelope level). While it is in flight the next envelope fills up, so batching
  adapts to the broker's round trip. This is what makes failures safe: when a
  message fails, nothing after it in that partition has been sent, so it can be
  re-sent later without overtaking anything. (librdkafka's own pipelining may
  leave gaps when messages time out; see its idempotence notes.)

Spooling
--------
When a delivery fails with a retriable error (the broker is unreachable, the
message timed out after ``message_timeout_ms``, ``produce`` raised), or when no
metadata can be fetched, or when the in-memory buffer is full, the publisher
switches to *spooling*: the failed message, then everything still buffered,
then every new event, is appended in order to the spool (`producers.spool`).
Messages already in flight for other partitions finish first; their partition's
buffered events are spooled once they have.

The spool is drained oldest first: records are re-grouped by the *current*
partition of each event and sent (one message per partition at a time); a
record is removed only once every event in it was acknowledged. While anything
is spooled every new event goes behind it, so for each entity spooled events
always reach Kafka before newer ones. Draining is attempted by the background
thread (at most every ``retry_backoff_ms`` after a failure), on each
`Publisher.publish` / `Publisher.flush`, and explicitly with `Publisher.drain`.
When the spool is empty the publisher sends directly again.

A full spool makes `Publisher.publish` raise `SpoolFull`: the event is refused,
never dropped behind the caller's back.

Threads: a background thread serves librdkafka's delivery reports, seals
batches after ``linger_ms`` and drains the spool. ``on_delivery`` callbacks run
on that thread (or on the thread calling ``flush``/``close``), one at a time and
in order; keep them short.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from producers.contract.event import AuditEvent, InvalidEvent, event_to_wire, parse_event
from producers.envelope import (
    CONTENT_TYPE_HEADER,
    DEFAULT_MAX_ENVELOPE_BYTES,
    DEFAULT_MAX_ENVELOPE_EVENTS,
    ENVELOPE_CONTENT_TYPE,
    ENVELOPE_OVERHEAD,
    EVENT_CONTENT_TYPE,
    SIGNATURE_HEADER,
    MalformedMessage,
    decode_message,
    pack_envelope,
    signature,
)
from producers.kafka_config import KafkaConnection, redacted
from producers.spool import RECORD_OVERHEAD, Spool, SpoolError, SpoolFull, SpoolRecord
from producers.topics import RAW_TOPIC

__all__ = [
    "DeliveryError",
    "DeliveryReport",
    "EventTooLarge",
    "InvalidEvent",
    "InvalidEventAt",
    "OnDelivery",
    "ProducerSettings",
    "Publisher",
    "SpoolError",
    "SpoolFull",
    "event_key",
    "murmur2",
    "partition_for",
]

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("producers.publisher.librdkafka")

# --------------------------------------------------------------------- settings

# Safety properties the SDK's guarantees rest on, or settings with a field of
# their own: `extra` may not override them.
_RESERVED_KEYS = frozenset(
    {
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "bootstrap.servers",
        "client.id",
        "linger.ms",
        "queue.buffering.max.ms",
        "compression.type",
        "compression.codec",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "error_cb",
        "on_delivery",
        "logger",
    }
)


class ProducerSettings(KafkaConnection):
    """Publisher settings; every field can be set from ``AUDITLOG_KAFKA_<FIELD>``. The
    connection (bootstrap servers, TLS, SASL) is `KafkaConnection`'s, shared by every client.

    ``extra`` takes further librdkafka properties as JSON, e.g.
    ``AUDITLOG_KAFKA_EXTRA='{"socket.keepalive.enable": true}'``.
    """

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_KAFKA_", extra="ignore")

    topic: str = RAW_TOPIC
    client_id: str = "auditlog-producer"
    linger_ms: Annotated[int, Field(ge=0, le=10_000)] = 10
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = "zstd"
    message_timeout_ms: Annotated[int, Field(ge=1000)] = 30_000
    """How long librdkafka keeps retrying a message before it is spooled."""
    metadata_timeout_ms: Annotated[int, Field(ge=100)] = 5_000
    """How long the constructor waits for the topic's partition count."""
    metadata_refresh_s: Annotated[float, Field(gt=0)] = 300.0
    retry_backoff_ms: Annotated[int, Field(ge=10)] = 1_000
    """Pause between attempts to drain the spool after a failed attempt."""
    envelope_max_bytes: Annotated[int, Field(ge=4096)] = DEFAULT_MAX_ENVELOPE_BYTES
    envelope_max_events: Annotated[int, Field(ge=1)] = DEFAULT_MAX_ENVELOPE_EVENTS
    buffer_max_bytes: Annotated[int, Field(ge=65_536)] = 64 * 1024 * 1024
    """Events held in memory before the publisher spools instead of waiting for the broker."""
    spool_dir: Path | None = None
    """Default: $XDG_STATE_HOME/auditlog/spool/<client_id> (~/.local/state/...)."""
    spool_max_bytes: Annotated[int, Field(ge=65_536)] = 1024 * 1024 * 1024
    spool_segment_bytes: Annotated[int, Field(ge=4096)] = 16 * 1024 * 1024
    spool_sync_ms: Annotated[int, Field(ge=10)] = 1_000
    """Spooled records are fsynced at least this often, and on every flush()."""
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    signing_key: str = Field(default="", repr=False)
    """Sign every message (`auditlog-signature`): set on the query service only, with the
    workers' AUDITLOG_WORKER_SIGNING_KEY, so that its record of reads is authenticated."""

    @field_validator("extra")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(value) & _RESERVED_KEYS)
        if clash:
            raise ValueError(
                f"{', '.join(clash)} cannot be set through extra: the publisher sets it itself "
                "(idempotence and acks=all are required; the others have their own settings)"
            )
        return value

    def resolved_spool_dir(self) -> Path:
        if self.spool_dir is not None:
            return self.spool_dir
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return state / "auditlog" / "spool" / self.client_id


# ------------------------------------------------------------------ partitioner

_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (``Utils.murmur2``), as an unsigned 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK32
    body = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:body]):
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[body + 2] << 16
    if rest >= 2:
        h ^= data[body + 1] << 8
    if rest >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` under the Java default partitioner (librdkafka ``murmur2_random``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def event_key(event: AuditEvent) -> str:
    """The Kafka key: one entity's events share it, so they stay in one partition, in order."""
    return f"{event.infrastructure}/{event.target.kind}/{event.target.id}"


def _wire_key(item: object) -> bytes | None:
    if not isinstance(item, dict):
        return None
    target = item.get("target")
    infra = item.get("infrastructure")
    if not isinstance(target, dict) or not isinstance(infra, str):
        return None
    kind, ident = target.get("kind"), target.get("id")
    if not isinstance(kind, str) or not isinstance(ident, str):
        return None
    return f"{infra}/{kind}/{ident}".encode()


# ---------------------------------------------------------------------- results


class EventTooLarge(InvalidEvent):
    """A valid event whose encoding alone exceeds the largest message the publisher sends."""


class InvalidEventAt(InvalidEvent):
    """An invalid event in `Publisher.publish_many`, with its position in the input."""

    def __init__(self, index: int, cause: InvalidEvent) -> None:
        super().__init__(f"event {index}: {cause.reason}", cause.errors)
        self.index = index


@dataclass(frozen=True)
class DeliveryError:
    """Why events were not (yet) delivered.

    `spooled` True: they are in the spool and will be re-sent; a later
    ``on_delivery(ids, None)`` reports their delivery. False: Kafka refused them
    for good (kept in ``rejected.ndjson`` of the spool directory).
    """

    code: str
    reason: str
    spooled: bool
    retriable: bool


OnDelivery = Callable[[list[str], DeliveryError | None], None]


@dataclass(frozen=True)
class DeliveryReport:
    """Outcome counts, in events. `Publisher.flush`/`drain` report what happened since the
    previous report; `Publisher.totals` everything since the publisher started."""

    delivered: int = 0
    """Acknowledged by Kafka (acks=all), including spooled events delivered later."""
    failed: int = 0
    """Refused for good; see ``rejected.ndjson`` in the spool directory."""
    spooled: int = 0
    """Written to the spool (they are delivered later and then counted as delivered too)."""
    pending: int = 0
    """Still in memory or in flight when the wait ended (the timeout expired)."""
    in_spool: int = 0
    """Waiting in the spool now, to be re-sent."""

    @property
    def ok(self) -> bool:
        """Nothing failed and nothing is waiting."""
        return self.failed == 0 and self.pending == 0 and self.in_spool == 0


# ------------------------------------------------------------------------ state

_PERMANENT_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError._INVALID_ARG,
        KafkaError._BAD_MSG,
    }
)


def _classify(err: KafkaError, spooled: bool) -> DeliveryError:
    # Only errors about the message itself are permanent. Anything else
    # (unreachable broker, timeouts, missing topic, authorization) may heal
    # or be fixed by an operator, so the events are kept and retried.
    permanent = err.code() in _PERMANENT_CODES
    return DeliveryError(
        code=err.name(), reason=err.str(), spooled=spooled and not permanent, retriable=not permanent
    )


def _kafka_error(exc: BaseException) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def _failure_of(exc: BufferError | KafkaException) -> DeliveryError:
    """`produce` raised: the local queue is full or the client failed; both may heal."""
    err = _kafka_error(exc)
    if isinstance(exc, BufferError) or err is None:
        return DeliveryError("_QUEUE_FULL" if isinstance(exc, BufferError) else "_FAIL", str(exc), True, True)
    return _classify(err, True)


class _Mode(enum.Enum):
    DIRECT = "direct"
    SPOOLING = "spooling"


class _Building:
    """Events waiting to become one message (an envelope, or a plain event when alone)."""

    __slots__ = ("count", "data", "first_key", "ids", "opened", "size")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.data: list[bytes] = []
        self.first_key: bytes | None = None
        self.size = ENVELOPE_OVERHEAD
        self.opened = 0.0
        self.count = 0

    def fits(self, length: int, max_bytes: int, max_events: int) -> bool:
        return self.count == 0 or (self.count < max_events and self.size + 1 + length <= max_bytes)

    def add(self, event_id: str, data: bytes, key: bytes | None, now: float) -> int:
        """Add one event; returns the bytes it adds to the message."""
        if self.count == 0:
            self.opened = now
            self.first_key = key
            added = len(data)
        else:
            added = len(data) + 1
        self.ids.append(event_id)
        self.data.append(data)
        self.size += added
        self.count += 1
        return added

    def message(self) -> tuple[bytes, str, bytes | None]:
        if self.count == 1:
            return self.data[0], EVENT_CONTENT_TYPE, self.first_key
        return pack_envelope(self.data), ENVELOPE_CONTENT_TYPE, None


class _Batch:
    """A sealed message of the direct path, bound for one partition."""

    __slots__ = ("content_type", "cost", "done", "ids", "key", "partition", "value")

    def __init__(
        self, partition: int, ids: list[str], message: tuple[bytes, str, bytes | None], cost: int
    ) -> None:
        self.partition = partition
        self.ids = ids
        self.value, self.content_type, self.key = message
        self.cost = cost
        self.done = False

    @classmethod
    def seal(cls, partition: int, building: _Building, cost: int) -> _Batch:
        return cls(partition, building.ids, building.message(), cost)

    def again(self) -> _Batch:
        """A fresh copy to send again; the original stays `done` so a late report is ignored."""
        return _Batch(self.partition, self.ids, (self.value, self.content_type, self.key), self.cost)


class _Partition:
    __slots__ = ("building", "building_cost", "index", "inflight", "queue")

    def __init__(self, index: int) -> None:
        self.index = index
        self.building = _Building()
        self.building_cost = 0
        self.queue: deque[_Batch] = deque()
        self.inflight: _Batch | None = None

    def has_memory(self) -> bool:
        return self.inflight is not None or bool(self.queue) or self.building.count > 0


@dataclass
class _Group:
    partition: int
    ids: list[str]
    value: bytes
    content_type: str


@dataclass
class _Round:
    """One drain step: the oldest spool records, re-grouped into one message per partition."""

    topic: str
    records: int
    outstanding: int = 0
    retry: bool = False
    error: DeliveryError | None = None
    closed: bool = False
    delivered_ids: list[str] | None = None
    rejected_records: list[tuple[SpoolRecord, str]] | None = None
    rejected_groups: list[tuple[_Group, DeliveryError]] | None = None


# -------------------------------------------------------------------- publisher

_HASH_CACHE_MAX = 200_000


class Publisher:
    """Publishes contract events to Kafka; see the module docstring for the guarantees.

    ::

        with Publisher(ProducerSettings()) as publisher:
            publisher.publish(event)
    """

    def __init__(
        self, settings: ProducerSettings | None = None, *, on_delivery: OnDelivery | None = None
    ) -> None:
        self.settings = settings or ProducerSettings()
        self.topic = self.settings.topic
        self._on_delivery = on_delivery
        self._signing_key = self.settings.signing_key.encode()
        s = self.settings
        self._linger = s.linger_ms / 1000.0
        self._backoff = s.retry_backoff_ms / 1000.0
        self._max_bytes = s.envelope_max_bytes
        self._max_events = s.envelope_max_events
        self._buffer_limit = min(s.buffer_max_bytes, s.spool_max_bytes // 2)

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._dispatch_lock = threading.Lock()
        self._notes: deque[tuple[list[str], DeliveryError | None]] = deque()

        self._spool = Spool(s.resolved_spool_dir(), s.spool_max_bytes, s.spool_segment_bytes)
        self._parts: dict[int, _Partition] = {}
        self._spool_building = _Building()
        self._round: _Round | None = None
        self._retry_at = 0.0
        self._mem_bytes = 0
        self._mem_events = 0
        self._flushing = 0
        self._spool_error: SpoolError | None = None
        self._fatal: KafkaError | None = None
        self._closed = False
        self._stopping = False
        self._last_retry_log = 0.0

        self._delivered = self._failed = self._spooled = 0
        self._reported = (0, 0, 0)

        self._hashes: dict[bytes, int] = {}
        self._partition_counts: dict[str, int] = {}
        self._meta_due: set[str] = set()
        self._meta_tried: dict[str, float] = {}
        self._meta_refreshed = 0.0

        self._mode = _Mode.DIRECT
        self._reason = ""
        if self._spool.pending_records:
            self._mode = _Mode.SPOOLING
            self._reason = f"the spool holds {self._spool.pending_events} events from an earlier run"

        log.debug("kafka producer config: %s", redacted(self._producer_config(with_callbacks=False)))
        try:
            self._producer = Producer(self._producer_config())
        except BaseException:
            self._spool.close()
            raise
        count = self._fetch_partition_count(self._producer, self.topic, s.metadata_timeout_ms / 1000.0)
        self._meta_refreshed = time.monotonic()
        if isinstance(count, str):
            self._meta_due.add(self.topic)
            self._enter_spooling(
                f"no partition count for topic {self.topic!r} from {s.bootstrap_servers} within "
                f"{s.metadata_timeout_ms} ms ({count})"
            )
        else:
            self._partition_counts[self.topic] = count

        self._thread = threading.Thread(
            target=self._run, name=f"auditlog-publisher-{s.client_id}", daemon=True
        )
        self._thread.start()
        # A publisher left open at interpreter exit would lose what is only in
        # memory (the background thread is a daemon): close it, spooling the rest.
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------ public API

    def publish(self, event: AuditEvent | dict[str, Any]) -> None:
        """Validate one event and queue it for delivery.

        Raises `InvalidEvent` (nothing is sent) for an event that breaks the
        contract, `EventTooLarge` for one too big for any message, and
        `SpoolFull` when the broker is unreachable and the spool has no room.
        """
        data, event_id, key = self._encode(event)
        with self._lock:
            self._admit(data, event_id, key, time.monotonic())
        self._dispatch()

    def publish_many(self, events: Iterable[AuditEvent | dict[str, Any]]) -> int:
        """Validate every event first, then queue them all in order; returns how many.

        If any event is invalid, `InvalidEventAt` (an `InvalidEvent`) names it
        and none is queued.
        """
        encoded = []
        for index, event in enumerate(events):
            try:
                encoded.append(self._encode(event))
            except InvalidEvent as exc:
                raise InvalidEventAt(index, exc) from None
        with self._lock:
            now = time.monotonic()
            for data, event_id, key in encoded:
                self._admit(data, event_id, key, now)
        self._dispatch()
        return len(encoded)

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Send everything buffered; wait until each event was delivered, failed or spooled.

        Spooled events are re-sent later (see `drain`). Returns counts since the
        previous report; `pending` counts events still unsettled at the timeout
        (default: message_timeout_ms plus 5 s).
        """
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_open()
            self._flushing += 1
            try:
                self._pump_all(time.monotonic())
                while not self._settled():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, 0.05))
                    self._pump_all(time.monotonic())
                self._spool.flush()
                report = self._report()
            finally:
                self._flushing -= 1
        self._dispatch()
        return report

    def drain(self, timeout: float | None = None) -> DeliveryReport:
        """`flush`, then re-send the spool now and wait until it is empty (or the timeout).

        Returns counts since the previous report; ``in_spool`` is what is left.
        """
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_open()
            self._flushing += 1
            try:
                self._retry_at = 0.0
                if self.topic not in self._partition_counts:
                    self._meta_due.add(self.topic)
                    self._meta_tried.pop(self.topic, None)
                self._pump_all(time.monotonic())
                while not (self._mode is _Mode.DIRECT and self._settled()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, 0.05))
                    self._pump_all(time.monotonic())
                self._spool.flush()
                report = self._report()
            finally:
                self._flushing -= 1
        self._dispatch()
        return report

    def totals(self) -> DeliveryReport:
        """Counts since the publisher started."""
        with self._lock:
            return DeliveryReport(
                delivered=self._delivered,
                failed=self._failed,
                spooled=self._spooled,
                pending=self._mem_events,
                in_spool=self._spool.pending_events + self._spool_building.count,
            )

    @property
    def spooling(self) -> bool:
        """True while events go to (or wait in) the spool instead of straight to Kafka."""
        return self._mode is _Mode.SPOOLING

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Flush, then stop. Events still unsettled are spooled (they may be delivered
        twice); spooled events wait for the next publisher on the same spool_dir."""
        if self._closed:
            return DeliveryReport()
        atexit.unregister(self._close_at_exit)
        deadline = time.monotonic() + self._default_timeout(timeout)
        error: BaseException | None = None
        try:
            report = self.flush(timeout)
        except SpoolError as exc:
            report, error = DeliveryReport(), exc
        with self._cond:
            # A drain step already sent would be re-sent by the next publisher
            # (duplicates): let it finish while there is time.
            while self._round is not None and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._stopping = True
        self._thread.join(timeout=10)
        with self._cond:
            self._closed = True
            if self._round is not None:
                self._round.closed = True
                self._round = None
            for st in self._parts.values():
                batch = st.inflight
                if batch is not None:
                    # Its outcome is unknown: keep it, at the price of a possible duplicate.
                    batch.done = True
                    st.inflight = None
                    st.queue.appendleft(batch.again())
                self._spool_partition_memory(st, "the publisher closed before Kafka acknowledged them")
            if self._spool_building.count:
                self._seal_to_spool()
            left = self._mem_events
            try:
                self._spool.flush()
            finally:
                self._spool.close()
        self._producer.purge()
        self._producer.flush(0)
        self._dispatch()
        if error is not None:
            raise error
        if left:
            kind = type(self._spool_error) if self._spool_error is not None else SpoolError
            raise kind(f"{left} events could not be written to the spool and are lost: {self._spool_error}")
        return report

    def _close_at_exit(self) -> None:
        if not self._closed:
            log.warning("publisher %s was not closed; closing it at exit", self.settings.client_id)
            self.close(timeout=5.0)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ admission

    def _encode(self, event: AuditEvent | dict[str, Any]) -> tuple[bytes, str, bytes]:
        ev = event if isinstance(event, AuditEvent) else parse_event(event)
        data = orjson.dumps(event_to_wire(ev))
        if ENVELOPE_OVERHEAD + len(data) > self._max_bytes:
            raise EventTooLarge(
                f"event {ev.event_id} is {len(data):,} bytes once encoded, more than the largest "
                f"message this publisher sends ({self._max_bytes:,} bytes, envelope_max_bytes)"
            )
        return data, str(ev.event_id), event_key(ev).encode()

    def _partition_of(self, key: bytes, count: int) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= _HASH_CACHE_MAX:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h % count

    def _admit(self, data: bytes, event_id: str, key: bytes, now: float) -> None:
        self._check_open()
        count = self._partition_counts.get(self.topic)
        if self._mode is _Mode.DIRECT:
            if count is None:
                self._enter_spooling(f"the partition count of {self.topic!r} is unknown")
            elif self._mem_bytes + len(data) > self._buffer_limit:
                self._enter_spooling(
                    f"{self._mem_bytes:,} bytes are waiting for the broker, more than the buffer "
                    f"limit of {self._buffer_limit:,} (broker slow or unreachable)"
                )
        st = None
        if count is not None:
            partition = self._partition_of(key, count)
            st = self._parts.get(partition)
            if st is None and self._mode is _Mode.DIRECT:
                st = self._parts[partition] = _Partition(partition)
        if self._mode is _Mode.DIRECT:
            assert st is not None
            self._add_to_partition(st, data, event_id, key, now)
            self._pump_partition(st, now)
            return
        # Spooling: a partition still holding events in memory (a message in
        # flight when spooling began) keeps new ones behind them; the rest go
        # straight to the spool.
        self._pump_spooling(now)
        if self._spool_error is not None:
            raise self._spool_error
        self._check_spool_room(len(data))
        if st is not None and st.has_memory():
            self._add_to_partition(st, data, event_id, key, now)
            return
        b = self._spool_building
        if not b.fits(len(data), self._max_bytes, self._max_events):
            self._seal_to_spool()
        b = self._spool_building
        b.add(event_id, data, key, now)
        if b.count >= self._max_events:
            self._seal_to_spool()

    def _add_to_partition(self, st: _Partition, data: bytes, event_id: str, key: bytes, now: float) -> None:
        b = st.building
        if not b.fits(len(data), self._max_bytes, self._max_events):
            self._seal_partition(st)
            b = st.building
        if b.count == 0:
            st.building_cost = RECORD_OVERHEAD + ENVELOPE_OVERHEAD
            self._mem_bytes += st.building_cost
        added = b.add(event_id, data, key, now)
        st.building_cost += added
        self._mem_bytes += added
        self._mem_events += 1
        if b.count >= self._max_events:
            self._seal_partition(st)

    def _seal_partition(self, st: _Partition) -> None:
        if st.building.count == 0:
            return
        st.queue.append(_Batch.seal(st.index, st.building, st.building_cost))
        st.building = _Building()
        st.building_cost = 0

    def _check_spool_room(self, incoming: int) -> None:
        needed = (
            self._spool.used_bytes
            + self._spool_building.size
            + RECORD_OVERHEAD
            + self._mem_bytes
            + incoming
            + 1
        )
        if needed > self._spool.max_bytes:
            raise self._spool.full_error(needed - self._spool.used_bytes)

    # ------------------------------------------------------------ direct path

    def _pump_partition(self, st: _Partition, now: float) -> None:
        if st.inflight is not None or self._mode is not _Mode.DIRECT:
            return
        building = st.building
        if not st.queue and building.count and (self._flushing or now - building.opened >= self._linger):
            self._seal_partition(st)
        if st.queue:
            self._send(st, st.queue.popleft())

    def _headers(self, value: bytes, content_type: str) -> list[tuple[str, str | bytes | None]]:
        headers: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE_HEADER, content_type)]
        if self._signing_key:
            headers.append((SIGNATURE_HEADER, signature(self._signing_key, value)))
        return headers

    def _send(self, st: _Partition, batch: _Batch) -> None:
        st.inflight = batch
        try:
            self._producer.produce(
                self.topic,
                value=batch.value,
                key=batch.key,
                partition=batch.partition,
                headers=self._headers(batch.value, batch.content_type),
                on_delivery=functools.partial(self._on_direct_delivery, st, batch),
            )
        except (BufferError, KafkaException) as exc:
            err = _kafka_error(exc)
            if err is not None and err.fatal():
                self._fatal = err
            self._direct_failed(st, batch, _failure_of(exc))

    def _on_direct_delivery(
        self, st: _Partition, batch: _Batch, err: KafkaError | None, msg: Message
    ) -> None:
        with self._cond:
            if batch.done:
                return
            if err is None:
                batch.done = True
                st.inflight = None
                self._release(batch)
                self._delivered += len(batch.ids)
                self._note(batch.ids, None)
                if self._mode is _Mode.SPOOLING:
                    self._spool_partition_memory(st, self._reason)
                else:
                    self._pump_partition(st, time.monotonic())
            else:
                if err.fatal():
                    self._fatal = err
                self._direct_failed(st, batch, _classify(err, True))
            self._cond.notify_all()

    def _direct_failed(self, st: _Partition, batch: _Batch, failure: DeliveryError) -> None:
        batch.done = True
        st.inflight = None
        if not failure.retriable:
            self._release(batch)
            self._reject(self.topic, batch.value, batch.content_type, batch.ids, failure)
            self._pump_partition(st, time.monotonic())
            return
        # The failed message goes back in front: nothing behind it in this
        # partition was sent (one in flight at a time), so order holds.
        st.queue.appendleft(batch.again())
        self._meta_due.add(self.topic)
        reason = f"delivery to {self.topic}[{batch.partition}] failed: {failure.code}: {failure.reason}"
        self._enter_spooling(reason)
        self._spool_partition_memory(st, reason)

    def _release(self, batch: _Batch) -> None:
        self._mem_bytes -= batch.cost
        self._mem_events -= len(batch.ids)

    # ------------------------------------------------------------- spooling

    def _enter_spooling(self, reason: str) -> None:
        if self._mode is _Mode.SPOOLING:
            return
        self._mode = _Mode.SPOOLING
        self._reason = reason
        log.warning(
            "publisher %s: spooling to %s: %s", self.settings.client_id, self._spool.directory, reason
        )
        for st in self._parts.values():
            if st.inflight is None:
                self._spool_partition_memory(st, reason)
        if self._spool_building.count:
            self._seal_to_spool()

    def _spool_partition_memory(self, st: _Partition, reason: str) -> None:
        """Move a partition's buffered events, in order, to the spool (once nothing is in flight)."""
        if st.inflight is not None:
            return
        self._seal_partition(st)
        while st.queue:
            batch = st.queue[0]
            try:
                self._spool.append(self.topic, batch.value, len(batch.ids), batch.content_type)
            except SpoolError as exc:
                if self._spool_error is None:
                    log.error("publisher %s: %s", self.settings.client_id, exc)
                self._spool_error = exc
                return
            st.queue.popleft()
            self._release(batch)
            self._spooled += len(batch.ids)
            self._note(batch.ids, DeliveryError("SPOOLED", reason, True, True))
        self._spool_error = None

    def _seal_to_spool(self) -> None:
        b = self._spool_building
        if b.count == 0:
            return
        value, content_type, _ = b.message()
        # Admission control reserved room for this building, so a failure
        # here is a disk error; the events stay in memory until it clears.
        try:
            self._spool.append(self.topic, value, b.count, content_type)
        except SpoolError as exc:
            self._spool_error = exc
            log.error("publisher %s: %s", self.settings.client_id, exc)
            return
        self._spooled += b.count
        self._note(b.ids, DeliveryError("SPOOLED", self._reason, True, True))
        self._spool_building = _Building()

    def _pump_spooling(self, now: float) -> None:
        for st in self._parts.values():
            if st.inflight is None and (st.queue or st.building.count):
                self._spool_partition_memory(st, self._reason)
        b = self._spool_building
        if b.count and (self._flushing or now - b.opened >= self._linger):
            self._seal_to_spool()
        self._maybe_start_round(now)

    def _maybe_start_round(self, now: float) -> None:
        if self._mode is not _Mode.SPOOLING or self._round is not None or self._closed:
            return
        if now < self._retry_at:
            return
        # Messages of the direct path still in flight finish first: spooled
        # events for their partitions may only follow them.
        if any(st.inflight is not None for st in self._parts.values()):
            return
        if self._spool.pending_records == 0:
            if self._spool_building.count == 0 and self._mem_events == 0 and self._spool_error is None:
                self._resume_direct()
            return
        self._start_round(now)

    def _resume_direct(self) -> None:
        self._mode = _Mode.DIRECT
        log.warning("publisher %s: spool drained, publishing directly again", self.settings.client_id)
        self._reason = ""
        self._cond.notify_all()

    def _start_round(self, now: float) -> None:
        topic: str | None = None
        count = 0
        groups: dict[int, _Building] = {}
        taken = 0
        rejected: list[tuple[SpoolRecord, str]] = []
        with contextlib.closing(self._spool.pending(limit=10_000)) as records:
            for record in records:
                if topic is None:
                    topic = record.topic
                    known = self._partition_counts.get(topic)
                    if known is None:
                        # Retried once metadata arrives (which resets _retry_at).
                        self._meta_due.add(topic)
                        self._retry_at = now + self._backoff
                        return
                    count = known
                elif record.topic != topic:
                    break
                routed = self._route_record(record, count)
                if isinstance(routed, str):
                    rejected.append((record, routed))
                    taken += 1
                    continue
                if taken and not self._fits_groups(groups, routed):
                    break
                for partition, event_id, data, key in routed:
                    target = groups.get(partition)
                    if target is None:
                        target = groups[partition] = _Building()
                    target.add(event_id, data, key, now)
                taken += 1
        if topic is None or taken == 0:
            return
        rnd = _Round(
            topic=topic, records=taken, delivered_ids=[], rejected_records=rejected, rejected_groups=[]
        )
        self._round = rnd
        for partition, building in groups.items():
            value, content_type, message_key = building.message()
            sent = _Group(partition, building.ids, value, content_type)
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=message_key,
                    partition=partition,
                    headers=self._headers(value, content_type),
                    on_delivery=functools.partial(self._on_round_delivery, rnd, sent),
                )
            except (BufferError, KafkaException) as exc:
                err = _kafka_error(exc)
                if err is not None and err.fatal():
                    self._fatal = err
                rnd.retry, rnd.error = True, _failure_of(exc)
            else:
                rnd.outstanding += 1
        if rnd.outstanding == 0:
            self._finish_round(rnd)

    def _route_record(self, record: SpoolRecord, count: int) -> list[tuple[int, str, bytes, bytes]] | str:
        try:
            items = decode_message(record.value, [(CONTENT_TYPE_HEADER, record.content_type)])
        except MalformedMessage as exc:
            return f"unreadable spool record: {exc.reason}"
        routed = []
        for item in items:
            key = _wire_key(item)
            event_id = item.get("event_id") if isinstance(item, dict) else None
            if key is None or not isinstance(event_id, str):
                return "spool record holds an item that is not a contract event"
            routed.append((self._partition_of(key, count), event_id, orjson.dumps(item), key))
        return routed

    def _fits_groups(self, groups: dict[int, _Building], routed: list[tuple[int, str, bytes, bytes]]) -> bool:
        extra_bytes: dict[int, int] = {}
        extra_events: dict[int, int] = {}
        for partition, _, data, _ in routed:
            extra_bytes[partition] = extra_bytes.get(partition, 0) + len(data) + 1
            extra_events[partition] = extra_events.get(partition, 0) + 1
        for partition, added in extra_bytes.items():
            group = groups.get(partition)
            size = group.size if group is not None else ENVELOPE_OVERHEAD
            events = group.count if group is not None else 0
            if size + added > self._max_bytes or events + extra_events[partition] > self._max_events:
                return False
        return True

    def _on_round_delivery(self, rnd: _Round, group: _Group, err: KafkaError | None, msg: Message) -> None:
        with self._cond:
            if rnd.closed:
                return
            rnd.outstanding -= 1
            if err is None:
                assert rnd.delivered_ids is not None
                rnd.delivered_ids.extend(group.ids)
            else:
                if err.fatal():
                    self._fatal = err
                failure = _classify(err, True)
                if failure.retriable:
                    rnd.retry, rnd.error = True, failure
                else:
                    assert rnd.rejected_groups is not None
                    rnd.rejected_groups.append((group, failure))
            if rnd.outstanding == 0:
                self._finish_round(rnd)
            self._cond.notify_all()

    def _finish_round(self, rnd: _Round) -> None:
        rnd.closed = True
        self._round = None
        now = time.monotonic()
        if rnd.retry:
            # The whole step is re-sent: partitions that did get their message
            # see those events twice, never out of order.
            self._retry_at = now + self._backoff
            self._meta_due.add(rnd.topic)
            if now - self._last_retry_log > 30:
                self._last_retry_log = now
                error = rnd.error
                log.warning(
                    "publisher %s: re-sending the spool failed (%s), %d events wait in %s",
                    self.settings.client_id,
                    f"{error.code}: {error.reason}" if error else "unknown error",
                    self._spool.pending_events,
                    self._spool.directory,
                )
            return
        for record, reason in rnd.rejected_records or []:
            self._spool.reject(record, reason)
            self._failed += record.events
            log.error(
                "publisher %s: dropped a spool record of %d events: %s",
                self.settings.client_id,
                record.events,
                reason,
            )
        for group, failure in rnd.rejected_groups or []:
            self._reject(rnd.topic, group.value, group.content_type, group.ids, failure)
        self._spool.ack(rnd.records)
        delivered = rnd.delivered_ids or []
        self._delivered += len(delivered)
        if delivered:
            self._note(delivered, None)
        self._retry_at = 0.0
        self._maybe_start_round(now)

    def _reject(
        self, topic: str, value: bytes, content_type: str, ids: list[str], failure: DeliveryError
    ) -> None:
        record = SpoolRecord(topic=topic, content_type=content_type, events=len(ids), value=value)
        try:
            self._spool.reject(record, f"{failure.code}: {failure.reason}")
        except OSError as exc:
            log.error(
                "publisher %s: cannot keep rejected events in the spool: %s", self.settings.client_id, exc
            )
        self._failed += len(ids)
        log.error(
            "publisher %s: Kafka refused %d events for good (%s: %s); kept in %s",
            self.settings.client_id,
            len(ids),
            failure.code,
            failure.reason,
            self._spool.directory / "rejected.ndjson",
        )
        self._note(ids, failure)

    # ------------------------------------------------------------ housekeeping

    def _pump_all(self, now: float) -> None:
        if self._closed:
            return
        if self._mode is _Mode.DIRECT:
            for st in self._parts.values():
                self._pump_partition(st, now)
        else:
            self._pump_spooling(now)

    def _settled(self) -> bool:
        if self._mode is _Mode.DIRECT:
            return self._mem_events == 0
        if self._spool_error is not None:
            return True
        return self._mem_events == 0 and self._spool_building.count == 0

    def _report(self) -> DeliveryReport:
        current = (self._delivered, self._failed, self._spooled)
        before, self._reported = self._reported, current
        return DeliveryReport(
            delivered=current[0] - before[0],
            failed=current[1] - before[1],
            spooled=current[2] - before[2],
            pending=self._mem_events,
            in_spool=self._spool.pending_events + self._spool_building.count,
        )

    def _note(self, ids: list[str], error: DeliveryError | None) -> None:
        if self._on_delivery is not None:
            self._notes.append((ids, error))

    def _dispatch(self) -> None:
        callback = self._on_delivery
        if callback is None or not self._notes:
            return
        with self._dispatch_lock:
            while True:
                with self._lock:
                    if not self._notes:
                        return
                    notes = list(self._notes)
                    self._notes.clear()
                for ids, error in notes:
                    try:
                        callback(ids, error)
                    except Exception:
                        log.exception("on_delivery callback raised")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the publisher is closed")

    def _default_timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self.settings.message_timeout_ms / 1000.0 + 5.0

    # -------------------------------------------------------------- librdkafka

    def _producer_config(self, with_callbacks: bool = True) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            **s.librdkafka(),
            "client.id": s.client_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": s.compression,
            "linger.ms": s.linger_ms,
            "message.timeout.ms": s.message_timeout_ms,
            # Room for a full envelope plus headers and record overhead.
            "message.max.bytes": max(1_000_000, s.envelope_max_bytes + 100_000),
            "partitioner": "murmur2_random",
            **s.extra,
        }
        if with_callbacks:
            config["error_cb"] = self._on_client_error
            config["logger"] = _rdkafka_log
        return config

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("publisher %s: fatal Kafka client error: %s", self.settings.client_id, err.str())
        else:
            log.debug("publisher %s: Kafka client error: %s", self.settings.client_id, err.str())

    @staticmethod
    def _fetch_partition_count(producer: Producer, topic: str, timeout: float) -> int | str:
        """The topic's partition count, or why it is not known."""
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            try:
                metadata = producer.list_topics(topic, timeout=max(0.1, remaining))
            except KafkaException as exc:
                problem = f"broker unreachable? {exc.args[0] if exc.args else exc}"
            else:
                found = metadata.topics.get(topic)
                if found is not None and found.error is None and found.partitions:
                    return len(found.partitions)
                error = found.error if found is not None else None
                problem = f"topic error: {error}" if error is not None else "topic unknown"
            # A topic being auto-created reports LEADER_NOT_AVAILABLE for a moment.
            if time.monotonic() + 0.2 >= deadline:
                log.debug("metadata for %s: %s", topic, problem)
                return problem
            time.sleep(0.2)

    def _refresh_metadata(self, now: float) -> None:
        with self._lock:
            due = set(self._meta_due)
            if now - self._meta_refreshed >= self.settings.metadata_refresh_s:
                due.add(self.topic)
            due = {t for t in due if now - self._meta_tried.get(t, -1e9) >= self._backoff}
        for topic in sorted(due):
            count = self._fetch_partition_count(
                self._producer, topic, min(self.settings.metadata_timeout_ms / 1000.0, 2.0)
            )
            with self._cond:
                self._meta_tried[topic] = time.monotonic()
                if topic == self.topic:
                    self._meta_refreshed = time.monotonic()
                if isinstance(count, str):
                    continue
                self._meta_due.discard(topic)
                previous = self._partition_counts.get(topic)
                if previous != count:
                    self._partition_counts[topic] = count
                    if previous is not None:
                        log.warning("topic %s now has %d partitions (was %d)", topic, count, previous)
                    self._retry_at = 0.0
                    self._pump_all(time.monotonic())
                    self._cond.notify_all()

    def _reset_producer(self) -> None:
        """After a fatal error the producer instance is unusable: fail its messages into the
        spool and start a new one."""
        fresh = Producer(self._producer_config())
        with self._lock:
            fatal, self._fatal = self._fatal, None
            old, self._producer = self._producer, fresh
        log.error("publisher %s: replaced the Kafka producer after: %s", self.settings.client_id, fatal)
        # The purged messages' reports arrive as retriable errors: they are
        # spooled and re-sent through the new producer.
        old.purge()
        old.flush(0)

    def _run(self) -> None:
        interval = max(0.001, min(0.005, self._linger / 2 if self._linger else 0.001))
        last_sync = time.monotonic()
        while not self._stopping:
            try:
                self._producer.poll(interval)
                now = time.monotonic()
                with self._cond:
                    self._pump_all(now)
                    if now - last_sync >= self.settings.spool_sync_ms / 1000.0:
                        self._spool.flush()
                        last_sync = now
                    self._cond.notify_all()
                self._refresh_metadata(now)
                if self._fatal is not None:
                    self._reset_producer()
                self._dispatch()
            except Exception:
                log.exception("publisher %s: background step failed", self.settings.client_id)
                time.sleep(0.1)
