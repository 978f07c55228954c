"""Embedded ingestion: decoded JSON values through parse -> normalize -> enrich -> write.

The same steps the Kafka worker runs, without Kafka: used by the HTTP ingest
endpoint in embedded mode, `auditlog ingest FILE` and the demo. Each event is
judged alone; valid events of a batch are stored even when others are rejected,
and rejected ones are kept in `dead_letters` with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from producers.contract.directory import Directories
from producers.contract.event import InvalidEvent, RejectCode, parse_event
from storage.store import Store
from storage.writer import DeadLetter
from stream.batch import claimed
from stream.gc_pause import gc_paused
from stream.steps import (
    DEFAULT_MAX_FUTURE_S,
    Lineage,
    check_key_infrastructure,
    check_not_in_future,
    check_reserved_action,
    ms_to_ch_time,
    process,
)


@dataclass(frozen=True)
class Rejection:
    index: int
    event_id: str | None
    reason: str
    errors: list[dict[str, str]]
    code: RejectCode = "invalid"


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


def _payload(item: Any) -> bytes:
    """The rejected item as JSON, whatever it holds: it must be kept, not fail the batch."""
    try:
        return orjson.dumps(item, default=str)
    except TypeError:
        # orjson stops at 254 levels of nesting; the standard library goes further.
        try:
            return json.dumps(item, default=str).encode()
        except (RecursionError, ValueError):
            return repr(item).encode()[:1_000_000]


class BatchIngestor:
    def __init__(
        self,
        store: Store,
        directories: Callable[[], Directories],
        *,
        source: str = "api",
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
    ) -> None:
        self._store = store
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
        with gc_paused():
            return self._ingest(
                items,
                received_at_ms=received_at_ms,
                key_id=key_id,
                key_infrastructure=key_infrastructure,
                service_record=service_record,
            )

    def _ingest(
        self,
        items: Sequence[Any],
        *,
        received_at_ms: int,
        key_id: str,
        key_infrastructure: str | None,
        service_record: bool,
    ) -> IngestReport:
        report = IngestReport(received=len(items))
        directories = self._directories()
        source = "read-audit" if service_record else self._source
        lineage = Lineage(source=source, received_at_ms=received_at_ms, key_id=key_id)
        rows = []
        row_items: list[int] = []
        letters = []

        def reject(index: int, reason: str, code: RejectCode, errors: list[dict[str, str]]) -> None:
            item = items[index]
            event_id = claimed(item, "event_id")
            report.rejected.append(
                Rejection(index=index, event_id=event_id or None, reason=reason, errors=errors, code=code)
            )
            letters.append(
                DeadLetter(
                    received_at=ms_to_ch_time(received_at_ms),
                    source=source,
                    reason=reason,
                    payload=_payload(item),
                    # A key's letters are its infrastructure's, whatever the input claims.
                    infrastructure=key_infrastructure or claimed(item, "infrastructure"),
                    event_id=event_id,
                    code=code,
                    key_id=key_id,
                )
            )

        for index, item in enumerate(items):
            try:
                event = parse_event(item)
                check_not_in_future(event, lineage, max_future_s=self._max_future_s)
                check_key_infrastructure(event, key_infrastructure)
                check_reserved_action(event, service_record=service_record)
                rows.append(process(event, directories, lineage))
                row_items.append(index)
            except InvalidEvent as exc:
                reject(index, exc.reason, exc.code, [e.model_dump() for e in exc.errors])
        result = self._store.writer.write(rows)
        if result.conflicts:
            where = {id(row): index for row, index in zip(rows, row_items, strict=True)}
            for conflict in result.conflicts:
                reject(
                    where[id(conflict.row)],
                    conflict.reason,
                    "conflict",
                    [{"field": "event_id", "problem": "is already stored with other content"}],
                )
            report.rejected.sort(key=lambda r: r.index)
        self._store.writer.write_dead_letters(letters)
        report.stored = result.inserted
        report.duplicates = result.duplicates
        report.conflicts = len(result.conflicts)
        return report
