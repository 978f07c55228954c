"""Embedded ingestion: decoded JSON values through the one core, then insert and dead-letter.

The same core and steps the Kafka worker runs, without Kafka: used by the HTTP ingest
endpoint in embedded mode, `auditlog ingest FILE` and the demo. Each event is judged
alone; valid events of a batch are stored even when others are refused, and refused
ones are kept in `dead_letters` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from producers.contract.directory import Directories
from storage.store import Store
from stream.core import Rules, accept
from stream.gc_pause import gc_paused
from stream.messages import Batch, InvalidMessage, Lineage, payload_json
from stream.pipeline import ingest_chain
from stream.transform import DEFAULT_MAX_FUTURE_S


@dataclass(frozen=True)
class Rejection:
    """One refused item of an ingest report (HTTP 207, `auditlog ingest`)."""

    index: int
    event_id: str | None
    reason: str
    errors: list[dict[str, str]]
    code: str = "invalid"

    @classmethod
    def of(cls, invalid: InvalidMessage) -> Rejection:
        return cls(**invalid.report())


@dataclass
class IngestReport:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    """Of the rejected: events whose id is on record with other content."""
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": [r.__dict__ for r in self.rejected],
        }


def _payload(_index: int, item: Any) -> bytes:
    return payload_json(item)


class BatchIngestor:
    def __init__(
        self,
        store: Store,
        directories: Callable[[], Directories],
        *,
        source: str = "api",
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
    ) -> None:
        self._chain = ingest_chain(store.writer)
        self._directories = directories
        self._source = source
        self._max_future_s = max_future_s

    def ingest(
        self,
        items: Sequence[Any],
        *,
        received_at_ms: int,
        key_id: str = "",
        key_infrastructure: str | None = None,
        service_record: bool = False,
    ) -> IngestReport:
        """`key_id`: the credential the items came with, kept on every row; its events must be
        of `key_infrastructure`. `service_record`: the items are the query service's own record
        of reads, the only source of the reserved `audit_log.*` actions."""
        source = "read-audit" if service_record else self._source
        lineage = Lineage(source=source, received_at_ms=received_at_ms, key_id=key_id)
        rules = Rules(
            directories=self._directories(),
            max_future_s=self._max_future_s,
            key_infrastructure=key_infrastructure,
        )
        batch = Batch(messages=1)
        with gc_paused():
            accept(batch, items, lineage, rules, service_record=lambda: service_record, payload=_payload)
            self._chain.submit(batch)
        rejected = sorted((Rejection.of(r) for r in batch.rejects), key=lambda r: r.index)
        return IngestReport(
            received=len(items),
            stored=batch.inserted,
            duplicates=batch.duplicates,
            conflicts=batch.conflicts,
            rejected=rejected,
        )
