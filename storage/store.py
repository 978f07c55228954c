"""The store: one engine and one database, migrated, with its writer, reader and repositories."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.directory import Directory, DirectorySnapshot, assemble_directory
from storage.engine import ChdbEngine, Engine, ServerEngine
from storage.migrations import check_identifier, migrate
from storage.reader import EventReader
from storage.writer import EventWriter


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
    insert_chunk_rows: int = Field(default=50_000, ge=1)


@dataclass(frozen=True)
class ApiKey:
    user_id: str
    label: str
    can_ingest: bool


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is not brute-forceable.
    return hashlib.sha256(key.encode()).hexdigest()


class DirectoryRepository:
    def __init__(self, engine: Engine, database: str) -> None:
        self._engine = engine
        self._db = database

    def save(self, snapshots: list[DirectorySnapshot], *, version: int) -> None:
        if not snapshots:
            return
        data = b"\n".join(
            orjson.dumps(
                {
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
            f"{self._db}.directory_snapshots",
            columns=("kind", "id", "version", "deleted", "entity"),
            data=data,
        )

    def replace(self, directory: Directory) -> None:
        """Store `directory` as the whole truth: entities it lacks are tombstoned."""
        current = self.load()
        wanted = {s.key: s for s in directory.snapshots()}
        gone = [DirectorySnapshot(kind=s.kind, id=s.id) for s in current.snapshots() if s.key not in wanted]
        self.save(list(wanted.values()) + gone, version=time.time_ns())

    def load(self) -> Directory:
        rows = self._engine.query(
            f"SELECT kind, id, argMax(entity, version) AS entity, argMax(deleted, version) AS deleted "
            f"FROM {self._db}.directory_snapshots GROUP BY kind, id ORDER BY kind, id"
        )
        snaps = [
            DirectorySnapshot(kind=r["kind"], id=r["id"], entity=orjson.loads(r["entity"]))
            for r in rows
            if not int(r["deleted"])
        ]
        # Snapshots saved by a worker follow a topic's order: tolerate dangling references.
        return assemble_directory(snaps)


class KeyRepository:
    def __init__(self, engine: Engine, database: str) -> None:
        self._engine = engine
        self._db = database

    def create(self, *, user_id: str, label: str = "", can_ingest: bool = False) -> str:
        """A new key for `user_id`. The key itself is returned once and never stored."""
        key = "alk_" + secrets.token_urlsafe(32)
        row = {
            "key_hash": hash_key(key),
            "key_prefix": key[:8],
            "user_id": user_id,
            "label": label,
            "can_ingest": int(can_ingest),
            "revoked": 0,
            "created_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "version": time.time_ns(),
        }
        self._engine.insert_json(f"{self._db}.api_keys", columns=tuple(row), data=orjson.dumps(row))
        return key

    def lookup(self, key: str) -> ApiKey | None:
        rows = self._engine.query(
            f"SELECT argMax(user_id, version) AS user_id, argMax(label, version) AS label, "
            f"argMax(can_ingest, version) AS can_ingest, argMax(revoked, version) AS revoked "
            f"FROM {self._db}.api_keys WHERE key_hash = {{h:String}} GROUP BY key_hash",
            params={"h": hash_key(key)},
        )
        if not rows or int(rows[0]["revoked"]):
            return None
        r = rows[0]
        return ApiKey(user_id=r["user_id"], label=r["label"], can_ingest=bool(int(r["can_ingest"])))


class Store:
    def __init__(
        self, engine: Engine, *, database: str = "auditlog", insert_chunk_rows: int = 50_000
    ) -> None:
        self.engine = engine
        self.database = check_identifier(database)
        migrate(engine, self.database)
        self.writer = EventWriter(engine, database=self.database, chunk_rows=insert_chunk_rows)
        self.reader = EventReader(engine, database=self.database)
        self.directory = DirectoryRepository(engine, self.database)
        self.keys = KeyRepository(engine, self.database)

    @classmethod
    def open(cls, settings: StoreSettings | None = None) -> Store:
        s = settings or StoreSettings()
        engine: Engine
        if s.engine == "chdb":
            s.path.mkdir(parents=True, exist_ok=True)
            engine = ChdbEngine(str(s.path))
        else:
            if not s.url:
                raise ValueError("AUDITLOG_STORE_URL is required when AUDITLOG_STORE_ENGINE=clickhouse")
            engine = ServerEngine(s.url)
        return cls(engine, database=s.database, insert_chunk_rows=s.insert_chunk_rows)

    def event_count(self) -> int:
        return int(self.engine.query(f"SELECT count() AS n FROM {self.database}.audit_events")[0]["n"])

    def close(self) -> None:
        self.engine.close()
