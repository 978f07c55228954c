"""POST /v1/sql: one read-only SELECT over the analyst views, as the caller (`storage.analyst_sql`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Body, HTTPException, Response, status
from pydantic import BaseModel, Field

from query_api.deps import v1_router
from query_api.models import BINARY, TEXT, ErrorBody
from query_api.parquet_export import MEDIA_TYPE as PARQUET
from query_api.routes import ReadingDep
from storage.analyst_sql import MAX_QUERY_CHARS, SqlRefused, describe_error
from storage.engine import StoreError

router = v1_router(tags=["analysts"])

# A failing query is its author's to fix (an unknown column, a type, too many rows): 400 with
# the server's code and message. The limits of every read (159, 160: time; 241: memory) and a
# store that does not answer (no code) stay 503, as for every read.
_THE_STORES = frozenset({159, 160, 241})
_MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8", "parquet": PARQUET}


class SqlRequest(BaseModel):
    query: str = Field(
        max_length=MAX_QUERY_CHARS,
        description="one ClickHouse SELECT over analyst_events and analyst_log_reads (docs/analyst-views.md)",
    )
    format: Literal["json", "csv", "parquet"] = "json"


class SqlRows(BaseModel):
    rows: list[dict[str, Any]]
    row_count: int


@router.post(
    "/sql",
    summary="Run one SELECT over the analyst views, on the rows the caller may read",
    response_model=SqlRows,
    responses={
        200: {
            "content": {"text/csv": {"schema": TEXT}, PARQUET: {"schema": BINARY}},
            "description": "the rows (json, csv or parquet)",
        },
        400: {
            "model": ErrorBody,
            "description": "the query is refused (the reason says why) or fails (the server's code)",
        },
        403: {"model": ErrorBody, "description": "analyst SQL is off on this server"},
    },
)
def run_sql(reading: ReadingDep, body: Annotated[SqlRequest, Body()]) -> Response:
    if not reading.services.settings.sql_enabled:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="analyst SQL is off on this server (AUDITLOG_API_SQL_ENABLED=true)",
        )
    sql = reading.services.store.analyst_sql
    max_rows = reading.services.settings.sql_max_rows
    details = {"view": "sql", "query": body.query, "format": body.format}
    try:
        with reading.turn():
            result = sql.run(body.query, reading.scope, fmt=body.format, max_rows=max_rows)
    except SqlRefused as exc:
        reading.audit("audit_log.read", {**details, "refused": str(exc)})
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"query refused: {exc}") from None
    except StoreError as exc:
        if exc.code is None or exc.code in _THE_STORES:
            raise
        failed = describe_error(exc)
        reading.audit("audit_log.read", {**details, "failed": failed})
        message = (
            f"more than {max_rows} rows (AUDITLOG_API_SQL_MAX_ROWS): aggregate, or add a LIMIT"
            if exc.code == 396
            else failed["detail"]
        )
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"query failed (ClickHouse code {exc.code}): {message}",
        ) from None
    if body.format == "json":
        rows = [orjson.loads(line) for line in result.data.splitlines() if line]
        reading.audit("audit_log.read", {**details, "returned": len(rows)})
        return Response(orjson.dumps({"rows": rows, "row_count": len(rows)}), media_type=_MEDIA["json"])
    reading.audit("audit_log.read", {**details, "returned_bytes": len(result.data)})
    return Response(result.data, media_type=_MEDIA[body.format])
