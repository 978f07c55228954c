"""The store: one engine and one database, migrated, with its writer, reader and repositories."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.contract.directory import Directories, Directory, DirectorySnapshot
from producers.contract.event import rfc3339_ms
from storage.analyst_roles import AnalystScopes
from storage.analyst_sql import AnalystSql
from storage.dead_letter_reader import DeadLetterReader
from storage.engine import ChdbEngine, Engine, ServerEngine
from storage.migrations import REPAIR_SPAN, check_identifier, migrate
from storage.reader import EventReader, ReadLimits
from storage.retention import RetentionStore
from storage.tree import TreeStore
from storage.writer import EventWriter

log = logging.getLogger("auditlog.store")


class StoreSettings(BaseSettings):
    """Where events live. Env prefix AUDITLOG_STORE_ (e.g. AUDITLOG_STORE_ENGINE=clickhouse)."""

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_STORE_")

    engine: Literal["chdb", "clickhouse"] = "chdb"
    path: Path = Field(default=Path("auditlog-data"), description="chDB data folder")
    # repr=False: the URL carries the password, and settings objects end up in logs.
    url: str = Field(
        default="", repr=False, description="clickhouse://user:password@host:8123/ for engine=clickhouse"
    )
    database: str = "auditlog"
    insert_chunk_rows: int = Field(
        default=50_000, ge=1, le=REPAIR_SPAN, description="rows per insert (a crash tears at most one)"
    )
    read_connections: int = Field(
        default=4, ge=1, le=64, description="chDB: reads that may run at once (each on its own connection)"
    )
    query_timeout_s: float = Field(default=30.0, gt=0, description="longest a read may run")
    cluster: str = Field(
        default="",
        description="the ClickHouse cluster the schema was made for (auditlog schema --cluster): retention "
        "purges mutate its _local tables ON CLUSTER",
    )
    analyst_roles: bool = Field(
        default=False,
        description="keep the scopes of the analysts' ClickHouse roles current on every directory change "
        "(auditlog schema --analyst-roles; docs/analyst-views.md)",
    )
    query_max_memory_bytes: int = Field(
        default=4 * 1024**3, ge=64 * 1024**2, description="most memory one read may take"
    )


MAX_KEY_LENGTH: Final = 128
"""Longer bearer tokens are refused before any lookup: ours are 47 characters."""


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (never the key itself). `key_id` is public: it names the key in lists,
    revocations and the provenance of what it ingested, and cannot be turned back into it."""

    key_id: str
    prefix: str
    infrastructure: str
    user_id: str
    label: str
    can_ingest: bool
    can_publish_directory: bool
    created_at_ms: int
    expires_at_ms: int | None
    revoked: bool

    def usable(self, now_ms: int) -> bool:
        return not self.revoked and (self.expires_at_ms is None or now_ms < self.expires_at_ms)

    def to_public(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "prefix": self.prefix,
            "infrastructure": self.infrastructure,
            "user_id": self.user_id,
            "label": self.label,
            "can_ingest": self.can_ingest,
            "can_publish_directory": self.can_publish_directory,
            "created_at": rfc3339_ms(self.created_at_ms),
            "expires_at": rfc3339_ms(self.expires_at_ms) if self.expires_at_ms is not None else None,
            "revoked": self.revoked,
        }


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is not brute-forceable.
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_hash: str) -> str:
    return key_hash[:16]


class DirectoryRepository:
    """`scopes`: keep the analyst roles' scopes current (storage.analyst_roles) on every change."""

    def __init__(self, engine: Engine, database: str, *, scopes: AnalystScopes | None = None) -> None:
        self._engine = engine
        self._db = database
        self._scopes = scopes

    def save(self, snapshots: list[DirectorySnapshot], *, version: int) -> None:
        if not snapshots:
            return
        data = b"\n".join(
            orjson.dumps(
                {
                    "infrastructure": s.infrastructure,
                    "kind": s.kind,
                    "id": s.id,
                    "version": version,
                    "deleted": int(s.entity is None),
                    "entity": orjson.dumps(s.entity).decode() if s.entity is not None else "",
                }
            )
            for s in snapshots
        )
        self._engine.insert_json(
            f"{self._db}.directory_entities",
            columns=("infrastructure", "kind", "id", "version", "deleted", "entity"),
            data=data,
        )
        if self._scopes is not None:
            self._scopes.sync(self.load(), infrastructures={s.infrastructure for s in snapshots})

    def changes(self, directory: Directory, *, stored: Directories | None = None) -> list[DirectorySnapshot]:
        """What makes `directory` the whole truth of its infrastructure: every entity it holds,
        and a tombstone for each entity `stored` (default: the store's now) has and it lacks."""
        current = (stored or self.load()).get(directory.infrastructure) or Directory()
        wanted = {s.key: s for s in directory.snapshots()}
        gone = [s.model_copy(update={"entity": None}) for s in current.snapshots() if s.key not in wanted]
        return list(wanted.values()) + gone

    def replace(self, directory: Directory) -> None:
        """Store `directory` as the whole truth of its infrastructure: entities it lacks are tombstoned."""
        self.save(self.changes(directory), version=time.time_ns())

    def load(self) -> Directories:
        rows = self._engine.query(
            f"SELECT infrastructure, kind, id, argMax(entity, version) AS entity, "
            f"argMax(deleted, version) AS deleted, max(version) AS newest "
            f"FROM {self._db}.directory_entities GROUP BY infrastructure, kind, id "
            f"ORDER BY infrastructure, kind, id"
        )
        snaps = []
        for r in rows:
            if int(r["deleted"]):
                continue
            if not r["infrastructure"]:
                log.warning(
                    "directory: %s/%s belongs to no infrastructure; reload its directory", r["kind"], r["id"]
                )
                continue
            snaps.append(
                DirectorySnapshot(
                    infrastructure=r["infrastructure"],
                    kind=r["kind"],
                    id=r["id"],
                    entity=orjson.loads(r["entity"]),
                )
            )
        version = max((int(r["newest"]) for r in rows), default=0)
        # Snapshots saved by a worker follow a topic's order: tolerate dangling references.
        return Directories.assemble(snaps, version=version)


class KeyRepository:
    def __init__(self, engine: Engine, database: str) -> None:
        self._engine = engine
        self._db = database

    def create(
        self,
        *,
        infrastructure: str,
        user_id: str,
        label: str = "",
        can_ingest: bool = False,
        can_publish_directory: bool = False,
        expires_at_ms: int | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key. The key itself is returned once and never stored."""
        key = "alk_" + secrets.token_urlsafe(32)
        digest = hash_key(key)
        created = ApiKey(
            key_id=key_id_of(digest),
            prefix=key[:8],
            infrastructure=infrastructure,
            user_id=user_id,
            label=label,
            can_ingest=can_ingest,
            can_publish_directory=can_publish_directory,
            created_at_ms=int(time.time() * 1000),
            expires_at_ms=expires_at_ms,
            revoked=False,
        )
        self._write(digest, created)
        return key, created

    def _write(self, digest: str, k: ApiKey) -> None:
        row = {
            "key_hash": digest,
            "key_prefix": k.prefix,
            "infrastructure": k.infrastructure,
            "user_id": k.user_id,
            "label": k.label,
            "can_ingest": int(k.can_ingest),
            "can_publish_directory": int(k.can_publish_directory),
            "revoked": int(k.revoked),
            "created_at": k.created_at_ms / 1000,
            "expires_at": (k.expires_at_ms or 0) / 1000,
            "version": time.time_ns(),
        }
        self._engine.insert_json(f"{self._db}.api_keys", columns=tuple(row), data=orjson.dumps(row))

    _SELECT = (
        "SELECT key_hash, argMax(key_prefix, version) AS key_prefix, "
        "argMax(infrastructure, version) AS infrastructure, argMax(user_id, version) AS user_id, "
        "argMax(label, version) AS label, argMax(can_ingest, version) AS can_ingest, "
        "argMax(can_publish_directory, version) AS can_publish_directory, "
        "argMax(revoked, version) AS revoked, "
        "toUnixTimestamp64Milli(argMax(created_at, version)) AS created_ms, "
        "toUnixTimestamp64Milli(argMax(expires_at, version)) AS expires_ms "
    )

    @staticmethod
    def _key(r: dict[str, object]) -> ApiKey:
        expires = int(str(r["expires_ms"]))
        return ApiKey(
            key_id=key_id_of(str(r["key_hash"])),
            prefix=str(r["key_prefix"]),
            infrastructure=str(r["infrastructure"]),
            user_id=str(r["user_id"]),
            label=str(r["label"]),
            can_ingest=bool(int(str(r["can_ingest"]))),
            can_publish_directory=bool(int(str(r["can_publish_directory"]))),
            created_at_ms=int(str(r["created_ms"])),
            expires_at_ms=expires or None,
            revoked=bool(int(str(r["revoked"]))),
        )

    def _find(self, where: str, params: dict[str, object], *, having: str = "1") -> list[tuple[str, ApiKey]]:
        rows = self._engine.query(
            f"{self._SELECT} FROM {self._db}.api_keys WHERE {where} "
            f"GROUP BY key_hash HAVING {having} ORDER BY created_ms, key_hash",
            params=params,
        )
        return [(str(r["key_hash"]), self._key(r)) for r in rows]

    def lookup(self, key: str) -> ApiKey | None:
        """The key's record if it exists, whatever its state (the caller checks `usable`)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        return self.lookup_hash(hash_key(key))

    def lookup_hash(self, key_hash: str) -> ApiKey | None:
        found = self._find("key_hash = {h:String}", {"h": key_hash})
        return found[0][1] if found else None

    def list(self, *, infrastructure: str | None = None) -> list[ApiKey]:
        if infrastructure is None:
            return [k for _, k in self._find("1", {})]
        found = self._find("1", {"i": infrastructure}, having="infrastructure = {i:String}")
        return [k for _, k in found]

    def revoke(self, key_id: str, *, infrastructure: str | None = None) -> ApiKey | None:
        """Revoke the key named `key_id` (of `infrastructure`, when given); None if there is none."""
        if len(key_id) != 16 or any(c not in "0123456789abcdef" for c in key_id):
            return None
        found = self._find("startsWith(key_hash, {kid:String})", {"kid": key_id})
        for digest, k in found:
            if infrastructure is not None and k.infrastructure != infrastructure:
                continue
            revoked = replace(k, revoked=True)
            self._write(digest, revoked)
            return revoked
        return None


class Store:
    def __init__(
        self,
        engine: Engine,
        *,
        database: str = "auditlog",
        insert_chunk_rows: int = 50_000,
        read_limits: ReadLimits | None = None,
        cluster: str = "",
        analyst_roles: bool = False,
    ) -> None:
        self.engine = engine
        self.database = check_identifier(database)
        migrate(engine, self.database)
        self.writer = EventWriter(engine, database=self.database, chunk_rows=insert_chunk_rows)
        self.reader = EventReader(engine, database=self.database, limits=read_limits or ReadLimits())
        self.dead_letters = DeadLetterReader(engine, database=self.database, limits=read_limits)
        scopes = AnalystScopes(engine, database=self.database) if analyst_roles else None
        self.directory = DirectoryRepository(engine, self.database, scopes=scopes)
        self.keys = KeyRepository(engine, self.database)
        self.tree = TreeStore(engine, database=self.database)
        self.retention = RetentionStore(engine, database=self.database, cluster=cluster or None)
        self.analyst_sql = AnalystSql(engine, database=self.database, limits=read_limits or ReadLimits())

    @classmethod
    def open(cls, settings: StoreSettings | None = None) -> Store:
        s = settings or StoreSettings()
        engine: Engine
        if s.engine == "chdb":
            engine = ChdbEngine(str(s.path), read_connections=s.read_connections)
        else:
            if not s.url:
                raise ValueError("AUDITLOG_STORE_URL is required when AUDITLOG_STORE_ENGINE=clickhouse")
            engine = ServerEngine(s.url)
        limits = ReadLimits(timeout_s=s.query_timeout_s, max_memory_bytes=s.query_max_memory_bytes)
        return cls(
            engine,
            database=s.database,
            insert_chunk_rows=s.insert_chunk_rows,
            read_limits=limits,
            cluster=s.cluster,
            analyst_roles=s.analyst_roles,
        )

    def event_count(self) -> int:
        return int(self.engine.query(f"SELECT count() AS n FROM {self.database}.audit_events")[0]["n"])

    def close(self) -> None:
        self.engine.close()
