"""How events travel in Kafka messages: alone, or batched in an envelope.

A faust worker spends about 190 µs of CPU per Kafka message whatever its size
(DESIGN section 7), so producers group events bound for the same partition into
one message, an *envelope*::

    {"envelope": 1, "events": [<event>, <event>, ...]}

with the header ``content-type: application/vnd.auditlog.envelope+json``. A
message holding one event is the plain JSON event with
``content-type: application/vnd.auditlog.event+json``; messages from producers
that set no header (or ``application/json``) are recognised by their shape, since
a contract event can never carry an ``envelope`` field.

`decode_message` only splits a message into its JSON items. Validating each item
is the consumer's job (`producers.contract.parse_event`), so that one bad event
inside an envelope can be dead-lettered alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import orjson

from producers.contract import strict_json

CONTENT_TYPE_HEADER: Final = "content-type"
EVENT_CONTENT_TYPE: Final = "application/vnd.auditlog.event+json"
ENVELOPE_CONTENT_TYPE: Final = "application/vnd.auditlog.envelope+json"
_PLAIN_JSON = "application/json"

ENVELOPE_VERSION: Final = 1
SUPPORTED_ENVELOPE_VERSIONS: Final = frozenset({ENVELOPE_VERSION})

# Kafka's default message.max.bytes is 1,000,012 bytes (broker) and 1,000,000
# (librdkafka); 900 KB leaves room for headers and record overhead so an envelope
# fits on a broker with default settings.
DEFAULT_MAX_ENVELOPE_BYTES: Final = 900_000
DEFAULT_MAX_ENVELOPE_EVENTS: Final = 1000
# Guards consumers against a hostile or broken producer; far above what
# DEFAULT_MAX_ENVELOPE_BYTES allows for real events.
MAX_EVENTS_PER_ENVELOPE: Final = 100_000

_PREFIX: Final = b'{"envelope":1,"events":['
_SUFFIX: Final = b"]}"
ENVELOPE_OVERHEAD: Final = len(_PREFIX) + len(_SUFFIX)

Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None

MalformedCode = Literal[
    "empty", "not_json", "truncated", "envelope_shape", "envelope_version", "content_type"
]


class MalformedMessage(ValueError):
    """A Kafka message that is not a JSON event nor a valid envelope.

    `reason` is one line fit for a DLQ header; `code` is a stable machine-readable
    category.
    """

    def __init__(self, reason: str, code: MalformedCode = "not_json") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code: MalformedCode = code


# ------------------------------------------------------------------- encoding


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One JSON-ready event (see `producers.contract.event_to_wire`) as a message value."""
    return orjson.dumps(event)


def encode_envelope(events: list[dict[str, Any]]) -> bytes:
    """An envelope holding `events` (JSON-ready dicts), in order. No size limit
    applies here; `split_envelopes` keeps each envelope under one."""
    if not events:
        raise ValueError("an envelope holds at least one event")
    return orjson.dumps({"envelope": ENVELOPE_VERSION, "events": events})


def pack_envelope(encoded_events: Sequence[bytes]) -> bytes:
    """An envelope from events already encoded with `encode_event` (no re-encoding)."""
    if not encoded_events:
        raise ValueError("an envelope holds at least one event")
    return _PREFIX + b",".join(encoded_events) + _SUFFIX


def envelope_size(encoded_sizes_total: int, count: int) -> int:
    """Bytes of an envelope holding `count` pre-encoded events totalling `encoded_sizes_total`."""
    return ENVELOPE_OVERHEAD + encoded_sizes_total + max(0, count - 1)


def split_envelopes(
    encoded_events: Iterable[bytes],
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    max_events: int = DEFAULT_MAX_ENVELOPE_EVENTS,
) -> Iterator[list[bytes]]:
    """Group pre-encoded events, in order, into runs that each fit one envelope.

    An event that alone exceeds `max_bytes` raises ValueError: it cannot travel
    in any message this limit allows.
    """
    run: list[bytes] = []
    size = ENVELOPE_OVERHEAD
    for data in encoded_events:
        if ENVELOPE_OVERHEAD + len(data) > max_bytes:
            raise ValueError(
                f"an event of {len(data):,} bytes exceeds the envelope limit of {max_bytes:,} bytes"
            )
        added = len(data) + (1 if run else 0)
        if run and (size + added > max_bytes or len(run) >= max_events):
            yield run
            run, size, added = [], ENVELOPE_OVERHEAD, len(data)
        run.append(data)
        size += added
    if run:
        yield run


# ------------------------------------------------------------------- decoding


def content_type_of(headers: Headers) -> str | None:
    """The media type of a message's ``content-type`` header (parameters and case dropped)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name.lower() != CONTENT_TYPE_HEADER or value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return text.split(";", 1)[0].strip().lower() or None
    return None


SIGNATURE_HEADER = "auditlog-signature"
"""HMAC-SHA256 of the message value, hex, with a secret the query service and the workers
share: it authenticates the query service's own record of reads (`audit_log.*`)."""


def signature(secret: bytes, value: bytes) -> bytes:
    return hmac.new(secret, value, hashlib.sha256).hexdigest().encode()


def signed_by(secret: bytes, value: bytes | None, headers: Headers) -> bool:
    """True if the message carries a valid signature made with `secret`."""
    if not secret or value is None:
        return False
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    expected = signature(secret, value)
    for name, got in items:
        if name.lower() == SIGNATURE_HEADER and got is not None:
            given = got if isinstance(got, bytes) else got.encode()
            if hmac.compare_digest(given, expected):
                return True
    return False


def decode_message(value: bytes | None, headers: Headers = None) -> list[object]:
    """The decoded JSON items of one Kafka message: one for a single event, n for an envelope.

    Items are not validated as events. Raises `MalformedMessage` when the bytes are
    not JSON, are truncated, or claim to be an envelope of the wrong shape or of an
    unknown envelope version.
    """
    content_type = content_type_of(headers)
    if content_type not in (None, _PLAIN_JSON, EVENT_CONTENT_TYPE, ENVELOPE_CONTENT_TYPE):
        raise MalformedMessage(
            f"unsupported content-type {content_type[:100]!r}: expected {EVENT_CONTENT_TYPE} "
            f"or {ENVELOPE_CONTENT_TYPE}",
            "content_type",
        )
    if value is None or not value.strip():
        raise MalformedMessage("message has no value", "empty")
    try:
        doc = strict_json.loads(value)
    except strict_json.StrictJSONError as exc:
        ends_early = exc.pos is not None and exc.pos >= len(value.rstrip())
        if ends_early or exc.message.startswith("Unterminated string"):
            raise MalformedMessage(
                f"truncated JSON: the value ends after {len(value):,} bytes in the middle of a document",
                "truncated",
            ) from None
        raise MalformedMessage(f"not JSON: {exc.message}", "not_json") from None
    if content_type == ENVELOPE_CONTENT_TYPE:
        return _envelope_items(doc)
    if content_type != EVENT_CONTENT_TYPE and isinstance(doc, dict) and "envelope" in doc:
        return _envelope_items(doc)
    return [doc]


def _envelope_items(doc: object) -> list[object]:
    if not isinstance(doc, dict):
        raise MalformedMessage(f"an envelope must be a JSON object, got {_json_type(doc)}", "envelope_shape")
    version = doc.get("envelope")
    if isinstance(version, bool) or not isinstance(version, int):
        raise MalformedMessage(
            f'an envelope needs an integer "envelope" version, got {_json_type(version)}', "envelope_shape"
        )
    if version not in SUPPORTED_ENVELOPE_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_ENVELOPE_VERSIONS))
        raise MalformedMessage(
            f"unknown envelope version {version}: this build reads {supported}", "envelope_version"
        )
    # Version 1 has exactly two fields; anything else means a different format
    # that would need its own version number.
    extra = sorted(set(doc) - {"envelope", "events"})
    if extra:
        names = ", ".join(repr(k) for k in extra[:5])
        raise MalformedMessage(f"envelope version 1 has unexpected fields {names}", "envelope_shape")
    events = doc.get("events")
    if not isinstance(events, list):
        raise MalformedMessage(
            f'envelope "events" must be a JSON array, got {_json_type(events)}', "envelope_shape"
        )
    if not events:
        raise MalformedMessage('envelope "events" is empty', "envelope_shape")
    if len(events) > MAX_EVENTS_PER_ENVELOPE:
        raise MalformedMessage(
            f"envelope holds {len(events):,} events, more than the limit of {MAX_EVENTS_PER_ENVELOPE:,}",
            "envelope_shape",
        )
    return list(events)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
