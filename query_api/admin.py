"""Administration of a running installation: API keys and the directory.

Both are gated by *Manage Infrastructure and Users* in the caller's own
infrastructure (a key made for directory publishing may also replace the
directory), act on that infrastructure only, and are recorded as tasks of their
own before the answer leaves: `user.api_key_create` / `user.api_key_revoke` on the
key's user, `infrastructure.directory_replace` on the infrastructure.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import yaml
from fastapi import HTTPException, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from producers.contract.directory import Directory
from producers.contract.permissions import Caller, may_manage
from query_api.deps import (
    CurrentCaller,
    CurrentDirectory,
    DirectoryNotPublished,
    Scope,
    Services,
    ServicesDep,
    v1_router,
)
from query_api.models import ErrorBody
from query_api.openapi import request_body, schema_of

router = v1_router(tags=["administration"])

MAX_DIRECTORY_BYTES = 64 * 1024 * 1024


class KeyOut(BaseModel):
    key_id: str
    prefix: str = Field(description="the first characters of the key, to recognise it")
    infrastructure: str
    user_id: str
    label: str
    can_ingest: bool
    can_publish_directory: bool
    created_at: str
    expires_at: str | None
    revoked: bool


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown once, only its SHA-256 is stored")


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256, description="a user of the caller's directory")
    label: str = Field(default="", max_length=256)
    can_ingest: bool = False
    can_publish_directory: bool = False
    expires_at: datetime | None = Field(default=None, description="RFC 3339; none: the key does not expire")


class DirectoryReplaced(BaseModel):
    infrastructure: str
    users: int
    roles: int
    teams: int
    applications: int
    deployment_plans: int


def record_task(
    request: Request, services: Services, caller: Caller, action: str, target: tuple[str, str], details: Any
) -> None:
    auditor = services.auditor
    if auditor is None:
        return
    client = request.client
    auditor.record(
        caller,
        action=action,
        details={"path": request.url.path, **details},
        ip=client.host if client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=request.headers.get("x-request-id"),
        target=target,
    )


def need_admin(scope_ok: bool) -> None:
    if not scope_ok:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this needs Manage Infrastructure and Users")


def expiry_ms(expires_at: datetime | None) -> int | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    ms = int(expires_at.timestamp() * 1000)
    if ms <= int(time.time() * 1000):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="expires_at is in the past")
    return ms


@router.get("/keys", response_model=list[KeyOut], summary="API keys of the caller's infrastructure")
def list_keys(caller: CurrentCaller, scope: Scope, services: ServicesDep) -> Response:
    need_admin(may_manage(scope))
    keys = services.store.keys.list(infrastructure=caller.infrastructure)
    return Response(orjson.dumps([k.to_public() for k in keys]), media_type="application/json")


@router.post(
    "/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key for a user of the caller's infrastructure (the key is shown once)",
)
def create_key(
    body: KeyRequest,
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    directory: CurrentDirectory,
    services: ServicesDep,
) -> Response:
    need_admin(may_manage(scope))
    service_only = body.can_publish_directory and not body.can_ingest
    if body.user_id not in directory.users and not service_only:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"user {body.user_id[:64]!r} is not in the directory of {caller.infrastructure!r}",
        )
    key, created = services.store.keys.create(
        infrastructure=caller.infrastructure,
        user_id=body.user_id,
        label=body.label,
        can_ingest=body.can_ingest,
        can_publish_directory=body.can_publish_directory,
        expires_at_ms=expiry_ms(body.expires_at),
    )
    record_task(
        request, services, caller, "user.api_key_create", ("user", body.user_id), {"key": created.to_public()}
    )
    return Response(
        orjson.dumps({**created.to_public(), "key": key}), status_code=201, media_type="application/json"
    )


@router.delete(
    "/keys/{key_id}",
    response_model=KeyOut,
    summary="Revoke an API key: it and its viewer sessions stop working within the key cache interval",
    responses={404: {"description": "no such key in the caller's infrastructure"}},
)
def revoke_key(
    key_id: Annotated[str, Path(min_length=16, max_length=16, pattern="^[0-9a-f]{16}$")],
    request: Request,
    caller: CurrentCaller,
    scope: Scope,
    services: ServicesDep,
) -> Response:
    need_admin(may_manage(scope))
    revoked = services.store.keys.revoke(key_id, infrastructure=caller.infrastructure)
    if revoked is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such key")
    services.keys.forget_id(key_id)
    services.sessions.end_for_key_id(key_id)
    record_task(
        request,
        services,
        caller,
        "user.api_key_revoke",
        ("user", revoked.user_id),
        {"key": revoked.to_public()},
    )
    return Response(orjson.dumps(revoked.to_public()), media_type="application/json")


def _parse_directory(body: bytes, content_type: str, infrastructure: str) -> Directory:
    try:
        data = orjson.loads(body) if "json" in content_type else yaml.safe_load(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"body is not a JSON or YAML directory: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="a directory is a mapping of entity lists"
        )
    named = data.get("infrastructure")
    if named not in (None, infrastructure):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"this key belongs to {infrastructure!r}, not to {str(named)[:64]!r}",
        )
    try:
        return Directory.model_validate({**data, "infrastructure": infrastructure})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(directory)"
        # 400: the schema cannot say everything a directory must be (its references resolve).
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"invalid directory: {where}: {first.get('msg')}"
        ) from None


@router.put(
    "/directory",
    response_model=DirectoryReplaced,
    summary="Replace the directory of the caller's infrastructure (JSON or YAML); applies at once",
    responses={
        403: {"description": "needs Manage Infrastructure and Users, or a directory key"},
        413: {"model": ErrorBody, "description": "body too large"},
    },
    openapi_extra=request_body(
        {"application/json": schema_of(Directory)},
        description="the whole directory (application/yaml is taken too, in the same shape)",
    ),
)
async def replace_directory(
    request: Request, caller: CurrentCaller, scope: Scope, services: ServicesDep
) -> Response:
    need_admin(may_manage(scope) or caller.can_publish_directory)
    body = await request.body()
    if len(body) > MAX_DIRECTORY_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, detail=f"body larger than {MAX_DIRECTORY_BYTES} bytes"
        )
    directory = _parse_directory(body, request.headers.get("content-type", ""), caller.infrastructure)
    try:
        await run_in_threadpool(services.directory.replace, directory)
    except DirectoryNotPublished as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the directory topic did not take the change, nothing was changed: {exc}",
        ) from None
    summary = {
        "infrastructure": directory.infrastructure,
        "users": len(directory.users),
        "roles": len(directory.roles),
        "teams": len(directory.teams),
        "applications": len(directory.applications),
        "deployment_plans": len(directory.deployment_plans),
    }
    target = ("infrastructure", caller.infrastructure)
    await run_in_threadpool(
        record_task, request, services, caller, "infrastructure.directory_replace", target, summary
    )
    return Response(orjson.dumps(summary), media_type="application/json")


@router.get(
    "/directory",
    summary="The directory of the caller's infrastructure, as stored now",
    responses={200: {"content": {"application/json": {"schema": schema_of(Directory)}}, "description": "it"}},
)
def get_directory(caller: CurrentCaller, scope: Scope, directory: CurrentDirectory) -> Response:
    need_admin(may_manage(scope) or caller.can_publish_directory)
    return Response(directory.to_json(), media_type="application/json")
