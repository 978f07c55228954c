"""The directory follower: every worker reads `audit.directory` in full and follows it.

The directory (compacted, key "infrastructure/kind/id") is read by every worker in
full, not through the consumer group (which would give each worker only some of its
partitions): a confluent-kafka consumer assigned to every partition from the
beginning reads it to the end before the first batch, then follows it in a thread.
Each change is saved to the store for the query service; enrichment always uses the
latest directory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from producers.contract.directory import Directories, DirectoryError, DirectorySnapshot
from producers.kafka_config import consumer_config
from storage.engine import StoreError
from storage.store import Store
from stream.settings import WorkerSettings

log = logging.getLogger("auditlog.worker")


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
        self._last_read = time.monotonic()
        self._last_check = 0.0
        self._thread: threading.Thread | None = None
        self._consumer = Consumer(
            consumer_config(
                settings.connection(),
                # Required by librdkafka; never used to commit: every worker reads everything.
                **{
                    "group.id": f"{settings.group_id}.directory",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                },
            )
        )

    def _check_caught_up(self, every_s: float = 10.0) -> None:
        """Every few seconds, ask the broker whether this follower has read to the topic's end."""
        now = time.monotonic()
        if now - self._last_check < every_s:
            return
        self._last_check = now
        try:
            for tp in self._consumer.assignment():
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                [position] = self._consumer.position([tp])
                if high > low and position.offset < high:
                    return
        except KafkaException:
            return
        self._last_read = now

    def age_s(self) -> float:
        """Seconds since the follower last knew it had read audit.directory to its end: how stale
        enrichment and permissions may be."""
        return time.monotonic() - self._last_read

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
                self._check_caught_up()
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
