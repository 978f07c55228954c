"""FastAPI dependencies: who is calling, what they may read, and the services behind the routes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producers.directory import Directory
from query_api.permissions import Caller, scope_for
from query_api.read_audit import ReadAuditor
from query_api.settings import ApiSettings
from storage.read_scope import ReadScope
from storage.store import ApiKey, Store


class Ingestor(Protocol):
    """Takes decoded events, reports per event. Embedded: straight to the store; Kafka: to audit.raw."""

    def ingest(self, items: list[Any], *, received_at_ms: int) -> Any: ...


class DirectorySource:
    """The directory as the store holds it, re-read at most every `ttl` seconds."""

    def __init__(self, store: Store, *, ttl: float = 5.0) -> None:
        self._store = store
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: Directory | None = None
        self._loaded_at = 0.0

    def get(self) -> Directory:
        with self._lock:
            if self._value is None or time.monotonic() - self._loaded_at > self._ttl:
                self._value = self._store.directory.load()
                self._loaded_at = time.monotonic()
            return self._value

    def replace(self, directory: Directory) -> None:
        self._store.directory.replace(directory)
        with self._lock:
            self._value = directory
            self._loaded_at = time.monotonic()


class KeyCache:
    """Key lookups cached briefly: a revoked key stops working within `ttl` seconds."""

    def __init__(self, store: Store, *, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    def lookup(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
        found = self._store.keys.lookup(key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, found)
        return found


@dataclass
class Services:
    store: Store
    directory: DirectorySource
    keys: KeyCache
    ingestor: Ingestor
    settings: ApiSettings
    auditor: ReadAuditor | None = None


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer alk_...`")

# The viewer keeps the key in this HttpOnly cookie; reads accept it, writes need the header.
SESSION_COOKIE = "auditlog_key"


def caller_from_key(services: Services, key: str | None, *, via_cookie: bool = False) -> Caller | None:
    if not key:
        return None
    found = services.keys.lookup(key)
    if found is None:
        return None
    return Caller(
        user_id=found.user_id,
        can_ingest=found.can_ingest and not via_cookie,
        key_label=found.label,
    )


def get_caller(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    caller = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        caller = caller_from_key(services, credentials.credentials)
    elif credentials is None:
        # A cookie never grants ingest: a cross-site form post must not write events.
        caller = caller_from_key(services, request.cookies.get(SESSION_COOKIE), via_cookie=True)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def get_directory(services: ServicesDep) -> Directory:
    return services.directory.get()


CurrentDirectory = Annotated[Directory, Depends(get_directory)]


def get_scope(caller: CurrentCaller, directory: CurrentDirectory) -> ReadScope:
    return scope_for(caller, directory)


Scope = Annotated[ReadScope, Depends(get_scope)]
