"""One batch of Kafka messages through decode -> validate -> normalize -> enrich.

Pure: no Kafka client, no faust, no clock. Every output is a function of the
messages (their bytes, headers and broker coordinates) and the directory, so a
replay of the same messages gives byte-identical rows, normalized events and
dead letters (DESIGN 4.1). The faust edge (`stream.worker_app`) turns its
events into `RawMessage`s and hands the outcome to `stream.sink.Sink`.

Bad input is a value here, not an exception: a message that cannot be decoded,
or an event that fails the contract, becomes a `Rejected` carrying the reason,
and the rest of the batch goes on. A bad event inside an envelope is rejected
alone, with its own JSON as the payload. Anything else that goes wrong (a bug in
a step) raises: the worker must stop rather than dead-letter good input.
`RejectGuard` turns "everything is being rejected" into a stop as well.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import orjson

from producers.contract.directory import Directories
from producers.contract.event import AuditEvent, InvalidEvent, RejectCode, parse_event
from producers.envelope import (
    ENVELOPE_CONTENT_TYPE,
    EVENT_CONTENT_TYPE,
    MalformedMessage,
    content_type_of,
    decode_message,
    signed_by,
)
from storage.record import Row
from storage.writer import DeadLetter
from stream.steps import (
    DEFAULT_MAX_FUTURE_S,
    RESERVED_ACTION_PREFIX,
    Lineage,
    check_not_in_future,
    check_reserved_action,
    directory_for,
    enrich,
    ms_to_ch_time,
    normalize,
)

# A message this large is refused before decoding: JSON parsing it would hold
# several times its size in memory, and no honest producer sends one (the SDK's
# envelopes stay far below). It is still kept, whole, in the DLQ.
DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024

# DLQ reasons travel in a Kafka header and a store column; keep them one readable line.
MAX_REASON_CHARS: Final = 1000

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka record as the pipeline sees it. `timestamp_ms` is the broker's timestamp."""

    value: bytes | None
    headers: Headers
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input the pipeline refuses, with why. `payload` is what the DLQ keeps.

    For an undecodable message the payload is the message's original bytes; for
    one bad event of an envelope it is that event's own JSON, and `index` is its
    position in the envelope.
    """

    message: RawMessage
    reason: str
    payload: bytes
    index: int | None = None
    code: RejectCode = "invalid"
    infrastructure: str = ""
    event_id: str = ""

    def dead_letter(self, source: str = "kafka") -> DeadLetter:
        return DeadLetter(
            received_at=ms_to_ch_time(self.message.timestamp_ms),
            source=source,
            reason=self.reason,
            payload=self.payload,
            topic=self.message.topic,
            partition=self.message.partition,
            offset=self.message.offset,
            infrastructure=self.infrastructure,
            event_id=self.event_id,
            code=self.code,
        )


def claimed(item: object, name: str) -> str:
    """What refused input says its `infrastructure` or `event_id` is, to file its dead letter
    under; '' where it says nothing readable."""
    value = item.get(name) if isinstance(item, dict) else None
    return value[:256] if isinstance(value, str) else ""


def key_infrastructure(key: bytes | None) -> str:
    """The infrastructure of a message the SDK keyed `infrastructure/kind/id`, for a message
    refused before its events could be read."""
    if not key or b"/" not in key:
        return ""
    return key.split(b"/", 1)[0].decode("utf-8", errors="replace")[:256]


@dataclass
class BatchOutcome:
    """What one batch became. `verdicts` holds, in input order, True per accepted event."""

    rows: list[Row] = field(default_factory=list)
    normalized_events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[Rejected] = field(default_factory=list)
    verdicts: list[bool] = field(default_factory=list)
    messages: int = 0
    sources: list[tuple[RawMessage, int | None]] = field(default_factory=list)
    """Per row: the message it came in, and its index when that was an envelope."""

    def without_conflicts(self, conflicts: Sequence[tuple[str, str]]) -> BatchOutcome:
        """This batch with the rows the store refused as conflicts (event id, reason) moved to
        the dead letters: they must not reach the SIEM stream as if they were on record."""
        if not conflicts:
            return self
        reasons = dict(conflicts)
        out = BatchOutcome(
            dead_letters=list(self.dead_letters), verdicts=self.verdicts, messages=self.messages
        )
        for row, event, source in zip(self.rows, self.normalized_events, self.sources, strict=True):
            reason = reasons.get(row["event_id"])
            if reason is None:
                out.rows.append(row)
                out.normalized_events.append(event)
                out.sources.append(source)
            else:
                message, index = source
                out.dead_letters.append(
                    Rejected(
                        message,
                        _one_line(reason),
                        orjson.dumps(event),
                        index,
                        code="conflict",
                        infrastructure=row["infrastructure"],
                        event_id=row["event_id"],
                    )
                )
        return out

    @property
    def events(self) -> int:
        """Events in: every accepted event plus every rejection (an undecodable message counts once)."""
        return len(self.rows) + len(self.dead_letters)


def _one_line(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


@lru_cache(maxsize=4096)
def rfc3339_ms(ms: int) -> str:
    # A batch shares one broker timestamp per message: formatted once, not per event.
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire_event(event: AuditEvent, row: Row, lineage: Lineage) -> dict[str, Any]:
    """The normalized, enriched event for `audit.events.v1`: the query API's event shape plus lineage.

    Built from the normalized event and its stored row, so a SIEM reading the
    stream and an analyst reading the API see the same names and the same values.
    """
    actor = event.actor
    return {
        "event_id": row["event_id"],
        "schema_version": event.schema_version,
        "occurred_at": event.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "received_at": rfc3339_ms(lineage.received_at_ms),
        "infrastructure": event.infrastructure,
        "environment": event.environment,
        "actor": {
            "id": actor.id,
            "name": row["actor_name"] or None,
            "type": actor.type,
            "ip": actor.ip,
            "user_agent": actor.user_agent,
            "session_id": actor.session_id,
        },
        "action": event.action,
        "target": {"kind": event.target.kind, "id": event.target.id, "name": row["target_name"] or None},
        "related": [
            {"kind": r.kind, "id": r.id, "name": name or None}
            for r, name in zip(event.related, row["related_names"], strict=True)
        ],
        "outcome": event.outcome,
        "reason": event.reason,
        "changes": [c.model_dump(mode="json") for c in event.changes],
        "details": event.details,
        "source": event.source.model_dump(mode="json"),
        "request_id": event.request_id,
        "correlation_id": event.correlation_id,
        "enrichment": {
            "plan_application_ids": row["plan_app_ids"],
            "application_team_id": row["app_team_id"] or None,
        },
        "lineage": {"topic": lineage.topic, "partition": lineage.partition, "offset": lineage.offset},
    }


def process_batch(
    messages: Sequence[RawMessage],
    directories: Directories,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    signing_key: bytes = b"",
) -> BatchOutcome:
    """`signing_key`: the secret the query service signs its messages with; only a message
    signed with it may carry the reserved `audit_log.*` actions."""
    """Decode, validate, normalize and enrich every event of `messages`, in order."""
    out = BatchOutcome(messages=len(messages))

    def reject(
        message: RawMessage,
        reason: str,
        payload: bytes,
        code: RejectCode,
        index: int | None = None,
        item: object = None,
    ) -> None:
        infrastructure = claimed(item, "infrastructure") or key_infrastructure(message.key)
        event_id = claimed(item, "event_id")
        out.dead_letters.append(
            Rejected(message, _one_line(reason), payload, index, code, infrastructure, event_id)
        )
        out.verdicts.append(False)

    for message in messages:
        value = message.value
        if value is None:
            reject(message, "empty message: the record has no value", b"", "empty")
            continue
        if len(value) > max_message_bytes:
            reject(
                message,
                f"message of {len(value)} bytes exceeds the {max_message_bytes}-byte limit; not decoded",
                value,
                "too_large",
            )
            continue
        try:
            items = decode_message(value, message.headers)
        except MalformedMessage as exc:
            reject(message, exc.reason, value, exc.code)
            continue
        single = not _is_envelope(value, message.headers, items)
        signed: bool | None = None  # checked once per message, when an event needs it
        lineage = Lineage(
            source="kafka",
            received_at_ms=message.timestamp_ms,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        for index, item in enumerate(items):
            try:
                event = normalize(parse_event(item))
                check_not_in_future(event, lineage, max_future_s=max_future_s)
                if event.action.startswith(RESERVED_ACTION_PREFIX):
                    if signed is None:
                        signed = signed_by(signing_key, value, message.headers)
                    check_reserved_action(event, service_record=signed)
                directory = directory_for(event, directories)
            except InvalidEvent as exc:
                if single:
                    reject(message, exc.reason, value, exc.code, item=item)
                else:
                    reject(message, exc.reason, orjson.dumps(item, default=str), exc.code, index, item)
                continue
            row = enrich(event, directory, lineage)
            out.rows.append(row)
            out.normalized_events.append(wire_event(event, row, lineage))
            out.sources.append((message, None if single else index))
            out.verdicts.append(True)
    return out


def _is_envelope(value: bytes, headers: Headers, items: list[object]) -> bool:
    # A single-event message decodes to one item that is the whole message; an
    # envelope of one event does not. Only unlabelled one-item messages need a look.
    if len(items) != 1:
        return True
    content_type = content_type_of(headers)
    if content_type in (EVENT_CONTENT_TYPE, ENVELOPE_CONTENT_TYPE):
        return content_type == ENVELOPE_CONTENT_TYPE
    try:
        whole = orjson.loads(value)
    except orjson.JSONDecodeError:
        return True
    return bool(whole != items[0])


# ---------------------------------------------------------------- reject guard


class TooManyRejects(RuntimeError):
    """Rejects crossed a limit: most likely bad code or a broken producer, not bad luck."""


class RejectGuard:
    """Stops the worker instead of draining the topic into the DLQ.

    Trips when, over the last `window` events (and once at least `min_sample`
    were seen), the share of rejects exceeds `max_ratio`, or when more than
    `max_consecutive` events in a row were rejected. The state covers the
    events observed so far; a tripped batch must not be committed.
    """

    def __init__(
        self,
        max_ratio: float = 0.5,
        max_consecutive: int = 1000,
        min_sample: int = 200,
        *,
        window: int = 10_000,
    ) -> None:
        if not 0.0 <= max_ratio <= 1.0:
            raise ValueError("max_ratio must be between 0 and 1")
        if max_consecutive < 1 or min_sample < 1 or window < min_sample:
            raise ValueError("max_consecutive and min_sample must be >= 1, and window >= min_sample")
        self.max_ratio = max_ratio
        self.max_consecutive = max_consecutive
        self.min_sample = min_sample
        self._window: deque[bool] = deque(maxlen=window)
        self._rejects_in_window = 0
        self._run = 0

    @property
    def consecutive_rejects(self) -> int:
        return self._run

    @property
    def reject_ratio(self) -> float:
        return self._rejects_in_window / len(self._window) if self._window else 0.0

    def observe(self, verdicts: Sequence[bool]) -> None:
        """Account for one batch's verdicts (True = accepted); raise `TooManyRejects` past a limit."""
        window = self._window
        longest = self._run
        for accepted in verdicts:
            if len(window) == window.maxlen and not window[0]:
                self._rejects_in_window -= 1
            window.append(accepted)
            if accepted:
                self._run = 0
            else:
                self._rejects_in_window += 1
                self._run += 1
                longest = max(longest, self._run)
        if longest > self.max_consecutive:
            raise TooManyRejects(
                f"{longest} consecutive events rejected (limit {self.max_consecutive}): "
                "stopping instead of dead-lettering the topic"
            )
        if len(window) >= self.min_sample and self.reject_ratio > self.max_ratio:
            raise TooManyRejects(
                f"{self._rejects_in_window} of the last {len(window)} events rejected "
                f"({self.reject_ratio:.0%} > {self.max_ratio:.0%}): "
                "stopping instead of dead-lettering the topic"
            )
