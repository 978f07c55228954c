"""The OCSF stream against the OCSF 1.3 schema: every action the product knows, in each outcome,
validated by pydantic-ocsf's models of 1.3, with no attribute its class does not define."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from ocsf.v1_3_0 import events as ocsf_events
from pydantic import BaseModel

from auditlog.demo_data import build_directory, generate_events
from producers.contract.directory import Directories, load_directory
from stream import ocsf
from stream.steps.decode import decode_batch
from tests.test_stream_batch import GOLDEN, event, msg

MODELS: dict[int, type[BaseModel]] = {
    3001: ocsf_events.AccountChange,
    3002: ocsf_events.Authentication,
    3004: ocsf_events.EntityManagement,
    3005: ocsf_events.UserAccess,
    3006: ocsf_events.GroupManagement,
    6002: ocsf_events.ApplicationLifecycle,
    6003: ocsf_events.ApiActivity,
}
# The base event's attributes that OCSF 1.3 brings in by `$include` (classification and time),
# which pydantic-ocsf's models take as extra fields.
BASE_INCLUDED = {"class_uid", "class_name", "category_uid", "category_name", "type_uid", "type_name", "time"}
# What a profile adds to a class that names it (OCSF 1.3 profiles/host.json).
PROFILE_ATTRIBUTES = {"host": {"actor", "device"}}


def undefined(model: BaseModel, path: str = "") -> list[str]:
    """Every attribute of a validated event, at any depth, that its OCSF object does not define
    (`unmapped` holds what OCSF has no place for: free-form by definition)."""
    found = [f"{path}{k}" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        if name == "unmapped":
            continue
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, BaseModel):
                found += undefined(child, f"{path}{name}.")
    return found


def check(out: dict[str, Any]) -> BaseModel:
    model = MODELS[out["class_uid"]].model_validate(out)
    allowed = BASE_INCLUDED | {a for p in out["metadata"].get("profiles", []) for a in PROFILE_ATTRIBUTES[p]}
    extra = [name for name in undefined(model) if name not in allowed]
    assert extra == [], f"{out['metadata']['event_code']}: not defined by {out['class_name']}: {extra}"
    return model


def _wire(directory: Directories, raw: dict[str, Any]) -> dict[str, Any]:
    decoded = decode_batch([msg(orjson.dumps(raw))], directory)
    assert not decoded.rejects, decoded.rejects
    wire: dict[str, Any] = decoded.events[0]
    return wire


@pytest.fixture(scope="module")
def directory() -> Directories:
    return Directories([load_directory(GOLDEN / "directory.yaml")])


def _related_for(action: str) -> list[dict[str, str]]:
    if action in ("application.set_permission", "team.member_add", "team.member_remove", "user.role_change"):
        return [{"kind": "user", "id": "u-andrea"}, {"kind": "role", "id": "developer"}]
    return [{"kind": "environment", "id": "env-prod"}]


@pytest.mark.parametrize("action", sorted(ocsf.ACTIONS))
@pytest.mark.parametrize("outcome", ["success", "failure", "denied"])
def test_every_action_is_its_class_with_only_the_attributes_the_class_defines(
    directory: Directories, action: str, outcome: str
) -> None:
    kind = action.partition(".")[0]
    target_kind = {"audit_log": "application"}.get(kind, kind)
    raw = event(
        action=action,
        target={
            "kind": target_kind,
            "id": "app-billing" if target_kind == "application" else f"{target_kind}-1",
        },
        related=_related_for(action),
        outcome=outcome,
        reason="no rights" if outcome != "success" else None,
        details={"mfa": True, "version_tag": "2.5.7"},
        actor={
            "id": "u-priya",
            "ip": "10.0.0.7",
            "user_agent": "Mozilla/5.0",
            "session_id": "s-1",
            "type": "user",
        },
    )
    if kind == "audit_log":
        # Reserved to the query service's signed records: the rendering is what is tested here.
        wire = {**_wire(directory, {**raw, "action": "application.deploy"}), "action": action}
    else:
        wire = _wire(directory, raw)
    out = ocsf.to_ocsf(wire)
    cls, activity_id, _ = ocsf.ACTIONS[action]
    assert (out["class_uid"], out["activity_id"]) == (cls.uid, activity_id)
    check(out)
    # Whoever acted is in the event: as its actor where the class has one, else under unmapped.
    acting = out["actor"] if cls.has_actor else out["unmapped"]["actor"]
    assert acting["user"] == {"uid": "u-priya", "name": "Priya Raman", "type_id": 1, "type": "User"}


def test_the_classes_a_siem_expects(directory: Directories) -> None:
    def render(action: str, target: dict[str, str], **kw: Any) -> dict[str, Any]:
        return ocsf.to_ocsf(_wire(directory, event(action=action, target=target, **kw)))

    login = render("user.login", {"kind": "user", "id": "u-priya"}, details={"mfa": True})
    assert (login["class_uid"], login["activity_id"], login["type_uid"]) == (3002, 1, 300201)
    assert login["user"]["uid"] == "u-priya" and login["is_mfa"] is True
    grant = render(
        "application.set_permission",
        {"kind": "application", "id": "app-billing"},
        related=[{"kind": "user", "id": "u-andrea"}, {"kind": "role", "id": "developer"}],
    )
    assert grant["class_uid"] == 3005 and grant["user"]["uid"] == "u-andrea"
    assert grant["resource"]["uid"] == "app-billing" and grant["privileges"] == ["Developer"]
    update = render(
        "application.update",
        {"kind": "application", "id": "app-billing"},
        related=[{"kind": "team", "id": "t-1"}],
    )
    assert update["class_uid"] == 3004 and "resources" not in update  # Entity Management has none
    assert update["unmapped"]["related"][0]["id"] == "t-1"
    deploy = render(
        "application.deploy", {"kind": "application", "id": "app-billing"}, details={"version_tag": "3.1"}
    )
    assert (deploy["class_uid"], deploy["activity_id"]) == (6002, 1)
    assert deploy["app"] == {
        "uid": "app-billing",
        "name": "Billing Portal",
        "vendor_name": "acme",
        "version": "3.1",
    }
    assert deploy["metadata"]["profiles"] == ["host"] and deploy["actor"]["user"]["uid"] == "u-priya"


def test_denied_is_kept_apart_from_failed_and_severity_follows_outcome_and_action(
    directory: Directories,
) -> None:
    def render(action: str, target: dict[str, str], outcome: str) -> dict[str, Any]:
        raw = event(
            action=action, target=target, outcome=outcome, reason="r" if outcome != "success" else None
        )
        return ocsf.to_ocsf(_wire(directory, raw))

    app = {"kind": "application", "id": "app-billing"}
    user = {"kind": "user", "id": "u-andrea"}
    got = {
        (action, outcome): (out["status_id"], out["status"], out["severity_id"])
        for action, target in (("application.deploy", app), ("user.role_change", user))
        for outcome in ("success", "failure", "denied")
        for out in [render(action, target, outcome)]
    }
    assert got == {
        ("application.deploy", "success"): (1, "Success", 1),
        ("application.deploy", "failure"): (2, "Failure", 2),
        ("application.deploy", "denied"): (99, "Denied", 3),
        ("user.role_change", "success"): (1, "Success", 2),
        ("user.role_change", "failure"): (2, "Failure", 3),
        ("user.role_change", "denied"): (99, "Denied", 4),
    }


def test_the_demo_installation_maps_with_few_others(directory: Directories) -> None:
    """Every action of the demo's catalogue is in the table, and few events are "Other" (99)."""
    demo = build_directory(7)
    served = Directories([demo])
    raws = list(generate_events(demo, count=3000, days=30, seed=7, end=datetime(2026, 10, 1, tzinfo=UTC)))
    assert {r["action"] for r in raws} <= set(ocsf.ACTIONS)
    decoded = decode_batch([msg(orjson.dumps(r), offset=i) for i, r in enumerate(raws)], served)
    assert not decoded.rejects
    rendered = [ocsf.to_ocsf(w) for w in decoded.events]
    for out in rendered[:600]:
        check(out)
    activities = collections.Counter(o["activity_id"] for o in rendered)
    assert activities[ocsf.OTHER] / len(rendered) < 0.10, activities


def test_the_documented_table_is_the_code_s() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "ocsf.md").read_text()
    for action, (cls, activity_id, name) in ocsf.ACTIONS.items():
        assert f"| `{action}` | {cls.name} ({cls.uid}) | {name} ({activity_id}) |" in doc, action
