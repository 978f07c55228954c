"""The stream worker's settings: env prefix AUDITLOG_WORKER_ (the store keeps AUDITLOG_STORE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers.kafka_config import KafkaConnection
from producers.topics import DIRECTORY_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC
from storage.store import StoreSettings
from stream.checkpointer import CheckpointSettings
from stream.steps.decode import DEFAULT_MAX_MESSAGE_BYTES
from stream.transform import DEFAULT_MAX_FUTURE_S


class WorkerSettings(BaseSettings):
    """The stream worker. Env prefix AUDITLOG_WORKER_ (the store keeps AUDITLOG_STORE_)."""

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_WORKER_")

    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (default: the connection's, AUDITLOG_KAFKA_BOOTSTRAP_SERVERS)",
    )
    kafka: KafkaConnection = Field(
        default_factory=KafkaConnection,
        description="how to reach the cluster (TLS, SASL): AUDITLOG_KAFKA_*, shared with every other client",
    )
    group_id: str = Field(default="auditlog-worker", description="consumer group (and faust app id)")
    raw_topic: str = RAW_TOPIC
    events_topic: str = EVENTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    directory_topic: str = DIRECTORY_TOPIC
    topic_partitions: int = Field(default=6, ge=1, description="partitions of topics the worker creates")
    topic_replication: int = Field(default=1, ge=1)
    topic_max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024 * 1024, description="max.message.bytes of the topics it creates"
    )
    batch_size: int = Field(default=20_000, ge=1, description="Kafka messages per batch (take n)")
    # 0.5 s: at 2,000 events/s a batch now costs ~0.1 s, so the window is most of an
    # event's producer-to-queryable time; two inserts a second per worker is still few.
    batch_seconds: float = Field(default=0.5, gt=0, description="longest wait to fill a batch (take within)")
    max_batch_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="a batch is processed, stored and committed in slices of about this many message bytes "
        "(envelopes make message counts a poor measure of work)",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, description="larger messages are dead-lettered undecoded"
    )
    max_future_skew_s: float = Field(
        default=DEFAULT_MAX_FUTURE_S,
        ge=0,
        description="an event dated later than its broker timestamp plus this is dead-lettered",
    )
    signing_key: str = Field(
        default="",
        repr=False,
        description="secret shared with the query service (AUDITLOG_KAFKA_SIGNING_KEY there): only messages "
        "signed with it may carry audit_log.* events",
    )
    ocsf: bool = Field(default=False, description="emit audit.events.v1 in OCSF instead of the API's shape")
    max_reject_ratio: float = Field(default=0.5, ge=0, le=1)
    max_consecutive_rejects: int = Field(default=1000, ge=1)
    reject_min_sample: int = Field(default=200, ge=1)
    reject_window: int = Field(default=10_000, ge=1)
    session_timeout_s: float = Field(
        default=30.0, ge=6, description="a silent (killed) worker's partitions move after this"
    )
    heartbeat_s: float = Field(default=3.0, gt=0)
    instance_id: str | None = Field(
        default=None,
        description="static group membership (KIP-345): a restarted worker with the same id takes "
        "its partitions back at once instead of after the session timeout",
    )
    flush_timeout_s: float = Field(default=60.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    directory_bootstrap_timeout_s: float = Field(default=120.0, gt=0)
    ops: bool = Field(default=True, description="serve /metrics, /healthz and /readyz")
    ops_host: str = Field(default="127.0.0.1", description="where they listen (0.0.0.0 in a pod)")
    ops_port: int = Field(default=9400, ge=0, le=65535, description="their port (0: any free one)")
    metrics_token: SecretStr | None = Field(
        default=None, description="when set, /metrics answers only `Authorization: Bearer <token>`"
    )
    stats_path: Path | None = Field(
        default=None, description="write the counters here (JSON) after each batch"
    )
    faust_datadir: Path | None = None
    store: StoreSettings = Field(default_factory=StoreSettings)
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)

    def connection(self) -> KafkaConnection:
        """The cluster connection, with this worker's bootstrap servers when it names its own."""
        if self.bootstrap_servers is None:
            return self.kafka
        return self.kafka.model_copy(update={"bootstrap_servers": self.bootstrap_servers})
