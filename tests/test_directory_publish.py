"""`auditlog directory publish`: a directory file onto the compacted topic, as workers read it."""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from auditlog.cli import main
from auditlog.embedded import build_embedded
from producers.contract.directory import Directory, DirectorySnapshot, assemble_directory, load_directory
from producers.directory_publisher import publish_snapshots, snapshot_publisher
from producers.kafka_config import KafkaConnection
from storage.store import Store
from stream.directory_follower import parse_directory_record
from tests.grants import make_key

DIRECTORY_YAML = """
roles:
  - {id: admin, name: Administrator, app_level: full_control, manage_infrastructure: true}
users:
  - {id: u-priya, name: Priya Raman, default_role: admin}
applications:
  - {id: app-1, name: Billing}
"""


@pytest.mark.kafka
def test_directory_file_round_trips_through_the_topic(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text(DIRECTORY_YAML)
    topic = f"{kafka_topic_prefix}.directory"
    monkeypatch.setenv("AUDITLOG_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    args = ["directory", "publish", str(path), "--infrastructure", "acme", "--topic", topic]
    assert main([*args, "--remove", "application/gone"]) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "t-" + uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign(
        [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
    )
    snaps: list[DirectorySnapshot] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(snaps) < 4:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        snaps.append(parse_directory_record(msg.key(), msg.value()))
    consumer.close()
    tombstones = [s for s in snaps if s.entity is None]
    assert [s.key for s in tombstones] == ["acme/application/gone"]
    assert {s.infrastructure for s in snaps} == {"acme"}
    rebuilt = assemble_directory(snaps)
    expected = load_directory(path, infrastructure="acme")
    assert rebuilt.users == expected.users and rebuilt.roles == expected.roles
    assert rebuilt.applications == expected.applications


@pytest.mark.kafka
def test_in_kafka_mode_the_directory_endpoint_publishes_to_the_topic(
    kafka_bootstrap: str, kafka_topic_prefix: str, store: Store
) -> None:
    """Workers follow audit.directory: a change made through the API must reach them there."""
    topic = f"{kafka_topic_prefix}.directory"
    first = Directory.model_validate(yaml.safe_load(DIRECTORY_YAML) | {"infrastructure": "acme"})
    embedded = build_embedded(
        store,
        directory=first,
        directory_publisher=snapshot_publisher(
            KafkaConnection(bootstrap_servers=kafka_bootstrap), topic=topic
        ),
    )
    admin = make_key(store, "u-priya")
    smaller = first.model_dump(mode="json", exclude={"version"}) | {"applications": []}
    r = TestClient(embedded.app).put(
        "/v1/directory", json=smaller, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    # The first directory (three entities) was published as it was installed, then the change.
    snaps = _read(kafka_bootstrap, topic, at_least=6)
    assert {s.key for s in snaps} == {"acme/role/admin", "acme/user/u-priya", "acme/application/app-1"}
    assert [s.key for s in snaps if s.entity is None] == ["acme/application/app-1"]
    assert store.directory.load().get("acme").applications == {}  # type: ignore[union-attr]

    # A topic that cannot take the change changes nothing.
    broken = build_embedded(
        store,
        directory_publisher=snapshot_publisher(KafkaConnection(bootstrap_servers="127.0.0.1:1"), topic=topic),
    )
    broken.services.directory._publish = functools.partial(  # a short timeout for the test
        publish_snapshots,
        connection=KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        topic=topic,
        timeout_s=2,
    )
    r = TestClient(broken.app).put("/v1/directory", json=first.model_dump(mode="json", exclude={"version"}),
                                   headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
    assert r.status_code == 503 and "nothing was changed" in r.text
    assert store.directory.load().get("acme").applications == {}  # type: ignore[union-attr]


def _read(bootstrap: str, topic: str, *, at_least: int) -> list[DirectorySnapshot]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex})
    consumer.assign(
        [
            TopicPartition(topic, p, 0)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
    )
    snaps: list[DirectorySnapshot] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(snaps) < at_least:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            snaps.append(parse_directory_record(msg.key(), msg.value()))
    consumer.close()
    return snaps
