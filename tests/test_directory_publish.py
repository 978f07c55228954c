"""`auditlog directory publish`: a directory file onto the compacted topic, as workers read it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from auditlog.cli import main
from producers.contract.directory import DirectorySnapshot, assemble_directory, load_directory
from stream.worker_app import parse_directory_record

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
