"""Publish the directory to the compacted topic `audit.directory`, one record per entity.

Key `infrastructure/kind/id`, value the `DirectorySnapshot` JSON: compaction keeps the latest
state of every entity, and every worker reads the topic in full at start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from confluent_kafka import KafkaException, Producer

from producers.contract.directory import Directory, DirectorySnapshot
from producers.kafka_config import KafkaConnection
from producers.publisher import ProducerSettings
from producers.topics import DIRECTORY_TOPIC


def publish_snapshots(
    snapshots: list[DirectorySnapshot],
    *,
    connection: KafkaConnection,
    topic: str = DIRECTORY_TOPIC,
    timeout_s: float = 30,
) -> int:
    """Send snapshots (None entity = tombstone) and wait for every acknowledgement."""
    producer = Producer(
        {
            **connection.librdkafka(),
            **connection.extra,
            "enable.idempotence": True,
            "acks": "all",
            "client.id": "auditlog-directory",
        }
    )
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for snap in snapshots:
        value = None if snap.entity is None else snap.model_dump_json().encode()
        producer.produce(topic, key=snap.key.encode(), value=value, on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(timeout_s)
    if left or errors:
        raise KafkaException(f"{left} directory records unacknowledged; errors: {errors[:3]}")
    return len(snapshots)


def snapshot_publisher(
    connection: KafkaConnection, *, topic: str = DIRECTORY_TOPIC
) -> Callable[[list[DirectorySnapshot]], int]:
    """`publish_snapshots` bound to a cluster and topic: what a running API publishes changes with."""
    return functools.partial(publish_snapshots, connection=connection, topic=topic)


def publish_directory(
    directory: Directory,
    settings: ProducerSettings,
    *,
    removed: tuple[str, ...] = (),
    topic: str = DIRECTORY_TOPIC,
) -> int:
    """Every entity of `directory`, plus tombstones for the `kind/id` keys in `removed`
    (entities of the directory's own infrastructure)."""
    snaps = directory.snapshots()
    for key in removed:
        snaps.append(DirectorySnapshot.tombstone_for_key(f"{directory.infrastructure}/{key}"))
    return publish_snapshots(snaps, connection=settings, topic=topic)
