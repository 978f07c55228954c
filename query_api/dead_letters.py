"""Refused input, for the administrators of its infrastructure: conflicts, forgeries, bad events.

Gated like keys and the directory (*Manage Infrastructure and Users*), limited to the
caller's infrastructure, and recorded as a read of the log before the answer leaves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, get_args

import orjson
from fastapi import Query, Request, Response
from pydantic import BaseModel, Field

from producers.contract.event import RejectCode, rfc3339_ms
from producers.contract.permissions import may_manage
from query_api.admin import need_admin, record_task
from query_api.deps import CurrentCaller, Scope, ServicesDep, v1_router
from query_api.serialize import to_ms

router = v1_router(tags=["administration"])


class KafkaSource(BaseModel):
    topic: str
    partition: int
    offset: int


class DeadLetterOut(BaseModel):
    received_at: str
    source: str = Field(description="how it came in: api, kafka, file, demo, read-audit")
    infrastructure: str | None
    event_id: str | None = Field(description="the id the input claims, where it could be read")
    code: RejectCode
    reason: str
    ingest_key_id: str | None
    kafka: KafkaSource | None
    payload_bytes: int
    payload: str = Field(description="the input as refused, cut to 64 KiB (the store keeps it whole)")


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    more: bool = Field(description="more letters match: pass the last received_at as until")


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    summary="Input refused for the caller's infrastructure, newest first, with the reason and its code",
    responses={403: {"description": "caller lacks Manage Infrastructure and Users"}},
)
def dead_letters(
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
    code: Annotated[
        RejectCode | None,
        Query(description=f"only this kind of refusal: {', '.join(get_args(RejectCode))}"),
    ] = None,
    event_id: Annotated[
        str | None, Query(max_length=256, description="only letters claiming this id")
    ] = None,
    since: Annotated[datetime | None, Query(description="received at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="received before (RFC 3339)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    need_admin(may_manage(scope))
    with services.read_slots.hold(caller.key_id or caller.user_id):
        page = services.store.dead_letters.page(
            infrastructure=caller.infrastructure,
            code=code,
            event_id=event_id,
            since_ms=to_ms(since),
            until_ms=to_ms(until),
            limit=limit,
        )
    query = {k: v for k, v in request.query_params.multi_items()}
    record_task(
        request,
        services,
        caller,
        "audit_log.read",
        ("infrastructure", caller.infrastructure),
        {"view": "dead_letters", "query": query, "returned": len(page.items)},
    )
    items = [
        {
            "received_at": rfc3339_ms(item["received_at_ms"]),
            **{k: v for k, v in item.items() if k != "received_at_ms"},
        }
        for item in page.items
    ]
    return Response(orjson.dumps({"items": items, "more": page.more}), media_type="application/json")
