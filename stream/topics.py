"""The worker's topics, created at start when missing: the directory topic compacted."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producers.kafka_config import admin_config
from stream.settings import WorkerSettings

log = logging.getLogger("auditlog.worker")


def ensure_topics(settings: WorkerSettings, *, timeout_s: float = 60.0) -> None:
    """Create the worker's topics if missing; the directory topic compacted."""
    admin = AdminClient(admin_config(settings.connection()))
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
        # Checkpoints for SIEMs and witnesses: small, kept like the events they sign.
        NewTopic(
            settings.checkpoints.topic,
            num_partitions=1,
            replication_factor=settings.topic_replication,
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
