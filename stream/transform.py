"""The pure transformations of the chain: normalize, check, then enrich into a stored row.

No I/O and no clock: every output is a function of the event, the directory and
the lineage handed in, so that replaying the same input gives identical rows.
They do not know whether they run inside faust, the HTTP ingest or the demo.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from producers.contract.directory import Directories, Directory
from producers.contract.event import AuditEvent, EntityRef, FieldError, InvalidEvent, rfc3339_ms
from producers.contract.permissions import row_token
from storage.record import Row, entity_key
from stream.messages import Lineage, format_ch_time, ms_to_ch_time

# Producers in the wild abbreviate entity kinds; the store speaks one vocabulary.
_KIND_ALIASES = {
    "app": "application",
    "apps": "application",
    "applications": "application",
    "plan": "deployment_plan",
    "deploymentplan": "deployment_plan",
    "deployment_plans": "deployment_plan",
    "env": "environment",
    "environments": "environment",
    "infra": "infrastructure",
    "users": "user",
    "teams": "team",
    "roles": "role",
}
_SEPARATORS = re.compile(r"[\s\-]+")
_UNDERSCORES = re.compile(r"_+")


@lru_cache(maxsize=8192)
def canonical_action(action: str) -> str:
    """`Application.Deploy`, `app.deploy`, `application.re-deploy ` -> `application.deploy`-style names."""
    kind, _, verb = action.strip().partition(".")
    kind = _UNDERSCORES.sub("_", _SEPARATORS.sub("_", kind.strip().lower()))
    kind = _KIND_ALIASES.get(kind.replace("_", ""), _KIND_ALIASES.get(kind, kind))
    verb = _UNDERSCORES.sub("_", _SEPARATORS.sub("_", verb.strip().lower())).strip("_")
    return f"{kind}.{verb}"


def _ms(ts: datetime) -> datetime:
    if ts.tzinfo is UTC and ts.microsecond % 1000 == 0:
        return ts
    ts = ts.astimezone(UTC)
    return ts.replace(microsecond=(ts.microsecond // 1000) * 1000)


def _clean_ref(ref: EntityRef) -> EntityRef:
    name = ref.name.strip() if ref.name else None
    return ref if name == ref.name else ref.model_copy(update={"name": name})


def normalize(event: AuditEvent) -> AuditEvent:
    """Canonical action name, UTC millisecond time, trimmed names, related entities deduplicated.

    The event itself when it is already normal, as a well-behaved producer's are: a copy
    of the model costs more than the rest of this step."""
    target = _clean_ref(event.target)
    seen: set[tuple[str, str]] = {(target.kind, target.id)}
    related = []
    same = target is event.target
    for ref in event.related:
        key = (ref.kind, ref.id)
        if key in seen:
            same = False
            continue
        seen.add(key)
        clean = _clean_ref(ref)
        same = same and clean is ref
        related.append(clean)
    action = canonical_action(event.action)
    occurred_at = _ms(event.occurred_at)
    environment = event.environment.strip() if event.environment else None
    environment = environment or None
    same = same and action == event.action and occurred_at is event.occurred_at
    if same and environment == event.environment:
        return event
    return event.model_copy(
        update={
            "action": action,
            "occurred_at": occurred_at,
            "target": target,
            "related": related,
            "environment": environment,
        }
    )


_PLAIN = frozenset({str, int, float, bool, type(None)})


def change_values(event: AuditEvent) -> list[dict[str, Any]]:
    """The changes as JSON values: built directly for the scalars a change almost always
    holds, through pydantic for anything else (a model dump costs ten times as much)."""
    out = []
    for c in event.changes:
        if type(c.old) in _PLAIN and type(c.new) in _PLAIN:
            out.append({"field": c.field, "old": c.old, "new": c.new})
        else:
            out.append(c.model_dump(mode="json"))
    return out


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def _name(directory: Directory, ref: EntityRef) -> str:
    return directory.display_name(ref.kind, ref.id) or ref.name or ""


def directory_for(event: AuditEvent, directories: Directories) -> Directory:
    """The directory of the event's infrastructure; an infrastructure this installation does
    not serve is a reject (kept with this reason), never a row nobody's grants were meant for."""
    directory = directories.get(event.infrastructure)
    if directory is None:
        served = ", ".join(directories.served) or "none yet: load a directory first"
        reason = (
            f"infrastructure {event.infrastructure!r} is not served by this installation (served: {served})"
        )
        raise InvalidEvent(
            reason,
            [FieldError(field="infrastructure", problem="is not served here")],
            code="unknown_infrastructure",
        )
    return directory


DEFAULT_MAX_FUTURE_S = 300
"""How far after its receipt an event may say it happened: producers' clocks drift, but
an event dated 2199 would sit first in every log forever."""


def check_not_in_future(event: AuditEvent, lineage: Lineage, *, max_future_s: float) -> None:
    """Reject an event dated later than its receipt plus `max_future_s`. The receipt time is
    the broker's timestamp (or the edge's receipt), so the verdict replays identically."""
    occurred_ms = int(event.occurred_at.timestamp() * 1000)
    if occurred_ms > lineage.received_at_ms + max_future_s * 1000:
        ahead = (occurred_ms - lineage.received_at_ms) / 1000
        reason = (
            f"occurred_at {event.occurred_at.isoformat()} is {ahead:,.0f} s after the event was received "
            f"({ms_to_ch_time(lineage.received_at_ms)} UTC); the allowed clock skew is {max_future_s:g} s"
        )
        raise InvalidEvent(
            reason, [FieldError(field="occurred_at", problem="is in the future")], code="future"
        )


def check_key_infrastructure(event: AuditEvent, key_infrastructure: str | None) -> None:
    """An API key writes events of its own infrastructure only: one tenant's credential cannot
    put rows into another tenant's log. None: not posted with a key (Kafka, files, the demo)."""
    if key_infrastructure is not None and event.infrastructure != key_infrastructure:
        raise InvalidEvent(
            f"this API key ingests for infrastructure {key_infrastructure!r} only; the event names "
            f"{event.infrastructure[:64]!r}",
            [FieldError(field="infrastructure", problem="is not the key's infrastructure")],
            code="foreign_infrastructure",
        )


RESERVED_ACTION_PREFIX = "audit_log."


def check_reserved_action(event: AuditEvent, *, service_record: bool) -> None:
    """The `audit_log.*` actions are the query service's own record of reads: from anywhere
    else, such an event is a forgery of that record, refused with this reason."""
    if not service_record and canonical_action(event.action).startswith(RESERVED_ACTION_PREFIX):
        raise InvalidEvent(
            f"action {event.action[:64]!r} is reserved: audit_log.* events are recorded by the query "
            "service itself, and one from elsewhere is refused as forged",
            [FieldError(field="action", problem="is reserved for the query service")],
            code="forged",
        )


def content_hash(
    event: AuditEvent,
    changes_json: str,
    details_json: str,
    *,
    event_id: str | None = None,
    occurred_at: str | None = None,
) -> int:
    """The first 128 bits of SHA-256 over the normalized event as its producer sent it (v1).

    The input is the JSON array of the contract's fields in contract order, with names as
    sent (not the directory's), related entities as [kind, id, name] triples, and changes
    and details as the sorted-key JSON stored for them. Not in it: lineage, receipt time
    and enrichment, so a replay under another directory or from another partition hashes
    the same, and any change to what the event says does not.
    """
    actor, target = event.actor, event.target
    event_id = event_id or str(event.event_id)
    occurred_at = occurred_at or format_ch_time(event.occurred_at)
    fields = [
        event_id, event.schema_version, occurred_at, event.infrastructure,
        event.environment or "", actor.id, actor.name or "", actor.type, actor.ip or "",
        actor.user_agent or "", actor.session_id or "", event.action, target.kind, target.id,
        target.name or "", [[r.kind, r.id, r.name or ""] for r in event.related], event.outcome,
        event.reason or "", changes_json, details_json, event.source.service, event.source.host,
        event.source.version, event.request_id or "", event.correlation_id or "",
    ]  # fmt: skip
    return int.from_bytes(hashlib.sha256(orjson.dumps(fields)).digest()[:16], "big")


def enrich(event: AuditEvent, directory: Directory, lineage: Lineage) -> Row:
    """A normalized event as a stored row: display names, plan applications, team, read scope.

    `plan_app_ids` and `app_team_id` record the directory at ingest, for reading; what a
    row requires of a reader is its token alone, resolved against the directory of the day."""
    target = event.target
    plan_apps: list[str] = []
    if target.kind == "deployment_plan":
        known = directory.plan_applications(target.id)
        if known is not None:
            plan_apps = sorted(set(known))
        else:
            # A plan the directory has not heard of yet: trust the event's own list.
            plan_apps = sorted({r.id for r in event.related if r.kind == "application"})
    app_team = directory.application_team(target.id) if target.kind == "application" else None

    actor = event.actor
    actor_name = (directory.display_name("user", actor.id) if actor.type == "user" else None) or actor.name
    keys = [entity_key(target.kind, target.id)] + [entity_key(r.kind, r.id) for r in event.related]

    changes = _json(change_values(event))
    details = _json(event.details)
    event_id = str(event.event_id)
    occurred_at = format_ch_time(event.occurred_at)
    digest = content_hash(event, changes, details, event_id=event_id, occurred_at=occurred_at)
    row: Row = {
        "event_id": event_id,
        # A string: JSON numbers past 2^64 are not every encoder's; ClickHouse reads it as a number.
        "content_hash": str(digest),
        "schema_version": event.schema_version,
        "occurred_at": occurred_at,
        "received_at": ms_to_ch_time(lineage.received_at_ms),
        "infrastructure": event.infrastructure,
        "environment": event.environment or "",
        "actor_id": actor.id,
        "actor_name": actor_name or "",
        "actor_type": actor.type,
        "actor_ip": actor.ip or "",
        "actor_user_agent": actor.user_agent or "",
        "actor_session_id": actor.session_id or "",
        "action": event.action,
        "target_kind": target.kind,
        "target_id": target.id,
        "target_name": _name(directory, target),
        "related_kinds": [r.kind for r in event.related],
        "related_ids": [r.id for r in event.related],
        "related_names": [_name(directory, r) for r in event.related],
        "entity_keys": keys,
        "outcome": event.outcome,
        "reason": event.reason or "",
        "changes": changes,
        "details": details,
        "source_service": event.source.service,
        "source_host": event.source.host,
        "source_version": event.source.version,
        "request_id": event.request_id or "",
        "correlation_id": event.correlation_id or "",
        "plan_app_ids": plan_apps,
        "app_team_id": app_team or "",
        "scope_key": row_token(target.kind, target.id),
        "ingest_source": lineage.source,
        "ingest_key_id": lineage.key_id,
        "kafka_topic": lineage.topic,
        "kafka_partition": lineage.partition,
        "kafka_offset": lineage.offset,
    }
    # Every stored column, in order (storage.record.ENRICHED_COLUMNS): checked by the golden tests,
    # not here, where it would cost a tuple of 40 names per event.
    return row


def process(event: AuditEvent, directories: Directories, lineage: Lineage) -> Row:
    """normalize then enrich with the directory of the event's infrastructure."""
    event = normalize(event)
    return enrich(event, directory_for(event, directories), lineage)


# A batch shares one broker timestamp per message: formatted once, not per event.
_received_text = lru_cache(maxsize=4096)(rfc3339_ms)


def wire_event(event: AuditEvent, row: Row, lineage: Lineage) -> dict[str, Any]:
    """The normalized, enriched event for `audit.events.v1`: the query API's event shape plus lineage.

    Built from the normalized event and its stored row, so a SIEM reading the
    stream and an analyst reading the API see the same names and the same values.
    """
    actor, source = event.actor, event.source
    return {
        "event_id": row["event_id"],
        "schema_version": event.schema_version,
        # The row's UTC millisecond time, in RFC 3339: "2026-10-01 08:00:00.000" -> "...T08:00:00.000Z".
        "occurred_at": f"{row['occurred_at'][:10]}T{row['occurred_at'][11:]}Z",
        "received_at": _received_text(lineage.received_at_ms),
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
        "changes": change_values(event),
        "details": event.details,
        "source": {"service": source.service, "host": source.host, "version": source.version},
        "request_id": event.request_id,
        "correlation_id": event.correlation_id,
        "enrichment": {
            "plan_application_ids": row["plan_app_ids"],
            "application_team_id": row["app_team_id"] or None,
        },
        "lineage": {"topic": lineage.topic, "partition": lineage.partition, "offset": lineage.offset},
    }
