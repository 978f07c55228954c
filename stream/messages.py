"""What flows through the chain: raw input, where it came from, and the one kind of refusal.

`InvalidMessage` is the only reject type, whatever the input path (a Kafka message, an
HTTP batch, a file, the demo) and whatever the refusal (undecodable, against the
contract, forged, a conflict with a stored id): its reason in words, a stable code,
the payload as refused, and where it came from. The dead-letter step keeps it; the
HTTP ingest report shows it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import orjson

from producers.contract.event import FieldError, RejectCode
from storage.record import Row
from storage.writer import DeadLetter

Headers = tuple[tuple[str, bytes], ...]

# DLQ reasons travel in a Kafka header and a store column; keep them one readable line.
MAX_REASON_CHARS: Final = 1000


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka record as the chain sees it. `timestamp_ms` is the broker's timestamp."""

    value: bytes | None
    headers: Headers
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a row came from. `received_at_ms` is the broker timestamp, or the edge's receipt time."""

    source: str
    received_at_ms: int
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key_id: str = ""
    """The API key an event was posted with (HTTP ingest)."""
    key: bytes | None = None
    """The Kafka message key (infrastructure/kind/id from the SDK): a dead letter keeps it."""

    @classmethod
    def of(cls, message: RawMessage) -> Lineage:
        return cls(
            source="kafka",
            received_at_ms=message.timestamp_ms,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
        )


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """Input refused, with why. `payload` is what the dead letter keeps: a Kafka message's own
    bytes when the whole message is refused, else the one event's JSON; `index` its position
    in the batch or envelope. `infrastructure` and `event_id` are what the input claims."""

    reason: str
    code: RejectCode
    payload: bytes
    lineage: Lineage
    index: int | None = None
    infrastructure: str = ""
    event_id: str = ""
    errors: tuple[FieldError, ...] = ()

    def dead_letter(self) -> DeadLetter:
        lineage = self.lineage
        return DeadLetter(
            received_at=ms_to_ch_time(lineage.received_at_ms),
            source=lineage.source,
            reason=self.reason,
            payload=self.payload,
            topic=lineage.topic,
            partition=lineage.partition,
            offset=lineage.offset,
            infrastructure=self.infrastructure,
            event_id=self.event_id,
            code=self.code,
            key_id=lineage.key_id,
        )

    def report(self) -> dict[str, Any]:
        """As the HTTP ingest report lists it."""
        return {
            "index": self.index,
            "event_id": self.event_id or None,
            "reason": self.reason,
            "code": self.code,
            "errors": [e.model_dump() for e in self.errors],
        }


def payload_json(item: object) -> bytes:
    """Refused input as JSON, whatever it holds: it must be kept, never fail its batch. orjson
    refuses integers past 64 bits and nesting past 254 levels, both of which strict JSON
    decodes and the contract then refuses."""
    try:
        return orjson.dumps(item, default=str)
    except TypeError:
        try:
            return json.dumps(item, default=str).encode()
        except (RecursionError, ValueError):
            return repr(item).encode()[:1_000_000]


def one_line(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


def claimed(item: object, name: str) -> str:
    """What refused input says its `infrastructure` or `event_id` is, to file its dead letter
    under, in the form a stored row has it (trimmed; an id in the UUID's canonical form);
    '' where it says nothing readable."""
    value = item.get(name) if isinstance(item, dict) else None
    if not isinstance(value, str):
        return ""
    value = value.strip()[:256]
    if name == "event_id":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return value
    return value


def key_infrastructure(key: bytes | None) -> str:
    """The infrastructure of a message the SDK keyed `infrastructure/kind/id`, for a message
    refused before its events could be read."""
    if not key or b"/" not in key:
        return ""
    return key.split(b"/", 1)[0].decode("utf-8", errors="replace")[:256]


@dataclass
class Batch:
    """One batch on its way down the chain; each step fills in its part.

    `rows[i]`, `events[i]` (the SIEM shape) and `origins[i]` describe one accepted
    event; `rejects` every refusal so far (the insert step adds conflicts); `offsets`
    are the edge's, opaque here, committed by the last step.
    """

    messages: int = 0
    rows: list[Row] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    rejects: list[InvalidMessage] = field(default_factory=list)
    verdicts: list[bool] = field(default_factory=list)
    """In input order, True per accepted event: what the reject guard judges."""
    offsets: dict[Any, int] = field(default_factory=dict)
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    produced: int = 0

    @property
    def received(self) -> int:
        """Events in: every accepted event plus every refusal (an undecodable message counts once)."""
        return len(self.verdicts)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an accepted event came from, to dead-letter it if the store then refuses it."""

    lineage: Lineage
    index: int | None
    item: object


@lru_cache(maxsize=4096)
def ms_to_ch_time(ms: int) -> str:
    # A batch shares one broker timestamp or receipt time: cached, formatted once.
    return format_ch_time(datetime.fromtimestamp(ms / 1000, tz=UTC))


def format_ch_time(ts: datetime) -> str:
    """DateTime64(3) literal in UTC, the form ClickHouse parses fastest from JSONEachRow."""
    ts = ts.astimezone(UTC)
    # An f-string is several times cheaper than strftime, and this runs twice per event.
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d} "
        f"{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}.{ts.microsecond // 1000:03d}"
    )
