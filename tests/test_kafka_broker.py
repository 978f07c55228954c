"""The test Kafka broker works end to end, and survives a restart with its data."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without declaring it, which mypy
# --strict rejects; the class itself lives (and is typed) in cimpl.
from confluent_kafka.cimpl import NewTopic

from tests.kafka_fixture import BrokerControl

CONSUME_TIMEOUT_S = 60.0


def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=30,
        request_timeout=30,
    )
    futures[topic].result(timeout=60)


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(f"{msg.key()!r}: {err}")

    for index, value in enumerate(values):
        producer.produce(
            topic,
            key=str(index).encode(),
            value=value.encode(),
            on_delivery=on_delivery,
        )
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages still undelivered after 30 s"
    assert errors == [], f"delivery failed: {errors[:5]}"


def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while len(received) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            received.append(msg)
    finally:
        consumer.close()
    return received


def _values(messages: list[Message]) -> list[str]:
    values: list[str] = []
    for msg in messages:
        value = msg.value()
        assert isinstance(value, bytes)
        values.append(value.decode())
    return values


@pytest.mark.kafka
def test_produce_and_consume_100_messages_in_order(kafka_bootstrap: str, kafka_topic_prefix: str) -> None:
    topic = f"{kafka_topic_prefix}-order"
    _create_topic(kafka_bootstrap, topic, partitions=1)
    sent = [f"audit-event-{i:03d}" for i in range(100)]

    _produce(kafka_bootstrap, topic, sent)
    received = _consume(kafka_bootstrap, topic, f"{kafka_topic_prefix}-g", len(sent))

    assert _values(received) == sent
    offsets = [msg.offset() for msg in received]
    assert all(offset is not None for offset in offsets)
    assert offsets == sorted(offset for offset in offsets if offset is not None)
    assert len(set(offsets)) == len(sent)


@pytest.mark.kafka
def test_data_survives_broker_restart(
    kafka_bootstrap: str, kafka_topic_prefix: str, broker_control: BrokerControl
) -> None:
    topic = f"{kafka_topic_prefix}-restart"
    _create_topic(kafka_bootstrap, topic, partitions=1)
    before = [f"before-restart-{i:02d}" for i in range(20)]
    _produce(kafka_bootstrap, topic, before)

    broker_control.stop()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=2)
    broker_control.start()

    after = [f"after-restart-{i:02d}" for i in range(5)]
    _produce(kafka_bootstrap, topic, after)
    received = _consume(kafka_bootstrap, topic, f"{kafka_topic_prefix}-g", len(before) + len(after))
    assert _values(received) == before + after
