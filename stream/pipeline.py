"""The chain, composed in one place.

The worker, per batch of Kafka messages (DESIGN 2, 4 and 7):

    decode + validate + normalize + enrich (pure)  -> reject guard
      -> insert (store, once forever per event id)  -> publish (audit.events.v1)
      -> dead-letter (audit.dlq, dead_letters)       -> tally
      -> checkpoint (signed tree heads, once a minute) -> commit

HTTP, files and the demo run the same core and the same insert and dead-letter
steps, without Kafka and without a commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from producers.contract.directory import Directories
from storage.writer import EventWriter
from stream.counters import Counters, Tally
from stream.messages import Batch
from stream.settings import WorkerSettings
from stream.steps import Done, Step
from stream.steps.commit import Commit
from stream.steps.dead_letter import DeadLetter
from stream.steps.decode import Decode
from stream.steps.delivery import Delivery
from stream.steps.guard import RejectGuard
from stream.steps.insert import Insert
from stream.steps.publish import Publish
from stream.steps.retry import Retry, once


def worker_chain(
    settings: WorkerSettings,
    *,
    writer: EventWriter,
    producer: Producer,
    directories: Callable[[], Directories],
    guard: RejectGuard,
    retry: Retry,
    counters: Counters,
    on_batch: Callable[[Batch], None],
    commit: Callable[[dict[Any, int]], None],
    checkpoints: Callable[[Step], Step] | None = None,
) -> Decode:
    """`checkpoints` wraps the commit in the checkpoint step (none: no checkpoints signed here)."""

    def delivery() -> Delivery:
        return Delivery(producer, flush_timeout_s=settings.flush_timeout_s)

    return Decode(
        directories,
        guard,
        Insert(
            writer,
            retry,
            Publish(
                delivery(),
                retry,
                DeadLetter(
                    writer,
                    retry,
                    Tally(
                        counters,
                        checkpoints(Commit(commit)) if checkpoints else Commit(commit),
                        on_batch=on_batch,
                    ),
                    delivery=delivery(),
                    topic=settings.dlq_topic,
                ),
                topic=settings.events_topic,
                ocsf=settings.ocsf,
            ),
        ),
        max_message_bytes=settings.max_message_bytes,
        max_future_s=settings.max_future_skew_s,
        signing_key=settings.signing_key.encode(),
    )


def ingest_chain(writer: EventWriter) -> Step:
    """HTTP, files, the demo: a failure reaches the caller, who sends again."""
    return Insert(writer, once, DeadLetter(writer, once, Done()))
