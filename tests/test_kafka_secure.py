"""SDK -> worker -> API through a SASL_SSL listener: TLS against the CA the broker script
made, SCRAM-SHA-512 for the user it made; every client built from one `KafkaConnection`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from producers.contract.directory import Directory
from producers.directory_publisher import publish_snapshots
from producers.kafka_config import KafkaConnection, admin_config
from producers.publisher import ProducerSettings, Publisher
from stream.settings import WorkerSettings
from stream.topics import ensure_topics
from tests.test_worker_e2e import DIRECTORY, INFRA, Topics, Worker, bootstrap_store, make_event, wait_for

pytestmark = [pytest.mark.kafka]


def connection(env: dict[str, str]) -> dict[str, Any]:
    """KafkaConnection's fields from AUDITLOG_KAFKA_* settings."""
    prefix = "AUDITLOG_KAFKA_"
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}


def test_sdk_worker_and_api_over_sasl_ssl(
    kafka_secure_env: dict[str, str], kafka_topic_prefix: str, tmp_path: Path
) -> None:
    secure = KafkaConnection(**connection(kafka_secure_env))
    assert secure.security_protocol == "SASL_SSL" and secure.sasl_mechanism == "SCRAM-SHA-512"
    password = secure.sasl_password.get_secret_value()
    assert password and password not in repr(secure)
    # The listener refuses a wrong password: the test is not passing through an open door.
    wrong = secure.model_copy(update={"sasl_password": SecretStr("not-it")})
    with pytest.raises(KafkaException):
        AdminClient(admin_config(wrong)).list_topics(timeout=5)

    topics = Topics.for_prefix(kafka_topic_prefix)
    ensure_topics(
        WorkerSettings(
            kafka=secure,
            raw_topic=topics.raw,
            events_topic=topics.events,
            dlq_topic=topics.dlq,
            directory_topic=topics.directory,
            topic_partitions=3,
        )
    )
    (tmp_path / "faust").mkdir()
    store = tmp_path / "store"
    keys = bootstrap_store(store, tmp_path, ["u-admin"])
    publish_snapshots(
        Directory.model_validate(DIRECTORY).snapshots(), connection=secure, topic=topics.directory
    )
    events = [make_event(("application", "app-a"), i) for i in range(500)]
    sdk = ProducerSettings(
        **secure.model_dump(),
        topic=topics.raw,
        spool_dir=tmp_path / "spool",
        client_id=f"test-{uuid.uuid4().hex[:8]}",
    )
    with Publisher(sdk) as pub:
        pub.publish_many(events)
        assert pub.flush(60).ok

    worker = Worker(
        bootstrap=secure.bootstrap_servers,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=tmp_path,
        env=kafka_secure_env,
    )
    try:
        served_securely(worker, store, tmp_path, keys, events, password)
    finally:
        worker.stop()


def served_securely(
    worker: Worker, store: Path, tmp_path: Path, keys: dict[str, str], events: list[Any], password: str
) -> None:
    worker.wait_api()
    worker.wait_events_in(len(events))
    admin = worker.api(keys["u-admin"])
    # The API's own ingest publishes to audit.raw over the same listener.
    posted = make_event(("application", "app-a"), 999)
    r = admin.client.post("/v1/events", json=[posted], headers={"Authorization": f"Bearer {keys['ingest']}"})
    assert r.status_code == 200, r.text
    wait_for("the posted event", lambda: len(admin.all_events()) == len(events) + 1, timeout=60)
    assert sorted(e["event_id"] for e in admin.all_events()) == sorted(
        e["event_id"] for e in [*events, posted]
    )
    assert all(e["infrastructure"] == INFRA for e in admin.all_events())
    assert password not in worker.log_text()
