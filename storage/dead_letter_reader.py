"""What administrators read of refused input: the `dead_letters` of their infrastructure.

A dead letter is attributed to the infrastructure its input claims (or the API key it
was posted with); input unreadable that far (not JSON, an empty record) has none and
is shown to no caller, only to an operator with the store (`auditlog dead-letters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.engine import Engine
from storage.migrations import check_identifier
from storage.reader import ReadLimits

MAX_PAYLOAD_CHARS = 64 * 1024
"""A listing shows this much of each payload; the table keeps it whole."""


@dataclass(frozen=True, slots=True)
class LetterPage:
    items: list[dict[str, Any]]
    more: bool
    """More letters match than the page holds: narrow the range or lower `until`."""


class DeadLetterReader:
    def __init__(self, engine: Engine, *, database: str, limits: ReadLimits | None = None) -> None:
        self._engine = engine
        self._db = check_identifier(database)
        self._limits = (limits or ReadLimits()).clause()

    def page(
        self,
        *,
        infrastructure: str | None,
        code: str | None = None,
        event_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
    ) -> LetterPage:
        """Newest first. `infrastructure` None: every letter, attributed or not (operators only)."""
        conditions = ["1"]
        params: dict[str, Any] = {"limit": limit + 1, "max_payload": MAX_PAYLOAD_CHARS}
        for name, value, condition in (
            ("infra", infrastructure, "infrastructure = {infra:String}"),
            ("code", code, "reason_code = {code:String}"),
            ("event_id", event_id, "event_id = {event_id:String}"),
            ("since", since_ms, "received_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"),
            ("until", until_ms, "received_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"),
        ):
            if value is not None:
                conditions.append(condition)
                params[name] = value
        rows = self._engine.query(
            "SELECT toUnixTimestamp64Milli(received_at) AS received_at_ms, "
            "ingest_source, infrastructure, event_id, reason_code, reason, ingest_key_id, "
            "kafka_topic, kafka_partition, kafka_offset, length(payload) AS payload_bytes, "
            "substringUTF8(payload, 1, {max_payload:UInt32}) AS payload "
            f"FROM {self._db}.dead_letters WHERE {' AND '.join(conditions)} "
            "ORDER BY received_at DESC, kafka_topic, kafka_partition, kafka_offset "
            f"LIMIT {{limit:UInt32}} SETTINGS {self._limits}",
            params=params,
        )
        more = len(rows) > limit
        return LetterPage(items=[_letter(r) for r in rows[:limit]], more=more)


def _letter(r: dict[str, Any]) -> dict[str, Any]:
    kafka = None
    if r["kafka_topic"]:
        kafka = {
            "topic": r["kafka_topic"],
            "partition": int(r["kafka_partition"]),
            "offset": int(r["kafka_offset"]),
        }
    return {
        "received_at_ms": int(r["received_at_ms"]),
        "source": r["ingest_source"],
        "infrastructure": r["infrastructure"] or None,
        "event_id": r["event_id"] or None,
        "code": r["reason_code"],
        "reason": r["reason"],
        "ingest_key_id": r["ingest_key_id"] or None,
        "kafka": kafka,
        "payload_bytes": int(r["payload_bytes"]),
        "payload": r["payload"],
    }
