"""Kafka topic names of the pipeline, shared by producers, the stream worker and tests."""

from __future__ import annotations

from typing import Final

RAW_TOPIC: Final = "audit.raw"
"""What producers publish: contract events, alone or in envelopes (see `producers.envelope`)."""

EVENTS_TOPIC: Final = "audit.events.v1"
"""Normalized, enriched events for SIEMs."""

DLQ_TOPIC: Final = "audit.dlq"
"""Rejected input with its original bytes and the reason in headers."""

DIRECTORY_TOPIC: Final = "audit.directory"
"""Compacted: one directory entity snapshot per key `kind/id`."""
