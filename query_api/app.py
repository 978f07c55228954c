"""The FastAPI application factory."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from query_api import openapi
from query_api.admin import router as admin_router
from query_api.dead_letters import router as dead_letters_router
from query_api.deps import Services
from query_api.metrics import ApiMetrics, MetricsMiddleware
from query_api.proofs import router as proofs_router
from query_api.read_audit import ReadNotRecorded
from query_api.retention import router as retention_router
from query_api.routes import router
from query_api.sql import router as sql_router
from query_api.ui import STATIC_DIR, STATIC_PATH
from query_api.ui import router as ui_router
from storage.engine import StoreError

# ClickHouse codes of a read stopped by its limits (storage.reader.ReadLimits).
_LIMIT_DETAILS = {
    159: "the query ran past its time limit (AUDITLOG_STORE_QUERY_TIMEOUT_S): narrow its range or search",
    160: "the query would run past its time limit: narrow its time range or search",
    241: "the query needed more memory than one read may take (AUDITLOG_STORE_QUERY_MAX_MEMORY_BYTES)",
}


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"query", "path", "body", "header"}:
        return f"{parts[0]} parameter {'.'.join(parts[1:]) or '(body)'}"
    return ".".join(parts)


def _problem(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    given = error.get("input")
    # What was sent, when it is short enough to read back (never a whole body).
    if isinstance(given, str) and 0 < len(given) <= 64:
        return f"{message} (got {given!r})"
    return message


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="auditlog",
        version="0.1.0",
        description=(
            "Audit log of an infrastructure management console: per-user activity, per-entity change "
            "logs and a global log, each row filtered by the caller's permissions."
        ),
    )
    app.state.services = services
    metrics = ApiMetrics(failed_authentications=lambda: services.failed_auth.count)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(dead_letters_router)
    app.include_router(proofs_router)
    app.include_router(sql_router)
    app.include_router(retention_router)
    app.include_router(ui_router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="ui-static")
    openapi.install(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"parameter": _where(tuple(e.get("loc", ()))), "problem": _problem(e)} for e in exc.errors()
        ]
        message = "; ".join(f"{e['parameter']}: {e['problem']}" for e in errors[:5])
        return Response(
            orjson.dumps({"detail": message, "errors": errors}),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(ReadNotRecorded)
    async def _not_recorded(request: Request, exc: ReadNotRecorded) -> Response:
        # The log is evidence: a read that cannot be put on record is not answered.
        return Response(
            orjson.dumps(
                {"detail": f"this read could not be recorded in the audit log, so it is refused: {exc}"}
            ),
            status_code=503,
            media_type="application/json",
        )

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> Response:
        # The message may hold SQL; the log has it, the client gets the code only.
        logging.getLogger("auditlog.api").error("store error on %s: %s", request.url.path, exc)
        detail = _LIMIT_DETAILS.get(exc.code or 0, "the store failed to answer")
        return Response(
            orjson.dumps({"detail": detail, "code": exc.code}), status_code=503, media_type="application/json"
        )

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        """Ready while the store answers: a read (and its record) can be served."""
        try:
            services.store.engine.query("SELECT 1 AS ok")
        except StoreError as exc:
            body = {"status": "not ready", "detail": f"the store does not answer (code {exc.code})"}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    token = services.settings.metrics_token.get_secret_value() if services.settings.metrics_token else None
    expected = f"Bearer {token}".encode() if token else None

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        # The counts tell how busy the installation is: behind a token when one is set.
        given = (request.headers.get("authorization") or "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            return Response(
                orjson.dumps({"detail": "a bearer token is required (AUDITLOG_API_METRICS_TOKEN)"}),
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
