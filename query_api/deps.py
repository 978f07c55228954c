"""FastAPI dependencies: who is calling, what they may read, and the services behind the routes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, get_origin

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producers.contract.directory import Directories, Directory, DirectorySnapshot
from producers.contract.permissions import Caller, ReadScope, scope_for
from query_api.models import ERROR_RESPONSES
from query_api.read_audit import Ingestor as Ingestor
from query_api.read_audit import ReadAuditor
from query_api.sessions import Session, SessionStore
from query_api.settings import ApiSettings
from storage.store import MAX_KEY_LENGTH, ApiKey, Store, hash_key, key_id_of

log = logging.getLogger("auditlog.auth")


DirectoryPublisher = Callable[[list[DirectorySnapshot]], object]


class DirectoryNotPublished(RuntimeError):
    """The directory topic did not take a change (Kafka mode); nothing was changed."""


class DirectorySource:
    """The installation's directories as the store holds them, re-read at most every `ttl` seconds.

    In embedded mode this process is the only writer, so `replace` takes effect at once.
    In Kafka mode the workers follow `audit.directory` (their enrichment and the store's
    copy come from it), so `replace` first publishes the change there (`publish`), then
    saves it for this API at once; the workers save the same snapshots again as they
    read them, which changes nothing.
    """

    def __init__(self, store: Store, *, ttl: float = 5.0, publish: DirectoryPublisher | None = None) -> None:
        self._store = store
        self._ttl = ttl
        self._publish = publish
        self._lock = threading.Lock()
        self._value: Directories | None = None
        self._loaded_at = 0.0

    def get(self) -> Directories:
        with self._lock:
            if self._value is None or time.monotonic() - self._loaded_at > self._ttl:
                self._value = self._store.directory.load()
                self._loaded_at = time.monotonic()
            return self._value

    def replace(self, directory: Directory) -> None:
        """`directory` becomes the whole truth of its infrastructure, now."""
        with self._lock:
            stored = self._store.directory.load()
            changes = self._store.directory.changes(directory, stored=stored)
            if self._publish is not None:
                try:
                    self._publish(changes)
                except Exception as exc:
                    # Nothing saved: the store must not run ahead of what the workers follow.
                    raise DirectoryNotPublished(str(exc).splitlines()[0][:500]) from None
            self._store.directory.save(changes, version=time.time_ns())
            self._value = stored.replaced(directory)
            self._loaded_at = time.monotonic()


class KeyCache:
    """Key lookups cached briefly: a revoked or expired key stops working within `ttl` seconds.

    Bounded (least recently used out first), misses included, so that a flood of
    made-up keys costs lookups but never memory.
    """

    def __init__(self, store: Store, *, ttl: float, max_entries: int = 10_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()

    def lookup(self, key: str) -> ApiKey | None:
        """The usable key behind `key`, or None (unknown, too long, revoked or expired)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        return self.lookup_hash(hash_key(key))

    def lookup_hash(self, key_hash: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_hash)
            if hit is not None and now - hit[0] < self._ttl:
                self._cache.move_to_end(key_hash)
                found = hit[1]
            else:
                found = None
                hit = None
        if hit is None:
            found = self._store.keys.lookup_hash(key_hash)
            with self._lock:
                self._cache[key_hash] = (now, found)
                self._cache.move_to_end(key_hash)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        if found is None or not found.usable(int(time.time() * 1000)):
            return None
        return found

    def forget_id(self, key_id: str) -> None:
        """Drop a key from the cache at once (it was revoked here)."""
        with self._lock:
            for key_hash in [h for h in self._cache if key_id_of(h) == key_id]:
                del self._cache[key_hash]


class FailedAuthentication:
    """Refused credentials, logged and counted. The presented secret is never logged: a key's
    id (a prefix of its SHA-256) is, so that repeated attempts with one key can be told apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def record(self, request: Request, presented: str | None, *, via: str) -> None:
        with self._lock:
            self.count += 1
        if not presented:
            what = "no credentials"
        elif len(presented) > MAX_KEY_LENGTH:
            what = f"an overlong credential ({len(presented)} characters)"
        else:
            what = f"an unknown, revoked or expired key (id {key_id_of(hash_key(presented))})"
        client = request.client.host if request.client else "?"
        log.warning("authentication refused: %s by %s from %s on %s", what, via, client, request.url.path)


class ReadSlots:
    """Fairness between callers: at most `per_key` reads of one key run at once; more wait up
    to `wait_s` for a turn, then are refused (429). So eight expensive searches from one key
    hold one of the store's read connections and, on two cores, about one core: measured
    (benchmarks/isolation.py, 120k events) another key's first page then took p95 95 ms,
    against 163 ms with two reads per key and 1,050-2,700 ms behind one lock."""

    def __init__(self, *, per_key: int, wait_s: float) -> None:
        self._per_key = per_key
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._slots: dict[str, list[Any]] = {}  # key -> [semaphore, holders and waiters]

    @contextlib.contextmanager
    def hold(self, key: str, *, queue: bool = False) -> Iterator[None]:
        """A turn for `key`; `queue`: wait as long as it takes instead of refusing with 429."""
        with self._lock:
            entry = self._slots.setdefault(key, [threading.BoundedSemaphore(self._per_key), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=None if queue else self._wait_s):
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    detail=f"this key already has {self._per_key} reads running: wait for them",
                    headers={"Retry-After": "1"},
                )
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._slots[key]


@dataclass
class Services:
    store: Store
    directory: DirectorySource
    keys: KeyCache
    sessions: SessionStore
    ingestor: Ingestor
    settings: ApiSettings
    auditor: ReadAuditor | None = None
    failed_auth: FailedAuthentication = field(default_factory=FailedAuthentication)
    read_slots: ReadSlots = field(default_factory=lambda: ReadSlots(per_key=1, wait_s=30.0))


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer alk_...`")

# The viewer's session cookie: a random session id (query_api.sessions), never a key.
SESSION_COOKIE = "auditlog_session"


def caller_of(found: ApiKey, *, via_session: bool = False) -> Caller:
    # A browser session reads only: a cross-site form post must not write events or keys.
    return Caller(
        user_id=found.user_id,
        infrastructure=found.infrastructure,
        key_id=found.key_id,
        key_label=found.label,
        can_ingest=found.can_ingest and not via_session,
        can_publish_directory=found.can_publish_directory and not via_session,
    )


def caller_from_session(services: Services, session_id: str | None) -> tuple[Session, Caller] | None:
    session = services.sessions.get(session_id)
    if session is None:
        return None
    found = services.keys.lookup_hash(session.key_hash)
    if found is None:
        # The key was revoked or expired: its sessions end with it.
        services.sessions.end_for_key(session.key_hash)
        return None
    return session, caller_of(found, via_session=True)


def get_caller(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    caller = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        found = services.keys.lookup(credentials.credentials)
        caller = caller_of(found) if found is not None else None
        if caller is None:
            services.failed_auth.record(request, credentials.credentials, via="bearer key")
    elif credentials is None:
        session_id = request.cookies.get(SESSION_COOKIE)
        signed_in = caller_from_session(services, session_id)
        caller = signed_in[1] if signed_in is not None else None
        if caller is None:
            # A session id is a secret too: only whether one was presented is logged.
            services.failed_auth.record(request, None, via="viewer session" if session_id else "request")
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def get_directories(services: ServicesDep) -> Directories:
    return services.directory.get()


CurrentDirectories = Annotated[Directories, Depends(get_directories)]


def get_directory(caller: CurrentCaller, directories: CurrentDirectories) -> Directory:
    """The directory of the caller's own infrastructure (names, the entities it may see)."""
    return directories.get(caller.infrastructure) or Directory(infrastructure=caller.infrastructure)


CurrentDirectory = Annotated[Directory, Depends(get_directory)]


def get_scope(caller: CurrentCaller, directories: CurrentDirectories) -> ReadScope:
    return scope_for(caller, directories)


Scope = Annotated[ReadScope, Depends(get_scope)]


@dataclass(frozen=True)
class _Declared:
    names: frozenset[str]
    repeatable: frozenset[str]


_DECLARED: dict[int, tuple[APIRoute, _Declared]] = {}


def reject_unknown_parameters(request: Request) -> None:
    """Every /v1 operation's: a misspelled filter silently ignored would show more rows than the
    caller meant to see; so would one this operation does not take (size= on a page), or a
    second value of a parameter that takes one (the first would be dropped unseen)."""
    route = request.scope.get("route")
    declared = _declared(route) if isinstance(route, APIRoute) else _Declared(frozenset(), frozenset())
    given = request.query_params
    unknown = sorted(set(given) - declared.names)
    if unknown:
        takes = ", ".join(sorted(declared.names)) or "none"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown query parameter {unknown[0][:64]!r}; this operation takes {takes}",
        )
    repeated = sorted(n for n in set(given) - declared.repeatable if len(given.getlist(n)) > 1)
    if repeated:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"query parameter {repeated[0]!r} takes one value, and was given several",
        )


def _declared(route: APIRoute) -> _Declared:
    """The query parameters an operation declares, its dependencies' included."""
    cached = _DECLARED.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    names: set[str] = set()
    repeatable: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        for p in dependant.query_params:
            names.add(p.alias)
            if get_origin(p.field_info.annotation) in (list, tuple, set, frozenset):
                repeatable.add(p.alias)
        pending.extend(dependant.dependencies)
    declared = _Declared(frozenset(names), frozenset(repeatable))
    _DECLARED[id(route)] = (route, declared)
    return declared


def v1_router(**options: Any) -> APIRouter:
    """A router of /v1 operations: the error statuses every one may answer, documented once,
    and no query parameter an operation does not declare."""
    return APIRouter(
        prefix="/v1", responses=ERROR_RESPONSES, dependencies=[Depends(reject_unknown_parameters)], **options
    )
