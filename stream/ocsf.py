"""The SIEM rendering of a normalized event in OCSF (Open Cybersecurity Schema Framework, 1.3).

Pure: a function of the wire event that `stream.transform.wire_event` builds (the same shape the
query API returns), so the OCSF stream is as replayable as the stored rows.

Every action the product knows has its class and activity in `ACTIONS` (documented in
docs/ocsf.md); an action it does not know falls back on its verb (`create`, `update`,
`delete`, ...) in Entity Management, or API Activity. Each class carries only the
attributes OCSF 1.3 defines for it (the test suite checks every mapping against the
schema with pydantic-ocsf); what a class has no place for stays under `unmapped`, so
nothing of the event is lost.

- `status_id` keeps a denied task apart from a failed one: Failure (2) is a task that was
  allowed and did not succeed, a denial is Other (99) with the status "Denied";
- `severity_id` follows the outcome and how much the action can change who may do what
  (`SENSITIVE`): Informational for ordinary successes up to High for a denied sensitive task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

OCSF_VERSION: Final = "1.3.0"
PRODUCT: Final = {"name": "auditlog", "vendor_name": "auditlog", "feature": {"name": "audit pipeline"}}

_IAM: Final = (3, "Identity & Access Management")
_APPLICATION: Final = (6, "Application Activity")


@dataclass(frozen=True, slots=True)
class OcsfClass:
    uid: int
    name: str
    category: tuple[int, str]
    has_actor: bool = True  # OCSF 1.3 gives User Access and Group Management no actor
    has_endpoint: bool = True  # src_endpoint and http_request
    profiles: tuple[str, ...] = ()


ACCOUNT_CHANGE: Final = OcsfClass(3001, "Account Change", _IAM)
AUTHENTICATION: Final = OcsfClass(3002, "Authentication", _IAM)
ENTITY_MANAGEMENT: Final = OcsfClass(3004, "Entity Management", _IAM)
USER_ACCESS: Final = OcsfClass(3005, "User Access Management", _IAM, has_actor=False)
GROUP_MANAGEMENT: Final = OcsfClass(3006, "Group Management", _IAM, has_actor=False)
# The host profile is what gives this class its actor; it has no endpoints.
APPLICATION_LIFECYCLE: Final = OcsfClass(
    6002, "Application Lifecycle", _APPLICATION, has_endpoint=False, profiles=("host",)
)
API_ACTIVITY: Final = OcsfClass(6003, "API Activity", _APPLICATION)

OTHER: Final = 99
Activity = tuple[OcsfClass, int, str]

# Every action of the console and of this product (DESIGN 3; the demo's catalogue), by the
# OCSF class and activity it is.
ACTIONS: Final[dict[str, Activity]] = {
    "user.login": (AUTHENTICATION, 1, "Logon"),
    "user.logout": (AUTHENTICATION, 2, "Logoff"),
    "user.create": (ACCOUNT_CHANGE, 1, "Create"),
    "user.activate": (ACCOUNT_CHANGE, 2, "Enable"),
    "user.enable": (ACCOUNT_CHANGE, 2, "Enable"),
    "user.password_change": (ACCOUNT_CHANGE, 3, "Password Change"),
    "user.password_reset": (ACCOUNT_CHANGE, 4, "Password Reset"),
    "user.deactivate": (ACCOUNT_CHANGE, 5, "Disable"),
    "user.disable": (ACCOUNT_CHANGE, 5, "Disable"),
    "user.delete": (ACCOUNT_CHANGE, 6, "Delete"),
    "user.role_change": (ACCOUNT_CHANGE, 7, "Attach Policy"),
    "user.role_assign": (ACCOUNT_CHANGE, 7, "Attach Policy"),
    "user.role_unassign": (ACCOUNT_CHANGE, 8, "Detach Policy"),
    "user.lock": (ACCOUNT_CHANGE, 9, "Lock"),
    "user.mfa_enable": (ACCOUNT_CHANGE, 10, "MFA Factor Enable"),
    "user.mfa_disable": (ACCOUNT_CHANGE, 11, "MFA Factor Disable"),
    # A profile change (name, e-mail, MFA requirement): Account Change has no Update activity.
    "user.update": (ACCOUNT_CHANGE, OTHER, "Update"),
    "application.set_permission": (USER_ACCESS, 1, "Assign Privileges"),
    "team.create": (GROUP_MANAGEMENT, 6, "Create"),
    "team.delete": (GROUP_MANAGEMENT, 5, "Delete"),
    "team.member_add": (GROUP_MANAGEMENT, 3, "Add User"),
    "team.member_remove": (GROUP_MANAGEMENT, 4, "Remove User"),
    "team.update": (ENTITY_MANAGEMENT, 3, "Update"),
    "team.application_add": (ENTITY_MANAGEMENT, 3, "Update"),
    "team.application_remove": (ENTITY_MANAGEMENT, 3, "Update"),
    "role.create": (ENTITY_MANAGEMENT, 1, "Create"),
    "role.update": (ENTITY_MANAGEMENT, 3, "Update"),
    "role.delete": (ENTITY_MANAGEMENT, 4, "Delete"),
    "application.create": (ENTITY_MANAGEMENT, 1, "Create"),
    "application.update": (ENTITY_MANAGEMENT, 3, "Update"),
    "application.delete": (ENTITY_MANAGEMENT, 4, "Delete"),
    "deployment_plan.create": (ENTITY_MANAGEMENT, 1, "Create"),
    "deployment_plan.update": (ENTITY_MANAGEMENT, 3, "Update"),
    "deployment_plan.delete": (ENTITY_MANAGEMENT, 4, "Delete"),
    "environment.register": (ENTITY_MANAGEMENT, 1, "Create"),
    "environment.update": (ENTITY_MANAGEMENT, 3, "Update"),
    "environment.configure": (ENTITY_MANAGEMENT, 3, "Update"),
    "infrastructure.configure": (ENTITY_MANAGEMENT, 3, "Update"),
    "infrastructure.license_update": (ENTITY_MANAGEMENT, 3, "Update"),
    # A version of an application installed into an environment (publish: built and
    # installed into the first one).
    "application.deploy": (APPLICATION_LIFECYCLE, 1, "Install"),
    "application.publish": (APPLICATION_LIFECYCLE, 1, "Install"),
    # The platform itself upgraded.
    "infrastructure.update": (APPLICATION_LIFECYCLE, 8, "Update"),
    "application.tag_version": (API_ACTIVITY, 1, "Create"),
    "infrastructure.backup": (API_ACTIVITY, 1, "Create"),
    "environment.sync": (API_ACTIVITY, 3, "Update"),
    # A plan deploys several applications: one API call, its applications its resources.
    "deployment_plan.execute": (API_ACTIVITY, 3, "Update"),
    "deployment_plan.abort": (API_ACTIVITY, OTHER, "Abort"),
    # A debugger attached to a running application: no OCSF activity says that.
    "application.open_debug": (API_ACTIVITY, OTHER, "Open Debug"),
    "audit_log.read": (API_ACTIVITY, 2, "Read"),
    "audit_log.export": (API_ACTIVITY, 2, "Read"),
    # Retention: a purge deletes rows; a hold is created and lifted (deleted).
    "audit_log.purge": (API_ACTIVITY, 4, "Delete"),
    "audit_log.retention_update": (API_ACTIVITY, 3, "Update"),
    "audit_log.legal_hold_create": (API_ACTIVITY, 1, "Create"),
    "audit_log.legal_hold_lift": (API_ACTIVITY, 4, "Delete"),
}

# The fallback for an action not in ACTIONS, by its verb.
_ENTITY_VERBS: Final[dict[str, tuple[int, str]]] = {
    "create": (1, "Create"),
    "add": (1, "Create"),
    "update": (3, "Update"),
    "edit": (3, "Update"),
    "rename": (3, "Update"),
    "change": (3, "Update"),
    "configure": (3, "Update"),
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
_API_VERBS: Final[dict[str, tuple[int, str]]] = {
    "read": (2, "Read"),
    "view": (2, "Read"),
    "download": (2, "Read"),
}

# Actions that change who may do what, or the installation itself, or read the whole log
# out: their failures and denials weigh more.
SENSITIVE: Final = frozenset(
    {
        *(a for a, (cls, _, _) in ACTIONS.items() if cls in (ACCOUNT_CHANGE, USER_ACCESS, GROUP_MANAGEMENT)),
        "role.create",
        "role.update",
        "role.delete",
        "infrastructure.configure",
        "infrastructure.license_update",
        "infrastructure.update",
        "audit_log.export",
        "audit_log.purge",
        "audit_log.retention_update",
        "audit_log.legal_hold_lift",
    }
)
# (severity_id, severity) by outcome, for an ordinary and for a sensitive action.
_SEVERITY: Final[dict[str, tuple[tuple[int, str], tuple[int, str]]]] = {
    "success": ((1, "Informational"), (2, "Low")),
    "failure": ((2, "Low"), (3, "Medium")),
    "denied": ((3, "Medium"), (4, "High")),
}
_STATUS: Final[dict[str, tuple[int, str]]] = {
    "success": (1, "Success"),
    "failure": (2, "Failure"),
    "denied": (OTHER, "Denied"),
}
# OCSF user types: 1 User, 3 System; a service account is Other.
_USER_TYPES: Final[dict[str, tuple[int, str]]] = {
    "user": (1, "User"),
    "system": (3, "System"),
    "service": (OTHER, "Service"),
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(rfc3339: str) -> int:
    # Integer arithmetic: a float timestamp can land one millisecond off.
    return (datetime.fromisoformat(rfc3339) - _EPOCH) // timedelta(milliseconds=1)


def activity_of(action: str) -> Activity:
    """The OCSF class and activity of an action."""
    known = ACTIONS.get(action)
    if known is not None:
        return known
    _, _, verb = action.partition(".")
    if verb in _ENTITY_VERBS:
        return (ENTITY_MANAGEMENT, *_ENTITY_VERBS[verb])
    return (API_ACTIVITY, *_API_VERBS.get(verb, (OTHER, "Other")))


def _named(ref: dict[str, Any] | None) -> dict[str, Any]:
    if not ref:
        return {}
    return {k: v for k, v in (("uid", ref["id"]), ("name", ref.get("name"))) if v}


def _resource(ref: dict[str, Any]) -> dict[str, Any]:
    return {**_named(ref), "type": ref["kind"]}


def _user(ref: dict[str, Any] | None, kind: str | None = None) -> dict[str, Any]:
    out = _named(ref)
    if ref and kind in _USER_TYPES:
        out["type_id"], out["type"] = _USER_TYPES[kind]
    return out


def _first(related: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((r for r in related if r["kind"] == kind), None)


def to_ocsf(event: dict[str, Any]) -> dict[str, Any]:
    """One wire event (as built by `stream.transform.wire_event`) as an OCSF event."""
    action: str = event["action"]
    cls, activity_id, activity_name = activity_of(action)
    target: dict[str, Any] = event["target"]
    related: list[dict[str, Any]] = list(event.get("related") or [])
    actor: dict[str, Any] = event["actor"]
    source: dict[str, Any] = event.get("source") or {}
    outcome: str = event["outcome"]
    status_id, status = _STATUS.get(outcome, (OTHER, outcome.title()))
    severity_id, severity = _SEVERITY.get(outcome, _SEVERITY["failure"])[action in SENSITIVE]
    unmapped: dict[str, Any] = {
        k: event[k]
        for k in ("environment", "changes", "details", "enrichment")
        if event.get(k) not in (None, [], {})
    }

    out: dict[str, Any] = {
        "class_uid": cls.uid,
        "class_name": cls.name,
        "category_uid": cls.category[0],
        "category_name": cls.category[1],
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": cls.uid * 100 + activity_id,
        "type_name": f"{cls.name}: {activity_name}",
        "time": _epoch_ms(event["occurred_at"]),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "message": f"{action} {target['kind']}/{target['id']} by {actor['id']}: {outcome}",
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
            **({"profiles": list(cls.profiles)} if cls.profiles else {}),
        },
    }
    if event.get("reason"):
        out["status_detail"] = event["reason"]
    if outcome != "success":
        out["status_code"] = outcome

    acting = {
        "user": _user(actor, actor.get("type")),
        **({"session": {"uid": actor["session_id"]}} if actor.get("session_id") else {}),
    }
    if cls.has_actor:
        out["actor"] = acting
    else:
        unmapped["actor"] = acting
    endpoint = {
        **({"src_endpoint": {"ip": actor["ip"]}} if actor.get("ip") else {}),
        **({"http_request": {"user_agent": actor["user_agent"]}} if actor.get("user_agent") else {}),
    }
    if cls.has_endpoint:
        out.update(endpoint)
    elif endpoint:
        unmapped["endpoint"] = endpoint

    rest = _fill(cls, out, event, target, related)
    if rest:
        unmapped["related"] = rest
    if event.get("request_id") and cls is not API_ACTIVITY:
        unmapped["request_id"] = event["request_id"]
    if source:
        unmapped["source"] = source
    if unmapped:
        out["unmapped"] = unmapped
    return out


def _fill(
    cls: OcsfClass,
    out: dict[str, Any],
    event: dict[str, Any],
    target: dict[str, Any],
    related: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The class's own attributes; returns the related entities it has no place for."""
    if cls is AUTHENTICATION:
        out["user"] = _user(target, "user")
        if event["actor"].get("session_id"):
            out["session"] = {"uid": event["actor"]["session_id"]}
        mfa = (event.get("details") or {}).get("mfa")
        if isinstance(mfa, bool):
            out["is_mfa"] = mfa
        return related
    if cls is ACCOUNT_CHANGE:
        out["user"] = _user(target, "user")
        role = _first(related, "role")
        if role is not None and out["activity_id"] in (7, 8):
            out["policy"] = _named(role)
            related = [r for r in related if r is not role]
        return related
    if cls is USER_ACCESS:
        grantee, role = _first(related, "user"), _first(related, "role")
        out["user"] = _user(grantee, "user")
        out["resource"] = _resource(target)
        out["privileges"] = [role.get("name") or role["id"]] if role else []
        return [r for r in related if r is not grantee and r is not role]
    if cls is GROUP_MANAGEMENT:
        out["group"] = _named(target)
        member, role = _first(related, "user"), _first(related, "role")
        if member is not None:
            out["user"] = _user(member, "user")
        if role is not None:
            out["privileges"] = [role.get("name") or role["id"]]
        return [r for r in related if r is not member and r is not role]
    if cls is APPLICATION_LIFECYCLE:
        version = (event.get("details") or {}).get("version_tag")
        # The application's maker is the installation that builds it.
        out["app"] = {
            **_named(target),
            "vendor_name": event["infrastructure"],
            **({"version": str(version)} if version is not None else {}),
        }
        return related
    if cls is ENTITY_MANAGEMENT:
        entity = _resource(target)
        if event.get("changes"):
            entity["data"] = {"changes": event["changes"]}
        out["entity"] = entity
        return related
    source: dict[str, Any] = event.get("source") or {}
    out["api"] = {
        "operation": event["action"],
        **({"request": {"uid": event["request_id"]}} if event.get("request_id") else {}),
        "service": {
            k: v for k, v in (("name", source.get("service")), ("version", source.get("version"))) if v
        },
    }
    out["resources"] = [_resource(target), *(_resource(r) for r in related)]
    return []
