"""One connection builds every Kafka client's configuration; its secrets never show."""

from __future__ import annotations

from pathlib import Path

import certifi
import pytest
from pydantic import ValidationError

from producers.kafka_config import KafkaConnection, consumer_config, producer_config, redacted
from producers.publisher import ProducerSettings
from stream.settings import WorkerSettings


def test_sasl_ssl_reaches_every_client_and_the_password_never_shows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = Path(certifi.where())  # any CA bundle will do to build the TLS context
    for name, value in {
        "BOOTSTRAP_SERVERS": "kafka-1:9094,kafka-2:9094",
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SSL_CA_LOCATION": str(ca),
        "SASL_MECHANISM": "SCRAM-SHA-256",
        "SASL_USERNAME": "auditlog",
        "SASL_PASSWORD": "hunter2-s3cret",
    }.items():
        monkeypatch.setenv(f"AUDITLOG_KAFKA_{name}", value)
    worker = WorkerSettings().connection()
    sdk = ProducerSettings()
    for config in (producer_config(worker), consumer_config(worker, **{"group.id": "g"}), sdk.librdkafka()):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-256" and config["sasl.password"] == "hunter2-s3cret"
        assert config["ssl.ca.location"] == str(ca)
        assert config["bootstrap.servers"] == "kafka-1:9094,kafka-2:9094"
        assert redacted(config)["sasl.password"] == "***"
    for shown in (repr(worker), repr(sdk), str(worker.model_dump()), repr(WorkerSettings())):
        assert "hunter2" not in shown
    # A worker naming its own bootstrap servers keeps the rest of the connection.
    own = WorkerSettings(bootstrap_servers="other:9094").connection()
    assert own.bootstrap_servers == "other:9094" and own.sasl_username == "auditlog"
    assert own.faust_credentials().mechanism.value == "SCRAM-SHA-256"


def test_incoherent_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="sasl_username"):
        KafkaConnection(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="go together"):
        KafkaConnection(security_protocol="SSL", ssl_certificate_location=Path("c.pem"))
    with pytest.raises(ValidationError):
        KafkaConnection.model_validate({"sasl_mechanism": "GSSAPI"})
    assert "security.protocol" in KafkaConnection().librdkafka()
    assert KafkaConnection().faust_credentials() is None


def test_connection_settings_cannot_hide_in_extra() -> None:
    for cls in (KafkaConnection, ProducerSettings):
        with pytest.raises(ValidationError, match=r"security\.protocol"):
            cls.model_validate({"extra": {"security.protocol": "SASL_SSL"}})
        with pytest.raises(ValidationError, match=r"sasl\.password"):
            cls.model_validate({"extra": {"sasl.password": "x"}})
    shown = KafkaConnection.model_validate(
        {"extra": {"socket.keepalive.enable": True, "x.secret": "hunter2"}}
    )
    assert "hunter2" not in repr(shown)
