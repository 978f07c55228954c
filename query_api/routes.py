"""The /v1 endpoints: activity log, change log, global log, one event, ingest."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, StringConstraints
from starlette.concurrency import run_in_threadpool

from producers.contract import strict_json
from producers.contract.event import ENTITY_KINDS, AuditEvent, KindName, rfc3339_ms
from producers.contract.permissions import Caller, ReadScope, may_read_activity_log, may_read_entity
from query_api.deps import (
    CurrentCaller,
    CurrentDirectory,
    Scope,
    Services,
    ServicesDep,
    v1_router,
)
from query_api.inclusion import inclusion
from query_api.models import BINARY, TEXT, ErrorBody, Event, EventPage, Facets, Me, Timeline
from query_api.openapi import request_body, schema_of
from query_api.parquet_export import MEDIA_TYPE as PARQUET
from query_api.parquet_export import ParquetStream
from query_api.read_audit import ReadNotRecorded
from query_api.search import SearchSyntaxError, compile_query, resolve
from query_api.serialize import event_out, summary_out, to_ms
from storage.reader import MAX_BUCKETS, MAX_PAGE, CursorError, EventFilter, View
from storage.reader import Timeline as StoredTimeline

router = v1_router()
log = logging.getLogger("auditlog.api")

Outcome = Literal["success", "failure", "denied"]


class IngestResult(BaseModel):
    """Per-batch report. Embedded mode fills `stored`/`duplicates`; Kafka mode, `published`/`spooled`."""

    received: int
    stored: int | None = None
    duplicates: int | None = None
    conflicts: int | None = None
    published: int | None = None
    spooled: int | None = None
    pending: int | None = None
    rejected: list[dict[str, Any]]


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(content=orjson.dumps(body), media_type="application/json", status_code=status_code)


def _bad(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=message)


def _unanswerable(message: str) -> HTTPException:
    """400: values the schema allows that cannot be answered (ERROR_RESPONSES)."""
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=message)


_KIND_ALTERNATIVES = "|".join(ENTITY_KINDS)


class Filters:
    """Query parameters shared by every listing."""

    def __init__(
        self,
        since: Annotated[
            datetime | None, Query(description="only tasks at or after this time (RFC 3339)")
        ] = None,
        until: Annotated[datetime | None, Query(description="only tasks before this time (RFC 3339)")] = None,
        actor: Annotated[list[str], Query(description="actor id; repeat for several", max_length=100)] = [],  # noqa: B006
        action: Annotated[
            list[Annotated[str, StringConstraints(pattern=r"^\s*[^*\s][^*]*\**\s*$")]],
            Query(
                description="exact action, or a prefix ending in * (e.g. role.*); repeatable", max_length=100
            ),
        ] = [],  # noqa: B006
        entity_kind: Annotated[list[KindName], Query(description="target entity kind; repeatable")] = [],  # noqa: B006
        entity: Annotated[
            list[Annotated[str, StringConstraints(pattern=rf"^({_KIND_ALTERNATIVES})/[\s\S]{{1,256}}$")]],
            Query(
                description="KIND/ID (or KIND/NAME) of an entity, as target or related; repeatable",
                max_length=100,
            ),
        ] = [],  # noqa: B006
        environment: Annotated[list[str], Query(max_length=100)] = [],  # noqa: B006
        outcome: Annotated[list[Outcome], Query()] = [],  # noqa: B006
        infrastructure: Annotated[list[str], Query(max_length=100)] = [],  # noqa: B006
        q: Annotated[
            str | None,
            Query(
                max_length=2000,
                description='search, e.g. `actor:u-1 action:role.* -outcome:success after:-7d "timeout"`',
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = 50,
        cursor: Annotated[
            str | None, Query(max_length=2048, description="next_cursor of the previous page")
        ] = None,
        *,
        directory: CurrentDirectory,
    ) -> None:
        since_ms, until_ms = to_ms(since), to_ms(until)
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise _unanswerable("since must be earlier than until")
        exact, prefixes = [], []
        for a in action:
            # Stored actions are canonical lower case; a filter should find them as typed.
            a = a.strip().lower()
            if not a.rstrip("*"):
                raise _bad(f"action {a!r} is empty: give an action or a prefix such as role.*")
            if "*" in a.rstrip("*"):
                raise _bad(f"action {a!r}: * is only allowed at the end, as a prefix wildcard")
            if a.endswith("*"):
                prefixes.append(a.rstrip("*"))
            else:
                exact.append(a)
        notes: list[str] = []
        entities: list[tuple[str, str]] = []
        for ref in entity:
            kind, sep, ident = ref.partition("/")
            if not sep or not ident or len(ident) > 256:
                raise _bad(f"entity {ref[:64]!r} must look like KIND/ID, e.g. application/app-42")
            if kind not in ENTITY_KINDS:
                raise _bad(
                    f"entity {ref[:64]!r}: unknown kind {kind[:32]!r}; "
                    f"expected one of {', '.join(ENTITY_KINDS)}"
                )
            entities.extend((kind, i) for i in resolve(directory, kind, (ident,), notes))
        search = None
        if q is not None and q.strip():
            try:
                compiled = compile_query(q, now=datetime.now(UTC), directory=directory)
            except SearchSyntaxError as exc:
                raise _unanswerable(f"query parameter q: {exc}") from None
            search = compiled.search
            notes.extend(compiled.notes)
        self.filter = EventFilter(
            since_ms=since_ms,
            until_ms=until_ms,
            # Names as well as ids, as in the search's actor: and env: (query_api.search.resolve).
            actor_ids=resolve(directory, "user", tuple(actor), notes),
            actions=tuple(exact),
            action_prefixes=tuple(prefixes),
            kinds=tuple(entity_kind),
            entities=tuple(entities),
            environments=resolve(directory, "environment", tuple(environment), notes),
            outcomes=tuple(outcome),
            infrastructures=resolve(directory, "infrastructure", tuple(infrastructure), notes),
            search=search,
        )
        self.notes = tuple(dict.fromkeys(notes))
        self.limit = limit
        self.cursor = cursor


FiltersDep = Annotated[Filters, Depends()]
IncludeTotal = Annotated[bool, Query(description="also count every matching row (slower on big ranges)")]
FieldsName = Literal["summary", "full"]
Fields = Annotated[
    FieldsName,
    Query(description="summary: what a list shows of each event (the default); full: every field"),
]


@dataclass
class Reading:
    """Everything a read needs: who asks, what they may see, and where to record that they asked."""

    request: Request
    caller: Caller
    scope: ReadScope
    services: Services

    def turn(self, *, queue: bool = False) -> contextlib.AbstractContextManager[None]:
        """This caller's turn at the store: at most a few reads of one key at once. `queue`:
        wait as long as it takes (an export's next chunk: its answer has begun)."""
        key = self.caller.key_id or self.caller.user_id
        return self.services.read_slots.hold(key, queue=queue)

    def deny(self, detail: str, details: dict[str, Any]) -> HTTPException:
        """A refused read is recorded too: who tried to look is what an auditor asks first."""
        self.audit(
            "audit_log.read", {**details, **_query_details(self.request)}, outcome="denied", reason=detail
        )
        return HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)

    def audit(
        self, action: str, details: dict[str, Any], *, outcome: str = "success", reason: str | None = None
    ) -> None:
        auditor = self.services.auditor
        if auditor is None:
            return
        client = self.request.client
        auditor.record(
            self.caller,
            action=action,
            details={"path": self.request.url.path, **details},
            ip=client.host if client else None,
            user_agent=self.request.headers.get("user-agent"),
            request_id=self.request.headers.get("x-request-id"),
            outcome=outcome,
            reason=reason,
        )


def get_reading(request: Request, caller: CurrentCaller, scope: Scope, services: ServicesDep) -> Reading:
    return Reading(request=request, caller=caller, scope=scope, services=services)


ReadingDep = Annotated[Reading, Depends(get_reading)]


def _query_details(request: Request) -> dict[str, Any]:
    # What was asked, as the caller sent it; the cursor is noise for a reviewer.
    return {"query": {k: v for k, v in request.query_params.multi_items() if k != "cursor"}}


def _page(
    reading: Reading, view: View, filters: Filters, include_total: bool, fields: FieldsName
) -> Response:
    reader = reading.services.store.reader
    summary = fields == "summary"
    with reading.turn():
        try:
            page = reader.page(
                scope=reading.scope,
                view=view,
                filters=filters.filter,
                limit=filters.limit,
                cursor=filters.cursor,
                summary=summary,
            )
        except CursorError as exc:
            raise _unanswerable(str(exc)) from None
        out = summary_out if summary else event_out
        body: dict[str, Any] = {"items": [out(r) for r in page.items], "next_cursor": page.next_cursor}
        if not page.items and filters.notes:
            body["notes"] = list(filters.notes)
        if include_total:
            body["total"] = reader.count(scope=reading.scope, view=view, filters=filters.filter)
    reading.audit(
        "audit_log.read",
        {"view": view.kind, **_query_details(reading.request), "returned": len(page.items)},
    )
    return _json(body)


@router.get(
    "/users/{user_id}/activity",
    response_model=EventPage,
    summary="User activity log: every task one IT user performed",
    responses={403: {"description": "caller lacks Manage Infrastructure and Users"}},
)
def user_activity(
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    reading: ReadingDep,
    filters: FiltersDep,
    include_total: IncludeTotal = False,
    fields: Fields = "summary",
) -> Response:
    if not may_read_activity_log(reading.scope):
        raise reading.deny(
            "the activity log needs Manage Infrastructure and Users", {"view": "activity", "user_id": user_id}
        )
    return _page(reading, View(kind="activity", actor_id=user_id), filters, include_total, fields)


@router.get(
    "/entities/{kind}/{entity_id}/changes",
    response_model=EventPage,
    summary="Entity change log: every task performed to one entity, as target or related",
    responses={403: {"description": "caller may not read tasks performed to this entity"}},
)
def entity_changes(
    kind: Annotated[KindName, Path(description="the entity's kind")],
    entity_id: Annotated[str, Path(min_length=1, max_length=256)],
    reading: ReadingDep,
    filters: FiltersDep,
    include_total: IncludeTotal = False,
    fields: Fields = "summary",
) -> Response:
    if not may_read_entity(reading.scope, kind, entity_id):
        raise reading.deny(
            f"you may not read the change log of this {kind}",
            {"view": "entity", "entity": f"{kind}/{entity_id}"},
        )
    view = View(kind="entity", entity_kind=kind, entity_id=entity_id)
    return _page(reading, view, filters, include_total, fields)


@router.get("/events", response_model=EventPage, summary="Global audit log: every task the caller may read")
def global_log(
    reading: ReadingDep, filters: FiltersDep, include_total: IncludeTotal = False, fields: Fields = "summary"
) -> Response:
    return _page(reading, View(), filters, include_total, fields)


FACETS = ("action", "actor_id", "target_kind", "environment", "outcome")


@router.get(
    "/events/facets",
    response_model=Facets,
    summary="Top values with counts (actions, actors, entity kinds, environments, outcomes) for a filter",
)
def facets(
    reading: ReadingDep,
    filters: FiltersDep,
    size: Annotated[int, Query(ge=1, le=100, description="values per facet")] = 10,
) -> Response:
    reader = reading.services.store.reader
    with reading.turn():
        result = reader.facets(
            scope=reading.scope, view=View(), filters=filters.filter, columns=FACETS, size=size
        )
    reading.audit("audit_log.read", {"view": "facets", **_query_details(reading.request)})
    return _json(result)


def timeline_out(timeline: StoredTimeline) -> dict[str, Any]:
    buckets = [
        {"start": rfc3339_ms(b.start_ms), **{o: b.counts.get(o, 0) for o in ("success", "failure", "denied")}}
        for b in timeline.buckets
    ]
    return {
        "since": rfc3339_ms(timeline.since_ms),
        "until": rfc3339_ms(timeline.until_ms),
        "interval_seconds": timeline.interval_ms // 1000,
        "total": sum(sum(b.counts.values()) for b in timeline.buckets),
        "buckets": buckets,
    }


@router.get(
    "/events/timeline",
    response_model=Timeline,
    summary="Matching events per interval and outcome, over the search's time range (or all of it)",
)
def timeline(
    reading: ReadingDep,
    filters: FiltersDep,
    buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description="at most this many intervals")] = 60,
) -> Response:
    reader = reading.services.store.reader
    with reading.turn():
        result = reader.timeline(
            scope=reading.scope,
            view=View(),
            filters=filters.filter,
            now_ms=int(time.time() * 1000),
            buckets=buckets,
        )
    reading.audit("audit_log.read", {"view": "timeline", **_query_details(reading.request)})
    return _json(timeline_out(result))


EXPORT_FIELDS = (
    "event_id",
    "occurred_at",
    "received_at",
    "infrastructure",
    "environment",
    "actor.id",
    "actor.name",
    "actor.type",
    "actor.ip",
    "actor.user_agent",
    "actor.session_id",
    "action",
    "target.kind",
    "target.id",
    "target.name",
    "related",
    "outcome",
    "reason",
    "changes",
    "details",
    "source.service",
    "source.host",
    "source.version",
    "request_id",
    "correlation_id",
    "enrichment.plan_application_ids",
    "enrichment.application_team_id",
    "provenance.ingest_source",
    "provenance.ingest_key_id",
)


def _csv_cell(event: dict[str, Any], path: str) -> str:
    value: Any = event
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: neutralize it (CSV injection).
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def _proved_lines(reading: Reading, batch: list[dict[str, Any]], sent: set[str]) -> bytes:
    """NDJSON rows, each with its proof; a checkpoint line precedes the first row it proves,
    so a verifier reading the file in order holds every root before the rows it needs."""
    out = []
    for row, proof in zip(batch, inclusion(reading.services.store.tree, batch), strict=True):
        if proof is not None:
            note = proof.pop("checkpoint")
            if note not in sent:
                sent.add(note)
                out.append(orjson.dumps({"checkpoint": {"log": proof["log"], "note": note}}) + b"\n")
        out.append(orjson.dumps({**event_out(row), "proof": proof}) + b"\n")
    return b"".join(out)


def _export_lines(
    reading: Reading, filters: Filters, fmt: str, export_id: str, *, proofs: bool = False
) -> Iterator[bytes]:
    """The export's bytes. Its end is recorded whatever ends it: the last row sent, the client
    gone (the server closes this generator), or a failure; with the rows handed over."""
    reader = reading.services.store.reader
    chunk = reading.services.settings.export_chunk_rows
    rows = 0
    completed = False
    parquet = ParquetStream() if fmt == "parquet" else None
    try:
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\r\n")
            writer.writerow(EXPORT_FIELDS)
            yield buffer.getvalue().encode()
        chunks = reader.iter_chunks(
            scope=reading.scope, view=View(), filters=filters.filter, chunk_rows=chunk, provable=proofs
        )
        sent: set[str] = set()
        while True:
            with reading.turn(queue=True):
                batch = next(chunks, None)
                proved = _proved_lines(reading, batch, sent) if proofs and batch else b""
            if batch is None:
                break
            if proofs:
                yield proved
            elif parquet is not None:
                # A row group per chunk: the file's body leaves as it is written, its footer last.
                yield parquet.add(batch)
            elif fmt == "csv":
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\r\n")
                for row in batch:
                    event = event_out(row)
                    writer.writerow([_csv_cell(event, f) for f in EXPORT_FIELDS])
                yield buffer.getvalue().encode()
            else:
                yield b"".join(orjson.dumps(event_out(row)) + b"\n" for row in batch)
            rows += len(batch)
        if parquet is not None:
            yield parquet.finish()
        completed = True
    finally:
        details = {"format": fmt, **_query_details(reading.request), "export_id": export_id}
        try:
            reading.audit(
                "audit_log.export", {**details, "phase": "ended", "returned": rows, "completed": completed}
            )
        except ReadNotRecorded:
            # The rows are already out: nothing left to refuse. The start is on record.
            log.error(
                "export %s ended (%d rows, completed=%s) but its end was not recorded",
                export_id,
                rows,
                completed,
            )


@router.get(
    "/events/export",
    summary="Export every matching event the caller may read, streamed (CSV, NDJSON or Parquet)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "every matching event, newest first: the format asked for",
            "content": {
                "text/csv": {"schema": TEXT},
                "application/x-ndjson": {"schema": TEXT},
                PARQUET: {"schema": BINARY},
            },
        }
    },
)
def export(
    reading: ReadingDep,
    filters: FiltersDep,
    format: Annotated[
        Literal["csv", "ndjson", "parquet"],
        Query(description="csv (with a header row), ndjson, or parquet (one file, typed columns)"),
    ] = "ndjson",
    proofs: Annotated[
        bool,
        Query(
            description="ndjson only: each row with its inclusion proof, and the signed checkpoints they need"
        ),
    ] = False,
) -> StreamingResponse:
    if proofs and format != "ndjson":
        raise _unanswerable("proofs=true needs format=ndjson")
    media = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson", "parquet": PARQUET}[format]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    export_id = str(uuid.uuid4())
    # On record before the first byte leaves (or refused with 503 if it cannot be).
    reading.audit(
        "audit_log.export",
        {"format": format, **_query_details(reading.request), "export_id": export_id, "phase": "started"},
    )
    return StreamingResponse(
        _export_lines(reading, filters, format, export_id, proofs=proofs),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-log-{stamp}.{format}"'},
    )


@router.get(
    "/events/{event_id}",
    response_model=Event,
    summary="One event, whole",
    responses={404: {"description": "no such event, or not visible to the caller"}},
)
def one_event(event_id: UUID, reading: ReadingDep) -> Response:
    with reading.turn():
        row = reading.services.store.reader.get(scope=reading.scope, event_id=str(event_id))
    reading.audit("audit_log.read", {"view": "event", "event_id": str(event_id), "found": row is not None})
    if row is None:
        # Not found and not allowed look the same: existence is not disclosed.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such event")
    return _json(event_out(row))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_batch(body: bytes, content_type: str) -> list[Any]:
    text = body.strip()
    if not text:
        raise _bad("empty body: send a JSON array of events, one JSON event, or NDJSON")
    ndjson = "ndjson" in content_type or "jsonlines" in content_type or "x-ndjson" in content_type
    if not ndjson:
        try:
            value = strict_json.loads(text)
        except strict_json.StrictJSONError as exc:
            if b"\n" not in text or "duplicate key" in exc.message:
                raise _bad(f"body is not valid JSON: {exc.message}") from None
            ndjson = True
        else:
            return value if isinstance(value, list) else [value]
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(strict_json.loads(line))
        except strict_json.StrictJSONError as exc:
            raise _bad(f"NDJSON line {number} is not valid JSON: {exc.message}") from None
    return items


_EVENT = schema_of(AuditEvent)


@router.post(
    "/events",
    response_model=IngestResult,
    summary="Ingest a batch of events (JSON array, one object, or NDJSON)",
    responses={
        207: {"model": IngestResult, "description": "stored what it could; `rejected` says why not the rest"},
        403: {"model": ErrorBody, "description": "the key may not ingest"},
        413: {"model": ErrorBody, "description": "body too large, or too many events in one batch"},
    },
    openapi_extra=request_body(
        {
            "application/json": {
                "anyOf": [schema_of(AuditEvent), {"type": "array", "items": schema_of(AuditEvent)}]
            }
        },
        description=(
            "events of the contract (producers.contract.event, v1): an array, one object, or "
            "application/x-ndjson lines; each is validated on its own, and a rejected one is "
            "kept as a dead letter with its reason"
        ),
    ),
)
async def ingest(request: Request, caller: CurrentCaller, services: ServicesDep) -> Response:
    if not caller.can_ingest:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this API key may not ingest events")
    body = await _read_body(request, services.settings.max_body_bytes)
    items = _decode_batch(body, request.headers.get("content-type", ""))
    if len(items) > services.settings.max_batch_events:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(items)} events in one batch; the limit is {services.settings.max_batch_events}",
        )
    received_at_ms = int(time.time() * 1000)
    report = await run_in_threadpool(
        services.ingestor.ingest,
        items,
        received_at_ms=received_at_ms,
        key_id=caller.key_id,
        key_infrastructure=caller.infrastructure,
    )
    body_out = report.to_dict()
    return _json(body_out, status_code=200 if not body_out["rejected"] else 207)


@router.get("/me", response_model=Me, summary="The caller and what they may read")
def me(caller: CurrentCaller, scope: Scope, directory: CurrentDirectory) -> Response:
    user = directory.users.get(caller.user_id)
    return _json(
        {
            "user_id": caller.user_id,
            "infrastructure": caller.infrastructure,
            "key_id": caller.key_id,
            "name": user.name if user else None,
            "can_ingest": caller.can_ingest,
            "can_publish_directory": caller.can_publish_directory,
            "manage_infrastructure": scope.infra,
            "manage_all_teams": scope.all_teams,
            "managed_teams": sorted(scope.teams),
            "list_all_applications": scope.all_apps,
            "listed_applications": sorted(scope.apps),
            "readable_deployment_plans": sorted(scope.plans),
        }
    )
