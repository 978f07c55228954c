"""Proofs: a row's inclusion in its signed log, and the consistency of two checkpoints.

A proof reveals hashes only: the audit path, the row's own sealed digest and stored
`changes`/`details` texts (what its leaf hashes), and a signed checkpoint. It is
given to whoever may read the event, through the same read as `GET /v1/events/{id}`
(recorded like it); consistency proofs and the checkpoints themselves are for
administrators. The formats are described in docs/tamper-evidence.md.
"""

from __future__ import annotations

import base64
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from producers.contract.permissions import may_manage
from producers.contract.tlog import merkle
from query_api.admin import need_admin, record_task
from query_api.deps import CurrentCaller, Scope, ServicesDep, v1_router
from query_api.inclusion import inclusion
from query_api.routes import ReadingDep

router = v1_router(tags=["tamper evidence"])


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


class InclusionProof(BaseModel):
    event_id: str
    log: str
    index: int = Field(description="the leaf index of the event in its log")
    tree_size: int = Field(description="the size of the signed tree the path leads to")
    sealed: str = Field(description="hex SHA-256 of the row's internal columns, as its leaf hashes it")
    changes: str = Field(description="the stored JSON text of changes, as its leaf hashes it")
    details: str = Field(description="the stored JSON text of details, as its leaf hashes it")
    audit_path: list[str] = Field(description="base64 hashes, nearest the leaf first (RFC 9162)")
    checkpoint: str = Field(description="the signed checkpoint (C2SP signed note)")


@router.get(
    "/events/{event_id}/proof",
    response_model=InclusionProof,
    summary="The event's leaf, audit path and signed checkpoint: proof that it is in the log, unaltered",
    responses={
        404: {"description": "no such event, or not visible to the caller"},
        409: {"description": "the event is not covered by a signed checkpoint yet"},
    },
)
def event_proof(event_id: UUID, reading: ReadingDep) -> Response:
    with reading.turn():
        row = reading.services.store.reader.get(scope=reading.scope, event_id=str(event_id), provable=True)
        proof = inclusion(reading.services.store.tree, [row])[0] if row is not None else None
    reading.audit("audit_log.read", {"view": "proof", "event_id": str(event_id), "found": row is not None})
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such event")
    if proof is None:
        detail = (
            "this event was stored before the tree existed and has no leaf"
            if not row.get("log")
            else "this event is not covered by a signed checkpoint yet; one is made at least once a minute"
        )
        raise HTTPException(status.HTTP_409_CONFLICT, detail=detail)
    return Response(orjson.dumps(proof), media_type="application/json")


class CheckpointOut(BaseModel):
    log: str
    tree_size: int
    root_hash: str = Field(description="base64")
    created_at_ms: int
    key_id: str
    note: str


@router.get(
    "/checkpoints",
    response_model=list[CheckpointOut],
    summary="The signed checkpoints of a log, oldest first (administrators)",
    responses={403: {"description": "caller lacks Manage Infrastructure and Users"}},
)
def checkpoints(
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
    log: Annotated[str, Query(max_length=256, description="the log, e.g. local or audit.raw/0")],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    need_admin(may_manage(scope))
    with services.read_slots.hold(caller.key_id or caller.user_id):
        found = services.store.tree.checkpoints(log)[-limit:]
    record_task(
        request, services, caller, "audit_log.read", ("infrastructure", caller.infrastructure),
        {"view": "checkpoints", "log": log, "returned": len(found)},
    )  # fmt: skip
    body = [
        {
            "log": c.log,
            "tree_size": c.size,
            "root_hash": _b64(c.root),
            "created_at_ms": c.created_ms,
            "key_id": c.key_id,
            "note": c.note,
        }
        for c in found
    ]
    return Response(orjson.dumps(body), media_type="application/json")


class ConsistencyProof(BaseModel):
    log: str
    first: int
    second: int
    proof: list[str] = Field(description="base64 hashes (RFC 9162 2.1.4)")


@router.get(
    "/checkpoints/consistency",
    response_model=ConsistencyProof,
    summary="Proof that the log of `first` leaves is a prefix of the log of `second` (administrators)",
    responses={
        400: {"description": "sizes out of order, or beyond the newest checkpoint"},
        403: {"description": "caller lacks Manage Infrastructure and Users"},
    },
)
def consistency(
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
    log: Annotated[str, Query(max_length=256)],
    first: Annotated[int, Query(ge=1)],
    second: Annotated[int, Query(ge=1)],
) -> Response:
    need_admin(may_manage(scope))
    tree = services.store.tree
    with services.read_slots.hold(caller.key_id or caller.user_id):
        newest = tree.latest_checkpoint(log)
        if newest is None or not first <= second <= newest.size:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=f"need 1 <= first <= second <= {newest.size if newest else 0} (the newest checkpoint "
                f"of log {log!r})",
            )
        proof = merkle.prove_consistency(first, second, lambda coords: tree.proof_nodes(log, coords))
    record_task(
        request, services, caller, "audit_log.read", ("infrastructure", caller.infrastructure),
        {"view": "consistency", "log": log, "first": first, "second": second},
    )  # fmt: skip
    body = {"log": log, "first": first, "second": second, "proof": [_b64(h) for h in proof]}
    return Response(orjson.dumps(body), media_type="application/json")
