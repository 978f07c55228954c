"""librdkafka configurations of the project's Kafka clients."""

from __future__ import annotations

import logging
from typing import Any


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
