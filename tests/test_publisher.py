"""The publishing SDK against a real broker: envelopes, ordering per entity, the spool.

Order is checked per entity through `details.seq`, numbered by the test in
publish order. Delivery is at least once, so after a broker outage an event may
arrive twice; the checks keep each event's first arrival (what the store's
dedupe by event_id keeps) and require that nothing is missing and that, per
entity, first arrivals come in publish order.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic, TopicPartition

from auditlog.cli import main as cli_main
from producers.contract.event import InvalidEvent
from producers.envelope import (
    CONTENT_TYPE_HEADER,
    ENVELOPE_CONTENT_TYPE,
    EVENT_CONTENT_TYPE,
    MalformedMessage,
    decode_message,
    encode_envelope,
    encode_event,
    pack_envelope,
    split_envelopes,
)
from producers.publish_file import Progress, publish_ndjson
from producers.publisher import (
    DeliveryError,
    InvalidEventAt,
    ProducerSettings,
    Publisher,
    murmur2,
    partition_for,
)
from producers.spool import Spool, SpoolFull, SpoolLocked
from producers.topics import DIRECTORY_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC
from tests.kafka_fixture import BrokerControl

CONSUME_TIMEOUT_S = 45.0


# ---------------------------------------------------------------- helpers


def make_event(entity: int, seq: int, infrastructure: str = "infra-1") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-01-31T12:00:00.123Z",
        "infrastructure": infrastructure,
        "environment": "prod",
        "actor": {"id": "u-1", "name": "Alice", "type": "user", "ip": "10.0.0.1"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": f"app-{entity}", "name": f"App {entity}"},
        "related": [{"kind": "environment", "id": "prod"}],
        "outcome": "success",
        "changes": [{"field": "version", "old": "1.2", "new": "1.3"}],
        "details": {"seq": seq, "entity": entity},
        "source": {"service": "console", "host": "h1", "version": "1.0"},
    }


def make_events(count: int, entities: int) -> list[dict[str, Any]]:
    """`count` events over `entities` entities, each entity's numbered 0, 1, 2... in order."""
    return [make_event(i % entities, i // entities) for i in range(count)]


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=30,
        request_timeout=30,
    )
    futures[topic].result(timeout=60)


def settings_for(bootstrap: str, topic: str, spool_dir: Path, **overrides: Any) -> ProducerSettings:
    return ProducerSettings(bootstrap_servers=bootstrap, topic=topic, spool_dir=spool_dir, **overrides)


def consume(
    bootstrap: str, topic: str, expect_ids: set[str], timeout: float = CONSUME_TIMEOUT_S
) -> list[Message]:
    """Every message of `topic` from the beginning, until all of `expect_ids` were seen."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[Message] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while not expect_ids <= seen and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    raise KafkaException(error)
                messages.append(msg)
                for item in decode_message(msg.value(), msg.headers()):
                    assert isinstance(item, dict)
                    seen.add(item["event_id"])
        # Anything still on its way would be a duplicate; collect a little more.
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    missing = expect_ids - seen
    assert not missing, f"{len(missing)} of {len(expect_ids)} events never arrived"
    return messages


def arrivals(messages: list[Message]) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) for every event, in partition-offset order."""
    out = []
    ordered = sorted(messages, key=lambda m: (m.partition() or 0, m.offset() or 0))
    for msg in ordered:
        for item in decode_message(msg.value(), msg.headers()):
            assert isinstance(item, dict)
            out.append((msg.partition() or 0, item))
    return out


def check_order(published: list[dict[str, Any]], messages: list[Message], partitions: int) -> int:
    """Every published event arrived; per entity, first arrivals are in publish order.
    Returns the number of duplicate arrivals."""
    got = arrivals(messages)
    first: dict[str, tuple[int, dict[str, Any]]] = {}
    duplicates = 0
    for partition, event in got:
        if event["event_id"] in first:
            duplicates += 1
            continue
        first[event["event_id"]] = (partition, event)
    assert set(first) == {e["event_id"] for e in published}
    per_entity: dict[str, list[int]] = defaultdict(list)
    for partition, event in first.values():
        key = f"{event['infrastructure']}/{event['target']['kind']}/{event['target']['id']}"
        assert partition == partition_for(key.encode(), partitions), f"{key} landed in partition {partition}"
    # first.values() keeps insertion order, i.e. the order of arrival in each partition.
    for _, event in first.values():
        per_entity[event["target"]["id"]].append(event["details"]["seq"])
    for entity, seqs in per_entity.items():
        assert seqs == sorted(seqs), f"{entity}: events arrived out of order: {seqs[:20]}"
    return duplicates


def dead_address() -> str:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


# ------------------------------------------------------ envelope, no broker


def test_topic_names() -> None:
    assert (RAW_TOPIC, EVENTS_TOPIC, DLQ_TOPIC, DIRECTORY_TOPIC) == (
        "audit.raw",
        "audit.events.v1",
        "audit.dlq",
        "audit.directory",
    )


def test_envelope_round_trip() -> None:
    events = make_events(5, 2)
    value = encode_envelope(events)
    assert orjson.loads(value) == {"envelope": 1, "events": events}
    assert decode_message(value, [(CONTENT_TYPE_HEADER, ENVELOPE_CONTENT_TYPE)]) == events
    assert decode_message(value, {"Content-Type": ENVELOPE_CONTENT_TYPE.encode()}) == events
    # Byte-identical whether built from dicts or from pre-encoded events.
    assert pack_envelope([encode_event(e) for e in events]) == value
    # Without a header (another producer), the shape tells an envelope from an event.
    assert decode_message(value, None) == events
    single = encode_event(events[0])
    assert decode_message(single, [(CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE)]) == [events[0]]
    assert decode_message(single, None) == [events[0]]
    assert decode_message(single, [("content-type", "application/json; charset=utf-8")]) == [events[0]]


def test_split_envelopes_respects_limits() -> None:
    encoded = [encode_event(e) for e in make_events(1000, 7)]
    runs = list(split_envelopes(encoded, max_bytes=20_000, max_events=30))
    assert [d for run in runs for d in run] == encoded
    for run in runs:
        assert len(run) <= 30
        assert len(pack_envelope(run)) <= 20_000
    with pytest.raises(ValueError, match="exceeds the envelope limit"):
        list(split_envelopes([b"x" * 5000], max_bytes=4096))


@pytest.mark.parametrize(
    ("value", "headers", "code", "fragment"),
    [
        (b"\xff\xfe\x00garbage", None, "not_json", "not JSON"),
        (b"hello world", None, "not_json", "not JSON"),
        (b'{"schema_version": 1, "event_id": "abc', None, "truncated", "truncated JSON"),
        (b'{"envelope": 1, "events": [{"a": 1}, {"b"', None, "truncated", "truncated JSON"),
        (b"", None, "empty", "no value"),
        (None, None, "empty", "no value"),
        (b"[1, 2]", [(CONTENT_TYPE_HEADER, ENVELOPE_CONTENT_TYPE)], "envelope_shape", "JSON object"),
        (b'{"events": []}', [(CONTENT_TYPE_HEADER, ENVELOPE_CONTENT_TYPE)], "envelope_shape", "integer"),
        (b'{"envelope": "1", "events": []}', None, "envelope_shape", "integer"),
        (b'{"envelope": 1, "events": {"a": 1}}', None, "envelope_shape", "JSON array"),
        (b'{"envelope": 1}', None, "envelope_shape", "JSON array"),
        (b'{"envelope": 1, "events": []}', None, "envelope_shape", "empty"),
        (b'{"envelope": 1, "events": [{}], "x": 2}', None, "envelope_shape", "unexpected fields"),
        (b'{"envelope": 2, "events": [{}]}', None, "envelope_version", "unknown envelope version 2"),
        (b"{}", [(CONTENT_TYPE_HEADER, "text/plain")], "content_type", "unsupported content-type"),
    ],
)
def test_malformed_messages(value: bytes | None, headers: Any, code: str, fragment: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_message(value, headers)
    assert info.value.code == code
    assert fragment in info.value.reason


def test_items_are_not_validated_by_decode() -> None:
    # A bad event inside an envelope is the consumer's to dead-letter alone.
    assert decode_message(b'{"envelope": 1, "events": [{"x": 1}, 42]}') == [{"x": 1}, 42]


def test_murmur2_matches_the_java_client() -> None:
    # Vectors from Kafka's own tests (Utils.murmur2 / DefaultPartitioner, 1000 partitions).
    expected = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}
    for key, partition in expected.items():
        assert partition_for(key, 1000) == partition
    assert murmur2(b"abc") == 479470107


# --------------------------------------------------------- spool, no broker


def test_spool_round_trip_and_recovery(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    values = [encode_envelope(make_events(3, 3)) for _ in range(20)]
    for value in values:
        spool.append("t", value, 3, ENVELOPE_CONTENT_TYPE)
    assert spool.pending_events == 60
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.ack(5)
    spool.flush()
    spool.close()
    # A crash can leave half a line at the end: it is cut off on reopen.
    newest = max(tmp_path.glob("segment-*.ndjson"))
    with open(newest, "ab") as fh:
        fh.write(b'{"v":1,"topic":"t","content')
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert [r.value for r in reopened.pending()] == values[5:]
    reopened.ack(15)
    assert reopened.pending_records == 0
    reopened.close()
    assert not list(tmp_path.glob("segment-*.ndjson"))
    # After everything was delivered, new records must not be mistaken for
    # delivered ones on the next reopen (segment numbers keep growing).
    for _ in range(2):
        with Spool(tmp_path, max_bytes=1 << 20) as spool:
            spool.append("t", values[0], 3, ENVELOPE_CONTENT_TYPE)
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.value for r in spool.pending()] == [values[0], values[0]]


def test_spool_full_raises(tmp_path: Path) -> None:
    # Nothing listens on the port: every event is spooled, until the spool is full.
    settings = ProducerSettings(
        bootstrap_servers=dead_address(),
        topic="t-spool-full",
        spool_dir=tmp_path,
        spool_max_bytes=65_536,
        metadata_timeout_ms=300,
        message_timeout_ms=2000,
    )
    publisher = Publisher(settings)
    accepted = 0
    with pytest.raises(SpoolFull, match="is full") as info:
        for event in make_events(1000, 10):
            publisher.publish(event)
            accepted += 1
    assert "NOT accepted" in str(info.value)
    assert 0 < accepted < 1000
    report = publisher.close(timeout=5)
    assert report.in_spool == accepted
    with Spool(tmp_path, max_bytes=65_536) as spool:
        assert spool.pending_events == accepted


def test_cli_publish_without_broker_keeps_events_in_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDITLOG_KAFKA_METADATA_TIMEOUT_MS", "300")
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in make_events(20, 4)) + b"\n")
    spool_dir = tmp_path / "spool"
    argv = ["publish", str(path), "--bootstrap-servers", dead_address(), "--spool-dir", str(spool_dir)]
    code = cli_main([*argv, "--drain-timeout", "0.5", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "20 events wait in the spool" in err
    assert orjson.loads(out.strip().splitlines()[-1])["in_spool"] == 20
    with Spool(spool_dir, max_bytes=1 << 20) as spool:
        assert spool.pending_events == 20


def test_settings_from_env_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITLOG_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("AUDITLOG_KAFKA_LINGER_MS", "7")
    monkeypatch.setenv("AUDITLOG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("AUDITLOG_KAFKA_SASL_USERNAME", "auditlog")
    monkeypatch.setenv("AUDITLOG_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv(
        "AUDITLOG_KAFKA_EXTRA", '{"client.dns.lookup": "use_all_dns_ips", "x.token": "s3cret"}'
    )
    settings = ProducerSettings()
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.linger_ms == 7
    assert settings.sasl_password.get_secret_value() == "hunter2"
    assert settings.extra["x.token"] == "s3cret"
    assert "hunter2" not in repr(settings) and "s3cret" not in repr(settings)
    monkeypatch.setenv("AUDITLOG_KAFKA_EXTRA", '{"acks": "1"}')
    with pytest.raises(ValueError, match="acks"):
        ProducerSettings()
    # The connection's security is its own settings', which every client reads; through extra
    # it would reach the producers only.
    monkeypatch.setenv("AUDITLOG_KAFKA_EXTRA", '{"sasl.password": "hunter2"}')
    with pytest.raises(ValueError, match="cannot be set through extra"):
        ProducerSettings()


# ---------------------------------------------------------- with a broker


@pytest.mark.kafka
def test_publish_10k_events_exactly_once_in_order(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    topic = f"{kafka_topic_prefix}-raw"
    create_topic(kafka_bootstrap, topic, partitions=6)
    events = make_events(10_000, 400)
    delivered: list[str] = []
    errors: list[DeliveryError] = []

    def on_delivery(ids: list[str], error: DeliveryError | None) -> None:
        if error is None:
            delivered.extend(ids)
        else:
            errors.append(error)

    with Publisher(settings_for(kafka_bootstrap, topic, tmp_path), on_delivery=on_delivery) as publisher:
        started = time.perf_counter()
        for event in events[:5000]:
            publisher.publish(event)
        assert publisher.publish_many(events[5000:]) == 5000
        report = publisher.flush(30)
        elapsed = time.perf_counter() - started
    print(f"published {len(events):,} events in {elapsed:.2f}s: {len(events) / elapsed:,.0f} events/s")
    assert report.delivered == 10_000 and report.ok, report
    assert errors == []
    assert sorted(delivered) == sorted(e["event_id"] for e in events)

    messages = consume(kafka_bootstrap, topic, {e["event_id"] for e in events})
    assert check_order(events, messages, partitions=6) == 0
    # Batching happened: far fewer Kafka messages than events, each with the right header.
    assert len(messages) < len(events) / 10, len(messages)
    for msg in messages:
        content_type = dict(msg.headers() or [])[CONTENT_TYPE_HEADER]
        assert content_type in (ENVELOPE_CONTENT_TYPE.encode(), EVENT_CONTENT_TYPE.encode())
        assert len(msg.value() or b"") <= 900_000


@pytest.mark.kafka
def test_partitions_match_librdkafka_murmur2_random(kafka_bootstrap: str, kafka_topic_prefix: str) -> None:
    topic = f"{kafka_topic_prefix}-part"
    create_topic(kafka_bootstrap, topic, partitions=7)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None
        key = msg.key()
        partition = msg.partition()
        assert key is not None and partition is not None
        placed[key] = partition

    keys = [f"infra-{i % 3}/application/app-{i}".encode() for i in range(300)]
    for key in keys:
        producer.produce(topic, value=b"x", key=key, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert {k: partition_for(k, 7) for k in keys} == placed


@pytest.mark.kafka
def test_invalid_event_is_refused_and_not_sent(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    topic = f"{kafka_topic_prefix}-raw"
    create_topic(kafka_bootstrap, topic, partitions=2)
    good = make_events(4, 2)
    bad = make_event(9, 0)
    bad["actor"] = {"id": 42}
    with Publisher(settings_for(kafka_bootstrap, topic, tmp_path)) as publisher:
        with pytest.raises(InvalidEvent) as info:
            publisher.publish(bad)
        assert "actor.id" in info.value.reason
        with pytest.raises(InvalidEventAt) as at:
            publisher.publish_many([good[0], good[1], bad])
        assert at.value.index == 2
        # publish_many is all or nothing: good[0] and good[1] were not queued above.
        publisher.publish_many(good)
        report = publisher.flush(30)
    assert report.delivered == 4 and report.ok
    messages = consume(kafka_bootstrap, topic, {e["event_id"] for e in good})
    ids = [item["event_id"] for _, item in arrivals(messages)]
    assert sorted(ids) == sorted(e["event_id"] for e in good)
    assert bad["event_id"] not in ids


@pytest.mark.kafka
def test_spool_while_unreachable_then_drain_in_order(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    topic = f"{kafka_topic_prefix}-raw"
    create_topic(kafka_bootstrap, topic, partitions=3)
    events = make_events(600, 25)
    notices: list[DeliveryError | None] = []

    offline = ProducerSettings(
        bootstrap_servers=dead_address(),
        topic=topic,
        spool_dir=tmp_path,
        metadata_timeout_ms=500,
        message_timeout_ms=2000,
    )
    with Publisher(offline, on_delivery=lambda ids, err: notices.append(err)) as publisher:
        for event in events:
            publisher.publish(event)
        report = publisher.flush(10)
        assert publisher.spooling
    assert report.spooled == 600 and report.in_spool == 600 and report.delivered == 0
    assert notices and all(n is not None and n.spooled for n in notices)

    # The spool holds the events in publish order.
    with Spool(tmp_path, max_bytes=1 << 30) as spool:
        spooled = [item for record in spool.pending() for item in decode_message(record.value, None)]
    assert [e["event_id"] for e in spooled if isinstance(e, dict)] == [e["event_id"] for e in events]

    # A publisher on the same spool, now with a broker, sends them first, in order.
    online = settings_for(kafka_bootstrap, topic, tmp_path, retry_backoff_ms=100)
    later = make_events(100, 25)
    for event in later:
        event["details"]["seq"] += 1000
    with Publisher(online) as publisher:
        assert publisher.spooling
        publisher.publish_many(later)
        drained = publisher.drain(30)
        assert not publisher.spooling
    assert drained.delivered == 700 and drained.in_spool == 0 and drained.ok, drained
    with Spool(tmp_path, max_bytes=1 << 30) as spool:
        assert spool.pending_records == 0
    assert not list(tmp_path.glob("segment-*.ndjson"))

    messages = consume(kafka_bootstrap, topic, {e["event_id"] for e in events + later})
    assert check_order(events + later, messages, partitions=3) == 0


@pytest.mark.kafka
def test_broker_restart_while_publishing_loses_nothing(
    kafka_bootstrap: str, kafka_topic_prefix: str, broker_control: BrokerControl, tmp_path: Path
) -> None:
    topic = f"{kafka_topic_prefix}-raw"
    create_topic(kafka_bootstrap, topic, partitions=3)
    settings = settings_for(
        kafka_bootstrap,
        topic,
        tmp_path,
        message_timeout_ms=4000,
        retry_backoff_ms=200,
        extra={"reconnect.backoff.max.ms": 500},
    )
    published: list[dict[str, Any]] = []
    stop = threading.Event()
    failures: list[BaseException] = []
    entities = 60

    def publish_continuously(publisher: Publisher) -> None:
        seq = 0
        try:
            while not stop.is_set():
                for entity in range(entities):
                    event = make_event(entity, seq)
                    publisher.publish(event)
                    published.append(event)
                seq += 1
                time.sleep(0.02)
        except BaseException as exc:
            failures.append(exc)

    with Publisher(settings) as publisher:
        worker = threading.Thread(target=publish_continuously, args=(publisher,))
        worker.start()
        try:
            time.sleep(2)
            broker_control.stop()
            time.sleep(3)
            before_restart = len(published)
            broker_control.start()
            time.sleep(3)
        finally:
            stop.set()
            worker.join()
        assert not failures, failures
        assert len(published) > before_restart
        publisher.flush(15)
        report = publisher.drain(40)
        totals = publisher.totals()
    assert report.in_spool == 0 and report.pending == 0 and report.failed == 0, report
    assert totals.spooled > 0, "the outage should have sent events through the spool"
    assert totals.delivered == len(published)

    messages = consume(kafka_bootstrap, topic, {e["event_id"] for e in published})
    duplicates = check_order(published, messages, partitions=3)
    print(f"{len(published):,} events, {totals.spooled:,} spooled, {duplicates} duplicates after the restart")


@pytest.mark.kafka
def test_publish_file_and_cli(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"{kafka_topic_prefix}-raw"
    create_topic(kafka_bootstrap, topic, partitions=2)
    events = make_events(50, 5)
    lines = [orjson.dumps(e) for e in events]
    lines.insert(10, b"{not json")
    lines.insert(20, b"")
    broken = make_event(1, 99)
    broken["outcome"] = "maybe"
    lines.insert(30, orjson.dumps(broken))
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")

    seen: list[Progress] = []
    summary = publish_ndjson(path, settings_for(kafka_bootstrap, topic, tmp_path / "spool"), seen.append)
    assert summary.published == 50 and summary.delivered == 50
    assert [(bad.line, bad.reason.split(":")[0]) for bad in summary.invalid] == [
        (11, "not valid JSON"),
        (31, "invalid event"),
    ]
    assert seen and seen[-1].published == 50

    code = cli_main(
        [
            "publish",
            str(path),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topic,
            "--spool-dir",
            str(tmp_path / "spool-cli"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "line 11: not valid JSON" in err and "line 31: invalid event: outcome" in err
    assert orjson.loads(out.strip().splitlines()[-1])["delivered"] == 50
    # Both runs arrive: 100 copies of 50 events, by event_id.
    messages = consume(kafka_bootstrap, topic, {e["event_id"] for e in events})
    assert len(arrivals(messages)) == 100
