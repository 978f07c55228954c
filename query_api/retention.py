"""Retention and legal holds of the caller's infrastructure (storage.retention).

All of it is gated by *Manage Infrastructure and Users* and acts on the caller's own
infrastructure. Every change is a task of its own in the log, recorded in the order that
fails safe: a new policy and the lifting of a hold are recorded before they apply (an
unrecorded change never takes effect), a new hold after it is stored (an unrecorded hold
holds more, never less). A purge records its plan before it removes anything.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from producers.contract.directory import Directory
from producers.contract.event import ENTITY_KINDS, KindName, rfc3339_ms
from producers.contract.permissions import Caller, may_manage
from query_api.admin import need_admin, record_task
from query_api.deps import (
    CurrentCaller,
    CurrentDirectory,
    Scope,
    Services,
    ServicesDep,
    v1_router,
)
from query_api.read_audit import ReadAuditor
from query_api.serialize import to_ms
from storage.retention import MAX_DAYS, RETENTION_ACTIONS, LegalHold, Policy, PurgePlan, PurgeResult, Rule

router = v1_router(tags=["retention"])

RETENTION_ACTOR = "auditlog-retention"
"""The actor of a purge: the service itself, on its schedule or on an administrator's request."""

Days = Annotated[int, Field(ge=1, le=MAX_DAYS)]
_KINDS: tuple[str, ...] = KindName.__args__  # type: ignore[attr-defined]


class RuleIn(BaseModel):
    # The validator's rule, said in the schema too: a client generated from it sends no bare rule.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["environment"], "properties": {"environment": {"type": "string"}}},
                {"required": ["entity_kind"], "properties": {"entity_kind": {"type": "string"}}},
            ]
        },
    )

    days: Days
    environment: str | None = Field(default=None, max_length=256, description="an environment id")
    entity_kind: KindName | None = Field(default=None, description="the kind of the rows' target")

    @model_validator(mode="after")
    def _named(self) -> RuleIn:
        if self.environment is None and self.entity_kind is None:
            raise ValueError("a rule names an environment, an entity kind or both")
        return self


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_days: Days | None = Field(description="kept this long when no rule matches; null: for ever")
    rules: list[RuleIn] = Field(default=[], max_length=200)


class PolicyOut(BaseModel):
    default_days: int | None
    rules: list[RuleIn]
    updated_at: str
    updated_by: str


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256, description="the case or matter it is for")
    reason: str = Field(default="", max_length=4096)
    environment: str | None = Field(default=None, max_length=256, description="an environment id")
    entity: str | None = Field(
        default=None,
        max_length=512,
        pattern=rf"^({'|'.join(ENTITY_KINDS)})/[\s\S]+$",
        description="`kind/id`: rows with it as target or related entity",
    )
    actor: str | None = Field(default=None, min_length=1, max_length=256, description="an actor id")
    since: datetime | None = Field(default=None, description="rows that occurred at or after this")
    until: datetime | None = Field(default=None, description="rows that occurred before this")


class HoldOut(BaseModel):
    hold_id: str
    name: str
    reason: str
    environment: str | None
    entity: str | None
    actor: str | None
    since: str | None
    until: str | None
    created_at: str
    created_by: str
    active: bool
    lifted_at: str | None
    lifted_by: str | None
    rows_covered: int | None = Field(default=None, description="rows it covers now (on create only)")


class PurgeLine(BaseModel):
    rule: str
    month: str
    rows: int


class PurgeOut(BaseModel):
    purge_id: str | None
    at: str
    dry_run: bool
    rows: int
    held_rows: int
    by_rule: list[PurgeLine]
    partitions_dropped: list[str]
    partitions_mutated: list[str]


class PurgeRecord(BaseModel):
    purge_id: str
    at: str
    purged_rows: int
    plan: dict[str, Any]


class RetentionOut(BaseModel):
    policy: PolicyOut | None = Field(description="null: nothing of this infrastructure is ever purged")
    holds: list[HoldOut]
    purges: list[PurgeRecord] = Field(description="the newest purges, newest first")
    kept_actions: list[str] = Field(description="actions never purged: the record of retention itself")


def _task(request: Request, services: Services, caller: Caller, action: str, details: dict[str, Any]) -> None:
    record_task(request, services, caller, action, ("infrastructure", caller.infrastructure), details)


def _unanswerable(detail: str) -> HTTPException:
    # 400: a body its schema allows that cannot apply (query_api.models.ERROR_RESPONSES).
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=detail)


def _known_environment(directory: Directory, environment: str | None, where: str) -> None:
    # A misspelt environment would match nothing: its rows purged sooner, or not held.
    if environment is not None and environment not in directory.environments:
        known = ", ".join(sorted(directory.environments)[:20]) or "none"
        raise _unanswerable(f"{where}: {environment[:64]!r} is no environment id of the directory ({known})")


def _hold_out(hold: LegalHold, rows_covered: int | None = None) -> HoldOut:
    def at(ms: int | None) -> str | None:
        return None if ms is None else rfc3339_ms(ms)

    return HoldOut(
        hold_id=hold.hold_id,
        name=hold.name,
        reason=hold.reason,
        environment=hold.environment,
        entity=hold.entity,
        actor=hold.actor,
        since=at(hold.since_ms),
        until=at(hold.until_ms),
        created_at=rfc3339_ms(hold.created_at_ms),
        created_by=hold.created_by,
        active=hold.active,
        lifted_at=at(hold.lifted_at_ms),
        lifted_by=hold.lifted_by,
        rows_covered=rows_covered,
    )


def retention_of(services: Services, infrastructure: str) -> RetentionOut:
    retention = services.store.retention
    stored = retention.policy(infrastructure)
    policy = None
    if stored is not None:
        policy = PolicyOut(
            default_days=stored.policy.default_days,
            rules=[RuleIn.model_validate(r) for r in stored.policy.to_json()["rules"]],
            updated_at=rfc3339_ms(stored.updated_at_ms),
            updated_by=stored.updated_by,
        )
    return RetentionOut(
        policy=policy,
        holds=[_hold_out(h) for h in retention.holds(infrastructure)],
        purges=[
            PurgeRecord(
                purge_id=p["purge_id"],
                at=rfc3339_ms(p["at_ms"]),
                purged_rows=p["purged_rows"],
                plan=p["plan"],
            )
            for p in retention.purges(infrastructure, limit=20)
        ],
        kept_actions=list(RETENTION_ACTIONS),
    )


@router.get("/retention", response_model=RetentionOut, summary="Retention policy, legal holds and purges")
def get_retention(
    request: Request, caller: CurrentCaller, scope: Scope, services: ServicesDep
) -> RetentionOut:
    need_admin(may_manage(scope))
    out = retention_of(services, caller.infrastructure)
    _task(request, services, caller, "audit_log.read", {"view": "retention"})
    return out


@router.put(
    "/retention",
    response_model=RetentionOut,
    summary="Set the retention policy: rows are kept for the longest period of the rules that match them, "
    "else the default",
)
def set_retention(
    body: PolicyIn,
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    directory: CurrentDirectory,
    services: ServicesDep,
) -> RetentionOut:
    need_admin(may_manage(scope))
    for i, rule in enumerate(body.rules):
        _known_environment(directory, rule.environment, f"rules.{i}.environment")
    policy = Policy(
        default_days=body.default_days,
        rules=tuple(
            Rule(days=r.days, environment=r.environment, entity_kind=r.entity_kind) for r in body.rules
        ),
    )
    before = services.store.retention.policy(caller.infrastructure)
    _task(
        request,
        services,
        caller,
        "audit_log.retention_update",
        {"before": before.policy.to_json() if before else None, "after": policy.to_json()},
    )
    services.store.retention.set_policy(
        caller.infrastructure, policy, by=caller.user_id, now_ms=int(time.time() * 1000)
    )
    return retention_of(services, caller.infrastructure)


def _purge_out(plan: PurgePlan, result: PurgeResult, infrastructure: str, purge_id: str | None) -> PurgeOut:
    mine = [line for line in plan.lines if line.infrastructure == infrastructure]
    return PurgeOut(
        purge_id=purge_id,
        at=rfc3339_ms(plan.now_ms),
        dry_run=purge_id is None,
        rows=result.purged.get(infrastructure, 0) if purge_id else plan.rows(infrastructure),
        held_rows=plan.held.get(infrastructure, 0),
        by_rule=[PurgeLine(rule=line.rule, month=line.month, rows=line.rows) for line in mine],
        partitions_dropped=result.partitions_dropped,
        partitions_mutated=result.partitions_mutated,
    )


PurgeRecorder = Callable[[str, dict[str, Any]], str]


def purge_recorder(auditor: ReadAuditor) -> PurgeRecorder:
    """`record` for `RetentionStore.purge`: each infrastructure's plan as an `audit_log.purge`
    event of the system actor, durable before the purge goes on (or it raises)."""

    def record(infrastructure: str, details: dict[str, Any]) -> str:
        return auditor.record_system(
            infrastructure, actor_id=RETENTION_ACTOR, action="audit_log.purge", details=details
        )

    return record


@router.post(
    "/retention/purge",
    response_model=PurgeOut,
    summary="Purge now what the policy has expired and no hold keeps (dry_run: only say what would go)",
)
def purge_now(
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
    dry_run: Annotated[bool, Query(description="count, remove nothing")] = True,
) -> PurgeOut:
    need_admin(may_manage(scope))
    if services.auditor is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="a purge is recorded in the log before it runs, and this service records nothing "
            "(AUDITLOG_API_AUDIT_READS=false)",
        )
    record = purge_recorder(services.auditor)
    ids: dict[str, str] = {}

    def recorded(infrastructure: str, details: dict[str, Any]) -> str:
        ids[infrastructure] = record(infrastructure, {**details, "requested_by": caller.user_id})
        return ids[infrastructure]

    plan, result = services.store.retention.purge(
        int(time.time() * 1000), record=recorded, infrastructures=[caller.infrastructure], dry_run=dry_run
    )
    return _purge_out(plan, result, caller.infrastructure, ids.get(caller.infrastructure))


@router.get(
    "/legal-holds", response_model=list[HoldOut], summary="Legal holds of the caller's infrastructure"
)
def list_holds(
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
    include_lifted: Annotated[bool, Query(description="lifted holds too")] = False,
) -> list[HoldOut]:
    need_admin(may_manage(scope))
    holds = services.store.retention.holds(caller.infrastructure, include_lifted=include_lifted)
    _task(request, services, caller, "audit_log.read", {"view": "legal_holds", "returned": len(holds)})
    return [_hold_out(h) for h in holds]


@router.post(
    "/legal-holds",
    response_model=HoldOut,
    status_code=201,
    summary="Place a legal hold: nothing it covers is purged until it is lifted",
)
def create_hold(
    body: HoldIn,
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    directory: CurrentDirectory,
    services: ServicesDep,
) -> HoldOut:
    need_admin(may_manage(scope))
    _known_environment(directory, body.environment, "environment")
    if body.entity is not None:
        kind, _, ident = body.entity.partition("/")
        if kind not in _KINDS or not ident:
            raise _unanswerable(
                f"entity: {body.entity[:64]!r} is not kind/id with a kind of {', '.join(_KINDS)}"
            )
    since, until = to_ms(body.since), to_ms(body.until)
    if since is not None and until is not None and since >= until:
        raise _unanswerable("since must be before until")
    hold = LegalHold(
        hold_id=str(uuid.uuid4()),
        infrastructure=caller.infrastructure,
        name=body.name,
        reason=body.reason,
        created_at_ms=int(time.time() * 1000),
        created_by=caller.user_id,
        environment=body.environment,
        entity=body.entity,
        actor=body.actor,
        since_ms=since,
        until_ms=until,
    )
    retention = services.store.retention
    retention.create_hold(hold)
    out = _hold_out(hold, retention.rows_covered(hold))
    _task(request, services, caller, "audit_log.legal_hold_create", {"hold": out.model_dump()})
    return out


@router.delete(
    "/legal-holds/{hold_id}",
    response_model=HoldOut,
    summary="Lift a legal hold: what it covered is purged again when the policy says so",
    responses={404: {"description": "no such hold"}, 409: {"description": "already lifted"}},
)
def lift_hold(
    hold_id: Annotated[str, Path(min_length=36, max_length=36)],
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
) -> HoldOut:
    need_admin(may_manage(scope))
    retention = services.store.retention
    found = retention.hold(caller.infrastructure, hold_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such legal hold")
    if not found.active:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="this legal hold is already lifted")
    _task(request, services, caller, "audit_log.legal_hold_lift", {"hold": _hold_out(found).model_dump()})
    return _hold_out(retention.lift(found, by=caller.user_id, now_ms=int(time.time() * 1000)))
