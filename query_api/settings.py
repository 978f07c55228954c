"""Settings of the query service. Env prefix AUDITLOG_API_."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITLOG_API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    metrics_token: SecretStr | None = Field(
        default=None, description="when set, /metrics answers only `Authorization: Bearer <token>`"
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="largest accepted POST body")
    max_batch_events: int = Field(default=50_000, ge=1)
    default_page_size: int = Field(default=50, ge=1, le=1000)
    key_cache_seconds: float = Field(default=10.0, ge=0, description="how long a key lookup is trusted")
    ingest: Literal["store", "kafka"] = Field(
        default="store",
        description="where POST /v1/events goes: straight to the store, or to audit.raw (AUDITLOG_KAFKA_*)",
    )
    session_idle_seconds: float = Field(
        default=30 * 60, gt=0, description="a viewer session ends after this long without a request"
    )
    session_absolute_seconds: float = Field(
        default=12 * 3600, gt=0, description="a viewer session ends this long after sign-in, whatever happens"
    )
    max_future_skew_s: float = Field(
        default=300, ge=0, description="an event dated later than its receipt plus this is rejected"
    )
    reads_per_key: int = Field(
        default=1, ge=1, le=64, description="reads of one key that may run at once; more wait, then get 429"
    )
    audit_reads: bool = Field(default=True, description="record every read of the audit log as an event")
    audit_fail_open: bool = Field(
        default=False,
        description="answer a read even when its record could not be written (default: refuse it, 503)",
    )
    export_chunk_rows: int = Field(default=5_000, ge=100, le=200_000, description="rows per export query")
    sql_enabled: bool = Field(
        default=False,
        description="serve POST /v1/sql (analyst SQL). Off unless asked for: its guard is a check of "
        "ClickHouse's parse tree and its name resolution (docs/analyst-views.md), not a grant system",
    )
    sql_max_rows: int = Field(
        default=100_000, ge=1, le=10_000_000, description="most rows one POST /v1/sql answer may hold"
    )
    live_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="how often the viewer's live updates count new events"
    )
    live_max_s: float = Field(
        default=1800.0, gt=0, description="how long one live stream lasts before the browser opens another"
    )
