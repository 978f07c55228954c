"""The stream worker: the thin faust edge around the pure batch step and the sink.

The chain, per batch (DESIGN 2, 4 and 7):

    audit.raw --faust take_events(n, within=t)--> RawMessage[]
      -> process_batch (decode, validate, normalize, enrich; pure, in a thread)
      -> RejectGuard (too many rejects: exit non-zero, nothing committed)
      -> Sink.write (store insert, produce + flush audit.events.v1 / audit.dlq; in a thread, retried)
      -> commit the batch's offsets, explicitly, and only now.

How commits are kept honest. faust commits the offsets of *acked* messages:
every `broker_commit_interval` seconds, every `broker_commit_every` acks, when
a task raised (`Consumer.on_task_error` commits), on rebalance and on stop.
`Stream.take()`/`take_events()` ack their whole buffer in a `finally` block,
so a handler that raised, or a generator closed at shutdown while its batch
was still being written, gets its messages acked and then committed. None of
that may touch `audit.raw`, so the topic is declared with `acks=False`:
`Consumer.ack` then records nothing for it (`acks_enabled_for` is False), and
none of faust's commit paths has an offset of it to commit. The worker commits
`max(offset) + 1` per partition itself, through the consumer's `_commit`
(aiokafka's `commit()` with explicit offsets), after `Sink.write` returned.
aiokafka's own auto-commit is off (faust creates it with `enable_auto_commit=False`).

An exception out of a batch is never left to faust: its agent supervisor
would restart the agent past the failed batch, and a later commit would skip
it. A sink failure is retried with backoff for as long as it takes; any other
error, and `TooManyRejects`, end the process at once with a non-zero code and
the batch uncommitted. Everything uncommitted is redelivered on restart, and
the writer's dedupe by event_id makes that exactly-once as seen through the API.

The directory (`audit.directory`, compacted, key "infrastructure/kind/id") is read by every
worker in full, not through the consumer group (which would give each worker
only some of its partitions): a confluent-kafka consumer assigned to every
partition from the beginning reads it to the end before the first batch, then
follows it in a thread. Each change is saved to the store for the query
service; enrichment always uses the latest directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.contract.directory import (
    Directories,
    DirectoryError,
    DirectorySnapshot,
)
from producers.topics import DIRECTORY_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC
from storage.engine import StoreError
from storage.store import Store, StoreSettings
from storage.writer import EventWriter
from stream.batch import DEFAULT_MAX_MESSAGE_BYTES, RawMessage, RejectGuard, TooManyRejects, process_batch
from stream.gc_pause import gc_paused
from stream.sink import FaultyEngine, Sink, SinkError, SinkResult, producer_config
from stream.steps import DEFAULT_MAX_FUTURE_S

log = logging.getLogger("auditlog.worker")

EXIT_TOO_MANY_REJECTS: Final = 3
EXIT_CRASH: Final = 70  # EX_SOFTWARE


class WorkerSettings(BaseSettings):
    """The stream worker. Env prefix AUDITLOG_WORKER_ (the store keeps AUDITLOG_STORE_)."""

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_WORKER_")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    group_id: str = Field(default="auditlog-worker", description="consumer group (and faust app id)")
    raw_topic: str = RAW_TOPIC
    events_topic: str = EVENTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    directory_topic: str = DIRECTORY_TOPIC
    topic_partitions: int = Field(default=6, ge=1, description="partitions of topics the worker creates")
    topic_replication: int = Field(default=1, ge=1)
    topic_max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024 * 1024, description="max.message.bytes of the topics it creates"
    )
    batch_size: int = Field(default=20_000, ge=1, description="Kafka messages per batch (take n)")
    # 0.5 s: at 2,000 events/s a batch now costs ~0.1 s, so the window is most of an
    # event's producer-to-queryable time; two inserts a second per worker is still few.
    batch_seconds: float = Field(default=0.5, gt=0, description="longest wait to fill a batch (take within)")
    max_batch_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="a batch is processed, stored and committed in slices of about this many message bytes "
        "(envelopes make message counts a poor measure of work)",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, description="larger messages are dead-lettered undecoded"
    )
    max_future_skew_s: float = Field(
        default=DEFAULT_MAX_FUTURE_S,
        ge=0,
        description="an event dated later than its broker timestamp plus this is dead-lettered",
    )
    signing_key: str = Field(
        default="",
        repr=False,
        description="secret shared with the query service (AUDITLOG_KAFKA_SIGNING_KEY there): only messages "
        "signed with it may carry audit_log.* events",
    )
    ocsf: bool = Field(default=False, description="emit audit.events.v1 in OCSF instead of the API's shape")
    max_reject_ratio: float = Field(default=0.5, ge=0, le=1)
    max_consecutive_rejects: int = Field(default=1000, ge=1)
    reject_min_sample: int = Field(default=200, ge=1)
    reject_window: int = Field(default=10_000, ge=1)
    session_timeout_s: float = Field(
        default=30.0, ge=6, description="a silent (killed) worker's partitions move after this"
    )
    heartbeat_s: float = Field(default=3.0, gt=0)
    instance_id: str | None = Field(
        default=None,
        description="static group membership (KIP-345): a restarted worker with the same id takes "
        "its partitions back at once instead of after the session timeout",
    )
    flush_timeout_s: float = Field(default=60.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    directory_bootstrap_timeout_s: float = Field(default=120.0, gt=0)
    stats_path: Path | None = Field(
        default=None, description="write the counters here (JSON) after each batch"
    )
    faust_datadir: Path | None = None
    store: StoreSettings = Field(default_factory=StoreSettings)
    # Test-only fault-injection hook (see stream.sink.FaultyEngine): after
    # `fault_insert_after` successful inserts into audit_events, fail the next
    # `fault_insert_failures` with StoreError. 0 (the default) disables it.
    fault_insert_failures: int = Field(default=0, ge=0)
    fault_insert_after: int = Field(default=0, ge=0)
    # Test-only: pause this long between a stored batch and its commit, to widen the
    # window a kill -9 must hit for the redelivery-and-dedupe path to be exercised.
    fault_commit_delay_s: float = Field(default=0.0, ge=0)


# ---------------------------------------------------------------- accounting


@dataclass
class Counters:
    """Since this process started. Invariant: events_in == rows_stored + duplicates + dead_lettered."""

    batches: int = 0
    messages_in: int = 0
    events_in: int = 0
    rows_stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    conflicts: int = 0
    produced: int = 0
    sink_retries: int = 0
    commits_refused: int = 0
    first_batch_at: float | None = None
    last_batch_at: float | None = None

    def add(self, messages: int, events: int, result: SinkResult) -> None:
        self.batches += 1
        self.messages_in += messages
        self.events_in += events
        self.rows_stored += result.inserted
        self.duplicates += result.duplicates
        self.dead_lettered += result.dead_lettered
        self.conflicts += result.conflicts
        self.produced += result.produced

    @property
    def balanced(self) -> bool:
        return self.events_in == self.rows_stored + self.duplicates + self.dead_lettered

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced}


# ---------------------------------------------------------------- topics


def ensure_topics(settings: WorkerSettings, *, timeout_s: float = 60.0) -> None:
    """Create the worker's topics if missing; the directory topic compacted."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "log_level": 3,
        "logger": logging.getLogger("auditlog.librdkafka"),
    }
    admin = AdminClient(config)
    max_bytes = settings.topic_max_message_bytes
    # The DLQ keeps a rejected message whole, plus headers: a little more room than audit.raw.
    wanted = [
        NewTopic(
            settings.raw_topic,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication,
            config={"max.message.bytes": str(max_bytes)},
        ),
        NewTopic(
            settings.events_topic,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication,
            config={"max.message.bytes": str(max_bytes)},
        ),
        NewTopic(
            settings.dlq_topic,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication,
            config={"max.message.bytes": str(max_bytes + 1024 * 1024)},
        ),
        NewTopic(
            settings.directory_topic,
            num_partitions=1,
            replication_factor=settings.topic_replication,
            config={"cleanup.policy": "compact"},
        ),
    ]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return
    futures = admin.create_topics(missing, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


# ---------------------------------------------------------------- directory


def directory_changes(before: Directories, after: Directories) -> list[DirectorySnapshot]:
    """Snapshots that turn `before` into `after`: changed or new entities, tombstones for removed ones."""
    old = {s.key: s for s in before.snapshots()}
    new = {s.key: s for s in after.snapshots()}
    changes = [s for k, s in new.items() if old.get(k) != s]
    changes += [s.model_copy(update={"entity": None}) for k, s in old.items() if k not in new]
    return changes


def parse_directory_record(key: bytes | None, value: bytes | None) -> DirectorySnapshot:
    """One `audit.directory` record: value = DirectorySnapshot JSON, or null (tombstone of its key)."""
    if value is None:
        return DirectorySnapshot.tombstone_for_key((key or b"").decode("utf-8", errors="replace"))
    return DirectorySnapshot.model_validate_json(value)


class DirectoryFollower:
    """Reads the compacted directory topic in full and keeps following it, in a thread."""

    def __init__(self, settings: WorkerSettings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._topic = settings.directory_topic
        self._latest: dict[str, DirectorySnapshot] = {}
        self._directories = Directories()
        self._version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                # Required by librdkafka; never used to commit: every worker reads everything.
                "group.id": f"{settings.group_id}.directory",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                "logger": logging.getLogger("auditlog.librdkafka"),
            }
        )

    def current(self) -> Directories:
        return self._directories

    def _next_version(self) -> int:
        # Later than any version written before, by this worker or by `directory load`.
        self._version = max(self._version + 1, time.time_ns())
        return self._version

    def bootstrap(self) -> None:
        """Read the topic from the beginning to its current end, then publish the result to the store."""
        timeout = self._settings.directory_bootstrap_timeout_s
        deadline = time.monotonic() + timeout
        metadata = self._consumer.list_topics(self._topic, timeout=timeout)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(f"directory topic {self._topic!r} is not available: {topic and topic.error}")
        partitions = sorted(topic.partitions)
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=timeout, cached=False
            )
            if high > low:
                ends[p] = high
        try:
            stored = self._store.directory.load()
        except DirectoryError:
            stored = Directories()
        # The topic is applied over what the store holds (say, from `auditlog directory load`),
        # so enrichment and permissions see the same directory.
        self._latest = {s.key: s for s in stored.snapshots()}
        self._consumer.assign([TopicPartition(self._topic, p, -2) for p in partitions])  # -2: beginning
        while ends:
            if time.monotonic() > deadline:
                raise RuntimeError(f"directory topic not read to its end within {timeout:.0f}s")
            for msg in self._consumer.consume(num_messages=5000, timeout=0.5):
                self._take(msg)
                p, offset = msg.partition(), msg.offset()
                if p in ends and offset is not None and offset + 1 >= ends[p]:
                    del ends[p]
        directories = Directories.assemble(self._latest.values())
        changes = directory_changes(stored, directories)
        self._store.directory.save(changes, version=self._next_version())
        self._directories = directories
        log.info(
            "directory: %d entities (store and %s), %d changes saved to the store",
            len(self._latest),
            self._topic,
            len(changes),
        )

    def _take(self, msg: Any) -> bool:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("directory: consumer error: %s", err)
            return False
        try:
            snap = parse_directory_record(msg.key(), msg.value())
        except (ValidationError, ValueError) as exc:
            log.warning(
                "directory: skipping record %s[%d]@%d: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                str(exc).splitlines()[0],
            )
            return False
        if snap.entity is None:
            self._latest.pop(snap.key, None)
        else:
            self._latest[snap.key] = snap
        return True

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(num_messages=5000, timeout=0.5)
                changed = False
                for msg in messages:
                    changed = self._take(msg) or changed
                if not changed:
                    continue
                directories = Directories.assemble(self._latest.values())
                changes = directory_changes(self._directories, directories)
                self._store.directory.save(changes, version=self._next_version())
                self._directories = directories
                log.info("directory: %d changes applied", len(changes))
            except (StoreError, KafkaException, DirectoryError) as exc:
                # The in-memory directory stays as it was; the next record retries the save.
                log.warning("directory: update failed, will retry: %s", exc)
                self._stop.wait(1.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="directory-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._consumer.close()


# ---------------------------------------------------------------- the worker


def raw_message(event: Any) -> RawMessage:
    """A faust event (value_serializer raw) as the pipeline's RawMessage."""
    m = event.message
    value = m.value
    timestamp = m.timestamp
    return RawMessage(
        value=bytes(value) if value is not None else None,
        headers=tuple((str(k), bytes(v) if v is not None else b"") for k, v in (m.headers or ())),
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        # faust hands the broker's millisecond timestamp over as float seconds.
        timestamp_ms=round(timestamp * 1000) if timestamp is not None else 0,
        key=bytes(m.key) if m.key is not None else None,
    )


def slices(events: Sequence[Any], max_bytes: int) -> list[Sequence[Any]]:
    """Consecutive runs of `events` of at most `max_bytes` of message values (at least one event each).

    Runs are prefixes of the batch in order, so each one's offsets can be committed
    once it is stored: per partition, everything before them is stored already.
    """
    out: list[Sequence[Any]] = []
    start = size = 0
    for i, event in enumerate(events):
        n = len(event.message.value or b"")
        if i > start and size + n > max_bytes:
            out.append(events[start:i])
            start, size = i, 0
        size += n
    if start < len(events):
        out.append(events[start:])
    return out


def next_offsets(events: Sequence[Any]) -> dict[Any, int]:
    """Per topic-partition, the offset to commit once the batch is stored: last offset + 1."""
    offsets: dict[Any, int] = {}
    for event in events:
        m = event.message
        if m.offset + 1 > offsets.get(m.tp, -1):
            offsets[m.tp] = m.offset + 1
    return offsets


class WorkerRuntime:
    """Everything the faust agent calls: directory, guard, sink, counters. Owns the store."""

    def __init__(self, settings: WorkerSettings, store: Store | None = None) -> None:
        self.settings = settings
        ensure_topics(settings)
        self.store = store or Store.open(settings.store)
        self.directory = DirectoryFollower(settings, self.store)
        self.directory.bootstrap()
        self.directory.start()
        writer = None
        if settings.fault_insert_failures:
            log.warning(
                "FAULT INJECTION: %d inserts into audit_events will fail after %d",
                settings.fault_insert_failures,
                settings.fault_insert_after,
            )
            writer = EventWriter(
                FaultyEngine(
                    self.store.engine,
                    failures=settings.fault_insert_failures,
                    after=settings.fault_insert_after,
                ),
                database=self.store.database,
                chunk_rows=settings.store.insert_chunk_rows,
            )
        self.producer = Producer(producer_config(settings.bootstrap_servers))
        self.sink = Sink(
            self.store,
            self.producer,
            events_topic=settings.events_topic,
            dlq_topic=settings.dlq_topic,
            ocsf=settings.ocsf,
            flush_timeout_s=settings.flush_timeout_s,
            writer=writer,
        )
        self.guard = RejectGuard(
            max_ratio=settings.max_reject_ratio,
            max_consecutive=settings.max_consecutive_rejects,
            min_sample=settings.reject_min_sample,
            window=max(settings.reject_window, settings.reject_min_sample),
        )
        self.counters = Counters()
        self.app: Any = None

    # -- one batch ---------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> None:
        # The batch's objects live until it is stored; collecting meanwhile finds nothing.
        with gc_paused():
            await self._handle(events)

    async def _handle(self, events: Sequence[Any]) -> None:
        started = time.monotonic()
        if self.counters.first_batch_at is None:
            self.counters.first_batch_at = time.time()
        messages = [raw_message(e) for e in events]
        offsets = next_offsets(events)
        directories = self.directory.current()
        outcome = await asyncio.to_thread(
            process_batch,
            messages,
            directories,
            max_message_bytes=self.settings.max_message_bytes,
            max_future_s=self.settings.max_future_skew_s,
            signing_key=self.settings.signing_key.encode(),
        )
        self.guard.observe(outcome.verdicts)
        result = await self._write(outcome)
        self.counters.add(outcome.messages, outcome.events, result)
        self.counters.last_batch_at = time.time()
        self.write_stats()
        if self.settings.fault_commit_delay_s:
            await asyncio.sleep(self.settings.fault_commit_delay_s)
        await self._commit(offsets)
        c = self.counters
        log.info(
            "batch: %d messages, %d events -> %d stored, %d duplicates, %d dead-lettered in %.2fs "
            "(totals: %d in = %d stored + %d duplicates + %d dead-lettered)",
            outcome.messages,
            outcome.events,
            result.inserted,
            result.duplicates,
            result.dead_lettered,
            time.monotonic() - started,
            c.events_in,
            c.rows_stored,
            c.duplicates,
            c.dead_lettered,
        )
        if not c.balanced:
            log.error("accounting does not balance: %s", c.to_dict())
        self.write_stats()

    async def _commit(self, offsets: dict[Any, int]) -> None:
        # Only partitions still ours: aiokafka refuses (and faust then crashes the consumer)
        # a commit for a partition a rebalance took away mid-batch. Its new owner
        # redelivers those messages and the store dedupes them.
        assigned = self.app.consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        committed = bool(mine) and await self.app.consumer._commit(mine)
        if not committed or len(mine) < len(offsets):
            self.counters.commits_refused += 1
            log.warning("offsets %s not committed (rebalanced); they will be redelivered", offsets)

    async def _write(self, outcome: Any) -> SinkResult:
        delay = self.settings.retry_initial_s
        while True:
            try:
                return await asyncio.to_thread(self.sink.write, outcome)
            except (StoreError, SinkError, KafkaException) as exc:
                self.counters.sink_retries += 1
                log.warning("sink failed, batch not committed; retrying in %.1fs: %s", delay, exc)
                self.write_stats()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    def write_stats(self) -> None:
        path = self.settings.stats_path
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **self.counters.to_dict()}))
        tmp.replace(path)

    def fatal(self, code: int, message: str) -> None:
        """End the process now, the current batch uncommitted: restart redelivers it."""
        log.critical("%s; exiting with code %d, batch not committed", message, code)
        with contextlib.suppress(Exception):
            self.write_stats()
        logging.shutdown()
        sys.stderr.flush()
        # os._exit, not sys.exit: no faust shutdown path runs, nothing else is flushed or committed.
        os._exit(code)

    def close(self) -> None:
        self.directory.stop()
        with contextlib.suppress(Exception):
            self.sink.close()


def build_app(runtime: WorkerRuntime) -> Any:
    import faust

    codec: Any = importlib.import_module("aiokafka.codec")  # untyped
    if not (codec.has_zstd() and codec.has_lz4() and codec.has_snappy()):
        # Without it aiokafka crashes on the first compressed batch (the SDK sends zstd).
        raise RuntimeError(
            "the worker needs cramjam to read compressed Kafka batches: pip install 'aiokafka[all]'"
        )

    s = runtime.settings
    datadir = s.faust_datadir or Path(tempfile.gettempdir()) / "auditlog-faust" / s.group_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.group_id,
        broker=[f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(",") if h.strip()],
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(datadir),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        # No leader topic to create; the worker creates its own topics up front.
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # faust never has an audit.raw offset to commit (acks=False below); these only
        # keep its commit timer from waking up for nothing.
        broker_commit_every=1_000_000_000,
        broker_commit_interval=3600.0,
        stream_wait_empty=False,
        broker_session_timeout=s.session_timeout_s,
        consumer_group_instance_id=s.instance_id,
        broker_heartbeat_interval=min(s.heartbeat_s, s.session_timeout_s / 3),
        consumer_max_fetch_size=s.topic_max_message_bytes,
        stream_buffer_maxsize=max(4096, s.batch_size),
    )
    topic = app.topic(s.raw_topic, value_serializer="raw", key_serializer="raw", acks=False, allow_empty=True)

    async def consume(stream: Any) -> None:
        async for events in stream.take_events(s.batch_size, within=s.batch_seconds):
            try:
                for chunk in slices(events, s.max_batch_bytes):
                    await runtime.handle(chunk)
            except TooManyRejects as exc:
                runtime.fatal(EXIT_TOO_MANY_REJECTS, f"too many rejects: {exc}")
            except Exception as exc:
                log.exception("batch failed")
                runtime.fatal(EXIT_CRASH, f"batch failed: {type(exc).__name__}: {exc}")

    app.agent(topic, name="auditlog-raw", concurrency=1)(consume)
    runtime.app = app
    return app


def run_faust(app: Any, *, loglevel: str = "WARNING") -> int:
    """Run the faust app until SIGTERM/SIGINT; the process exit code."""
    import faust

    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
