"""The SIEM rendering of a normalized event in OCSF (Open Cybersecurity Schema Framework, 1.3).

Pure: a function of the wire event that `stream.transform.wire_event` builds (the same shape the
query API returns), so the OCSF stream is as replayable as the stored rows.

Which class an audit task becomes (DESIGN 3):

- a task performed to a **user** account -> Account Change (3001, IAM);
- creating, changing or deleting any other console entity (role, team,
  application, deployment plan, environment, infrastructure) -> Entity
  Management (3004, IAM);
- every other task (deploy, execute, debug, sync, ...) -> API Activity (6003,
  Application Activity): an operation invoked through the console's API.

Fields OCSF has no place for stay under `unmapped`, so nothing of the event is lost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

OCSF_VERSION: Final = "1.3.0"
PRODUCT: Final = {"name": "auditlog", "vendor_name": "auditlog", "feature": {"name": "audit pipeline"}}

# (class_uid, class_name, category_uid, category_name)
ACCOUNT_CHANGE: Final = (3001, "Account Change", 3, "Identity & Access Management")
ENTITY_MANAGEMENT: Final = (3004, "Entity Management", 3, "Identity & Access Management")
API_ACTIVITY: Final = (6003, "API Activity", 6, "Application Activity")

OTHER: Final = 99

# Verbs of the console, by the OCSF activity they are. Anything not listed is "Other".
_ACCOUNT_ACTIVITIES: Final[dict[str, tuple[int, str]]] = {
    "create": (1, "Create"),
    "add": (1, "Create"),
    "enable": (2, "Enable"),
    "activate": (2, "Enable"),
    "password_change": (3, "Password Change"),
    "password_reset": (4, "Password Reset"),
    "disable": (5, "Disable"),
    "deactivate": (5, "Disable"),
    "delete": (6, "Delete"),
    "remove": (6, "Delete"),
    "role_assign": (7, "Attach Policy"),
    "role_add": (7, "Attach Policy"),
    "role_unassign": (8, "Detach Policy"),
    "role_remove": (8, "Detach Policy"),
    "lock": (9, "Lock"),
    "mfa_enable": (10, "MFA Factor Enable"),
    "mfa_disable": (11, "MFA Factor Disable"),
}
_ENTITY_ACTIVITIES: Final[dict[str, tuple[int, str]]] = {
    "create": (1, "Create"),
    "add": (1, "Create"),
    "read": (2, "Read"),
    "view": (2, "Read"),
    "update": (3, "Update"),
    "edit": (3, "Update"),
    "rename": (3, "Update"),
    "change": (3, "Update"),
    "member_add": (3, "Update"),
    "member_remove": (3, "Update"),
    "delete": (4, "Delete"),
    "remove": (4, "Delete"),
    "move": (5, "Move"),
    "enable": (8, "Enable"),
    "disable": (9, "Disable"),
    "activate": (10, "Activate"),
    "deactivate": (11, "Deactivate"),
    "suspend": (12, "Suspend"),
    "resume": (13, "Resume"),
}
_API_ACTIVITIES: Final[dict[str, tuple[int, str]]] = {
    "create": (1, "Create"),
    "read": (2, "Read"),
    "view": (2, "Read"),
    "download": (2, "Read"),
    "update": (3, "Update"),
    "delete": (4, "Delete"),
}

_STATUS: Final[dict[str, tuple[int, str]]] = {
    "success": (1, "Success"),
    "failure": (2, "Failure"),
    "denied": (2, "Failure"),
}


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(rfc3339: str) -> int:
    # Integer arithmetic: a float timestamp can land one millisecond off.
    return (datetime.fromisoformat(rfc3339) - _EPOCH) // timedelta(milliseconds=1)


def _class_for(target_kind: str, verb: str) -> tuple[tuple[int, str, int, str], tuple[int, str]]:
    if target_kind == "user":
        return ACCOUNT_CHANGE, _ACCOUNT_ACTIVITIES.get(verb, (OTHER, "Other"))
    if verb in _ENTITY_ACTIVITIES:
        return ENTITY_MANAGEMENT, _ENTITY_ACTIVITIES[verb]
    return API_ACTIVITY, _API_ACTIVITIES.get(verb, (OTHER, "Other"))


def _resource(ref: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (("uid", ref["id"]), ("name", ref.get("name")), ("type", ref["kind"])) if v}


def to_ocsf(event: dict[str, Any]) -> dict[str, Any]:
    """One wire event (as built by `stream.transform.wire_event`) as an OCSF event."""
    action: str = event["action"]
    _, _, verb = action.partition(".")
    target: dict[str, Any] = event["target"]
    (class_uid, class_name, category_uid, category_name), (activity_id, activity_name) = _class_for(
        target["kind"], verb
    )
    status_id, status = _STATUS.get(event["outcome"], (OTHER, "Other"))
    actor: dict[str, Any] = event["actor"]
    source: dict[str, Any] = event.get("source") or {}

    out: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "time": _epoch_ms(event["occurred_at"]),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": status_id,
        "status": status,
        "message": f"{action} {target['kind']}/{target['id']} by {actor['id']}: {event['outcome']}",
        "metadata": {
            "version": OCSF_VERSION,
            "product": PRODUCT,
            "uid": event["event_id"],
            "event_code": action,
            "logged_time": _epoch_ms(event["received_at"]),
            "original_time": event["occurred_at"],
            "tenant_uid": event["infrastructure"],
            **({"correlation_uid": event["correlation_id"]} if event.get("correlation_id") else {}),
            # The row's leaf in the Merkle tree: its log and index there.
            **(
                {"log_name": event["position"]["log"], "sequence": event["position"]["index"]}
                if event.get("position")
                else {}
            ),
        },
        "actor": {
            "user": {
                k: v
                for k, v in (("uid", actor["id"]), ("name", actor.get("name")), ("type", actor.get("type")))
                if v
            },
            **({"session": {"uid": actor["session_id"]}} if actor.get("session_id") else {}),
        },
    }
    if event.get("reason"):
        out["status_detail"] = event["reason"]
    if event["outcome"] == "denied":
        out["status_code"] = "denied"
    if actor.get("ip"):
        out["src_endpoint"] = {"ip": actor["ip"]}
    if actor.get("user_agent"):
        out["http_request"] = {"user_agent": actor["user_agent"]}

    related = [_resource(r) for r in event.get("related") or []]
    if class_uid == ACCOUNT_CHANGE[0]:
        out["user"] = {k: v for k, v in (("uid", target["id"]), ("name", target.get("name"))) if v}
    elif class_uid == ENTITY_MANAGEMENT[0]:
        entity = _resource(target)
        if event.get("changes"):
            entity["data"] = {"changes": event["changes"]}
        out["entity"] = entity
    else:
        out["api"] = {
            "operation": action,
            **({"request": {"uid": event["request_id"]}} if event.get("request_id") else {}),
            "service": {
                k: v for k, v in (("name", source.get("service")), ("version", source.get("version"))) if v
            },
        }
        out["resources"] = [_resource(target), *related]
    if related and class_uid != API_ACTIVITY[0]:
        out["resources"] = related

    unmapped: dict[str, Any] = {
        k: event[k]
        for k in ("environment", "changes", "details", "enrichment")
        if event.get(k) not in (None, [], {})
    }
    if event.get("request_id") and class_uid != API_ACTIVITY[0]:
        unmapped["request_id"] = event["request_id"]
    if source:
        unmapped["source"] = source
    if unmapped:
        out["unmapped"] = unmapped
    return out
