"""How every Kafka client of the project connects, in one place.

The SDK, the worker's consumer (faust, over aiokafka) and producers, the directory
follower and publisher, and topic administration all build their configuration
from one `KafkaConnection` (env `AUDITLOG_KAFKA_*`): bootstrap servers, TLS (a CA,
optionally a client certificate) and SASL (PLAIN, SCRAM-SHA-256/512). Secrets are
`SecretStr`: never in a repr, a log line or an error; `redacted` masks a librdkafka
configuration for logs.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_SECRET_MARKERS = ("password", "secret", "token", "key", "credential", "jaas")

_LIBRDKAFKA_LOG = logging.getLogger("auditlog.librdkafka")
_CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.")


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config fit for logs: secrets (sasl.password, ssl keys...) masked."""
    return {k: ("***" if any(m in k.lower() for m in _SECRET_MARKERS) else v) for k, v in config.items()}


class KafkaConnection(BaseSettings):
    """Where the cluster is and how to authenticate to it. Env prefix AUDITLOG_KAFKA_."""

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Protocol = "PLAINTEXT"
    ssl_ca_location: Path | None = Field(default=None, description="PEM of the CA that signed the brokers")
    ssl_certificate_location: Path | None = Field(default=None, description="client certificate (PEM): mTLS")
    ssl_key_location: Path | None = Field(default=None, description="client key (PEM): mTLS")
    ssl_key_password: SecretStr | None = Field(default=None, repr=False)
    ssl_check_hostname: bool = Field(default=True, description="check the broker's name in its certificate")
    sasl_mechanism: Mechanism = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = Field(default=SecretStr(""), repr=False)
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="further librdkafka properties as JSON, for the producers (SDK, worker, directory)",
    )

    @field_validator("extra")
    @classmethod
    def _no_connection_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        # One connection for every client: set through extra it would reach the producers only.
        clash = sorted(k for k in value if k == "bootstrap.servers" or k.startswith(_CONNECTION_PREFIXES))
        if clash:
            raise ValueError(
                f"{', '.join(clash)} cannot be set through extra: use the connection's own settings "
                "(AUDITLOG_KAFKA_SECURITY_PROTOCOL, _SSL_*, _SASL_*), which every client reads"
            )
        return value

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield (name, redacted(value) if name == "extra" else value)

    @model_validator(mode="after")
    def _coherent(self) -> KafkaConnection:
        if self.sasl and not self.sasl_username:
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, Any]:
        """Connection and security properties, common to every confluent-kafka client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "log_level": 3,
            # librdkafka's own log lines (a broker down, ...) go through logging, not raw to stderr.
            "logger": _LIBRDKAFKA_LOG,
        }
        if self.tls:
            if self.ssl_ca_location is not None:
                config["ssl.ca.location"] = str(self.ssl_ca_location)
            if self.ssl_certificate_location is not None and self.ssl_key_location is not None:
                config["ssl.certificate.location"] = str(self.ssl_certificate_location)
                config["ssl.key.location"] = str(self.ssl_key_location)
                if self.ssl_key_password is not None:
                    config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        if self.sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS settings for aiokafka (faust's consumer)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_ca_location) if self.ssl_ca_location is not None else None
        )
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certificate_location is not None and self.ssl_key_location is not None:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            context.load_cert_chain(str(self.ssl_certificate_location), str(self.ssl_key_location), password)
        return context

    def faust_credentials(self) -> Any:
        """faust's `broker_credentials` for this connection (None: plaintext)."""
        import faust

        context = self.ssl_context()
        if self.sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                ssl_context=context,
                mechanism=self.sasl_mechanism,
            )
        if context is not None:
            return faust.SSLCredentials(context)
        return None


def producer_config(connection: KafkaConnection, **overrides: Any) -> dict[str, Any]:
    """The worker's producers: idempotent, acks=all, so a retried send never duplicates or
    reorders within a partition."""
    config: dict[str, Any] = {
        **connection.librdkafka(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "compression.type": "lz4",
        "batch.size": 1_000_000,
        # Room for a dead-lettered message as large as the broker accepted on audit.raw.
        "message.max.bytes": 32 * 1024 * 1024,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Give up on a send after this; the batch is then retried as a whole.
        "message.timeout.ms": 120_000,
        **connection.extra,
    }
    config.update(overrides)
    return config


def consumer_config(connection: KafkaConnection, **overrides: Any) -> dict[str, Any]:
    return {**connection.librdkafka(), **overrides}


def admin_config(connection: KafkaConnection) -> dict[str, Any]:
    return connection.librdkafka()
