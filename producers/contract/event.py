"""Wire contract v1: one task performed by an IT user in the infrastructure console.

Validation is strict on purpose: a producer that sends a number where a string
belongs has a bug, and coercing it would hide that bug in the audit trail.
Every error names the field and the problem (see `InvalidEvent`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from producers.contract import strict_json

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
CURRENT_SCHEMA_VERSION = 1

# Bounds keep one event from swamping a row or a SIEM; generous for real payloads.
MAX_ID_LEN = 256
MAX_NAME_LEN = 512
MAX_RELATED = 1000
MAX_CHANGES = 1000
MAX_DETAILS_BYTES = 256 * 1024
MAX_CHANGES_BYTES = 256 * 1024
MAX_SAFE_INTEGER = 2**53 - 1
MAX_JSON_DEPTH = 32
MIN_YEAR, MAX_YEAR = 1970, 2200


class EntityKind(StrEnum):
    APPLICATION = "application"
    DEPLOYMENT_PLAN = "deployment_plan"
    USER = "user"
    TEAM = "team"
    ROLE = "role"
    ENVIRONMENT = "environment"
    INFRASTRUCTURE = "infrastructure"


ENTITY_KINDS: tuple[str, ...] = tuple(k.value for k in EntityKind)
KindName = Literal["application", "deployment_plan", "user", "team", "role", "environment", "infrastructure"]

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, strip_whitespace=True)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LEN)]
ShortText = Annotated[str, StringConstraints(max_length=4096)]

# Loose on purpose: `normalize` canonicalizes case, separators and aliases.
_ACTION_RE = re.compile(r"^[A-Za-z][A-Za-z_\- ]*\.[A-Za-z][A-Za-z0-9_\-. ]*$")


def _parse_rfc3339(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00.123Z") from None
    else:
        raise ValueError("must be an RFC 3339 timestamp string")
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone offset (Z or +hh:mm)")
    parsed = parsed.astimezone(UTC)
    # ClickHouse's DateTime64 spans 1900-2299; an audit event from before 1970 is a bug.
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise ValueError(f"must lie between the years {MIN_YEAR} and {MAX_YEAR}")
    return parsed


Timestamp = Annotated[datetime, BeforeValidator(_parse_rfc3339)]


def rfc3339_ms(ms: int) -> str:
    """Epoch milliseconds as the contract writes a time: RFC 3339, milliseconds, UTC as `Z`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_ip(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 or IPv6 address string")
    return _canonical_ip(value)


@lru_cache(maxsize=65536)
def _canonical_ip(value: str) -> str:
    # A fleet has far fewer client addresses than events: parse each one once.
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value[:64]!r} is not an IPv4 or IPv6 address") from None
    # An IPv4 client seen through a dual-stack socket is still an IPv4 client to an analyst.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


_Strict = ConfigDict(extra="forbid", strict=True, frozen=True)


class Actor(BaseModel):
    model_config = _Strict

    id: Id
    name: Name | None = None
    type: Literal["user", "service", "system"] = "user"
    ip: Annotated[str | None, BeforeValidator(_check_ip)] = None
    user_agent: ShortText | None = None
    session_id: Id | None = None


class EntityRef(BaseModel):
    model_config = _Strict

    kind: KindName
    id: Id
    name: Name | None = None


def json_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why `value` is no faithful audit detail, or None: it nests deeper than `limit`
    containers, or holds a number JSON consumers cannot read back exactly (an integer
    beyond 2^53, which JavaScript and many SIEMs round; NaN or an infinity, which JSON
    cannot say). Iterative: no recursion limit."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return f"holds the integer {str(item)[:40]}, beyond what JSON readers keep exactly (2^53)"
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"holds the number {item}, which JSON cannot represent"
            continue
        else:
            continue
        if depth > limit:
            return f"nests deeper than {limit} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def _faithful(value: Any) -> Any:
    # Deeper JSON is no audit detail and would hit encoders' recursion limits; a number
    # stored other than it was sent would be evidence silently changed.
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


ShallowJson = Annotated[Any, BeforeValidator(_faithful)]


class Change(BaseModel):
    model_config = _Strict

    field: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LEN)]
    old: ShallowJson = None
    new: ShallowJson = None


class Source(BaseModel):
    model_config = _Strict

    service: Annotated[str, StringConstraints(max_length=MAX_NAME_LEN)] = ""
    host: Annotated[str, StringConstraints(max_length=MAX_NAME_LEN)] = ""
    version: Annotated[str, StringConstraints(max_length=128)] = ""


class AuditEvent(BaseModel):
    """One task, as a producer sends it (contract v1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1]
    event_id: Annotated[UUID, Field(strict=False)]
    occurred_at: Timestamp
    infrastructure: Id
    environment: Id | None = None
    actor: Actor
    action: Annotated[str, StringConstraints(min_length=3, max_length=128)]
    target: EntityRef
    # Factories, not `= []`: pydantic deep-copies a mutable default into every instance
    # (parse_event of a minimal event: 8.3 -> 6.3 us).
    related: Annotated[list[EntityRef], Field(max_length=MAX_RELATED, default_factory=list)]
    outcome: Literal["success", "failure", "denied"] = "success"
    reason: ShortText | None = None
    changes: Annotated[list[Change], Field(max_length=MAX_CHANGES, default_factory=list)]
    details: dict[str, Any] = Field(default_factory=dict)
    source: Source = Field(default_factory=Source)
    request_id: Id | None = None
    correlation_id: Id | None = None

    @field_validator("action")
    @classmethod
    def _action_shape(cls, value: str) -> str:
        if not _ACTION_RE.match(value):
            raise ValueError("must look like <entity_kind>.<verb>, e.g. application.deploy")
        return value

    @field_validator("details", mode="before")
    @classmethod
    def _details_depth(cls, value: Any) -> Any:
        return _faithful(value)

    @field_validator("changes")
    @classmethod
    def _changes_size(cls, value: list[Change]) -> list[Change]:
        if value:
            size = len(orjson.dumps([(c.field, c.old, c.new) for c in value], default=str))
            if size > MAX_CHANGES_BYTES:
                raise ValueError(f"is larger than {MAX_CHANGES_BYTES} bytes once encoded")
        return value

    @field_validator("details")
    @classmethod
    def _details_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(orjson.dumps(value, default=str)) > MAX_DETAILS_BYTES:
            raise ValueError(f"is larger than {MAX_DETAILS_BYTES} bytes once encoded")
        return value


class FieldError(BaseModel):
    field: str
    problem: str


RejectCode = Literal[
    # the event itself
    "invalid", "future", "forged", "foreign_infrastructure", "unknown_infrastructure", "conflict",
    # the Kafka message around it (producers.envelope.MalformedCode), and its size
    "empty", "not_json", "truncated", "envelope_shape", "envelope_version", "content_type", "too_large",
]  # fmt: skip
"""Why input was refused, as a stable code kept beside the reason's words on every dead
letter: what an administrator filters by and a SIEM maps, while the words may change."""


class InvalidEvent(Exception):
    """An event that cannot be accepted. `reason` is one line fit for a DLQ header."""

    def __init__(
        self, reason: str, errors: list[FieldError] | None = None, *, code: RejectCode = "invalid"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []
        self.code: RejectCode = code

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "code": self.code, "errors": [e.model_dump() for e in self.errors]}


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(FieldError(field=loc, problem=msg))
    return out


def parse_event(obj: Any) -> AuditEvent:
    """Validate one decoded JSON value as a contract event, or raise `InvalidEvent`."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version is None:
        raise InvalidEvent(
            "schema_version is missing", [FieldError(field="schema_version", problem="is required")]
        )
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        raise InvalidEvent(
            f"unsupported schema_version {version!r}: this build accepts {supported}",
            [FieldError(field="schema_version", problem=f"unsupported version {version!r}")],
        )
    try:
        return AuditEvent.model_validate(obj)
    except ValidationError as exc:
        errors = _field_errors(exc)
        summary = "; ".join(f"{e.field}: {e.problem}" for e in errors[:5])
        raise InvalidEvent(f"invalid event: {summary}", errors) from None


def decode_event_bytes(data: bytes) -> AuditEvent:
    """Decode and validate one JSON-encoded event."""
    try:
        obj = strict_json.loads(data)
    except strict_json.StrictJSONError as exc:
        raise InvalidEvent(f"not valid JSON: {exc.message}") from None
    return parse_event(obj)


def event_to_wire(event: AuditEvent) -> dict[str, Any]:
    """The JSON-ready form of an event, as producers send it."""
    return event.model_dump(mode="json", exclude_none=True)
