"""The bytes a leaf hashes: one stored event, canonical and versioned (`auditlog/leaf/v1`).

A leaf's data is five netstrings (`<byte length>:<bytes>,`, lengths in decimal
ASCII, bytes UTF-8):

1. the version tag `auditlog/leaf/v1`;
2. the log's name;
3. the leaf's index in it (decimal);
4. the event's `occurred_at`, in milliseconds since the epoch (decimal);
5. `body`: the lowercase hex SHA-256 of the netstrings of every field of
   `PUBLIC_FIELDS`, in that order, followed by the netstring of `sealed`, the
   lowercase hex SHA-256 of the netstrings of `SEALED_FIELDS` (the internal
   columns an export does not show but the store's verification checks).

The store keeps each leaf's time and body beside its hash, so a leaf whose row a
retention policy removed still proves when its event occurred: expired, not
deleted, is a claim the signed tree backs.

Values: strings as stored (an absent optional field is the empty string); integers in
decimal; UUIDs in lowercase 8-4-4-4-12 form; times as milliseconds since the epoch;
a list is one netstring holding its elements' netstrings. `changes` and `details` are
the JSON texts as stored (sorted keys, compact). The store computes the same bytes in
SQL (`storage.leaf_sql`), so a check of every row needs no Python per row.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal

from producers.contract.tlog.merkle import leaf_hash, verify_inclusion

VERSION: Final = "auditlog/leaf/v1"

Kind = Literal["str", "int", "uuid", "ms", "strs"]

PUBLIC_FIELDS: Final[tuple[tuple[str, Kind], ...]] = (
    ("event_id", "uuid"),
    ("schema_version", "int"),
    ("occurred_at", "ms"),
    ("received_at", "ms"),
    ("infrastructure", "str"),
    ("environment", "str"),
    ("actor_id", "str"),
    ("actor_name", "str"),
    ("actor_type", "str"),
    ("actor_ip", "str"),
    ("actor_user_agent", "str"),
    ("actor_session_id", "str"),
    ("action", "str"),
    ("target_kind", "str"),
    ("target_id", "str"),
    ("target_name", "str"),
    ("related_kinds", "strs"),
    ("related_ids", "strs"),
    ("related_names", "strs"),
    ("outcome", "str"),
    ("reason", "str"),
    ("changes", "str"),
    ("details", "str"),
    ("source_service", "str"),
    ("source_host", "str"),
    ("source_version", "str"),
    ("request_id", "str"),
    ("correlation_id", "str"),
    ("plan_app_ids", "strs"),
    ("app_team_id", "str"),
    ("ingest_source", "str"),
    ("ingest_key_id", "str"),
)
SEALED_FIELDS: Final[tuple[tuple[str, Kind], ...]] = (
    ("content_hash", "int"),
    ("entity_keys", "strs"),
    ("scope_key", "str"),
    ("kafka_topic", "str"),
    ("kafka_partition", "int"),
    ("kafka_offset", "int"),
)


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def _value(kind: Kind, value: Any) -> bytes:
    if kind == "strs":
        return b"".join(netstring(str(v).encode()) for v in value)
    return str(value).encode()


def _fields(fields: Sequence[tuple[str, Kind]], values: Mapping[str, Any]) -> bytes:
    return b"".join(netstring(_value(kind, values[name])) for name, kind in fields)


def sealed_digest(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(_fields(SEALED_FIELDS, values)).hexdigest()


def body_digest(values: Mapping[str, Any], *, sealed: str | None = None) -> str:
    """The event's fields, hashed: `sealed` when the sealed fields themselves are not at hand
    (a proof carries the digest)."""
    seal = sealed if sealed is not None else sealed_digest(values)
    return hashlib.sha256(_fields(PUBLIC_FIELDS, values) + netstring(seal.encode())).hexdigest()


def leaf_data_of(log: str, index: int, occurred_at_ms: int, body: str) -> bytes:
    return b"".join(
        netstring(part.encode()) for part in (VERSION, log, str(index), str(occurred_at_ms), body)
    )


def leaf_data(log: str, index: int, values: Mapping[str, Any], *, sealed: str | None = None) -> bytes:
    """The leaf's bytes from canonical values (`values[name]` as described above)."""
    return leaf_data_of(log, index, int(values["occurred_at"]), body_digest(values, sealed=sealed))


def event_leaf_hash(log: str, index: int, values: Mapping[str, Any], *, sealed: str | None = None) -> bytes:
    return leaf_hash(leaf_data(log, index, values, sealed=sealed))


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def values_from_event(event: Mapping[str, Any], *, changes: str, details: str) -> dict[str, Any]:
    """The canonical values of an event as the API shows it (`GET /v1/events/{id}`, exports):
    the inverse of its nesting. `changes` and `details` are the stored texts a proof carries,
    which must parse to the event's own `changes` and `details` (checked by the caller)."""
    actor, target, source = event["actor"], event["target"], event["source"]
    related = event["related"]
    enrichment, provenance = event["enrichment"], event["provenance"]
    return {
        "event_id": str(event["event_id"]).lower(),
        "schema_version": int(event["schema_version"]),
        "occurred_at": _ms(event["occurred_at"]),
        "received_at": _ms(event["received_at"]),
        "infrastructure": event["infrastructure"],
        "environment": event["environment"] or "",
        "actor_id": actor["id"],
        "actor_name": actor["name"] or "",
        "actor_type": actor["type"],
        "actor_ip": actor["ip"] or "",
        "actor_user_agent": actor["user_agent"] or "",
        "actor_session_id": actor["session_id"] or "",
        "action": event["action"],
        "target_kind": target["kind"],
        "target_id": target["id"],
        "target_name": target["name"] or "",
        "related_kinds": [r["kind"] for r in related],
        "related_ids": [r["id"] for r in related],
        "related_names": [r["name"] or "" for r in related],
        "outcome": event["outcome"],
        "reason": event["reason"] or "",
        "changes": changes,
        "details": details,
        "source_service": source["service"],
        "source_host": source["host"],
        "source_version": source["version"],
        "request_id": event["request_id"] or "",
        "correlation_id": event["correlation_id"] or "",
        "plan_app_ids": list(enrichment["plan_application_ids"]),
        "app_team_id": enrichment["application_team_id"] or "",
        "ingest_source": provenance["ingest_source"],
        "ingest_key_id": provenance["ingest_key_id"] or "",
    }


def proof_holds(event: Mapping[str, Any], proof: Mapping[str, Any], root: bytes) -> bool:
    """Whether an inclusion proof (`GET /v1/events/{id}/proof`, an export's `proof`) leads
    from `event`, as the API shows it, to `root`: the leaf rebuilt from the event and the
    texts the proof carries, then its audit path (base64, nearest the leaf first)."""
    index, size = int(proof["index"]), int(proof["tree_size"])
    values = values_from_event(event, changes=proof["changes"], details=proof["details"])
    leaf = event_leaf_hash(proof["log"], index, values, sealed=proof["sealed"])
    path = [base64.b64decode(h, validate=True) for h in proof["audit_path"]]
    return verify_inclusion(index, size, leaf, path, root)
