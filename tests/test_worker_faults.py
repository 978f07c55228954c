"""The worker under faults: nothing lost, nothing doubled, per-entity order kept (DESIGN 4.2).

- kill -9 of the worker, several times, while events flow;
- the broker stopped and restarted while the SDK produces and the worker consumes;
- ClickHouse refusing inserts half way through a batch, through the worker's
  test-only fault-injection hook (`AUDITLOG_TEST_FAULT_INSERT_FAILURES` /
  `AUDITLOG_TEST_FAULT_INSERT_AFTER`, see `tests/faults.py`), then
  recovering by itself, and a graceful stop while a batch keeps failing.

After each, every published event is read back through the query API exactly
once, and each entity's events are in the order they were published: their
`details.sequence` follows the broker's timestamps, and on `audit.events.v1`
the first copy of each event (redelivery may repeat some) comes in sequence
order per entity key.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.contract.directory import Directory
from tests.kafka_fixture import BrokerControl
from tests.test_worker_e2e import (
    DIRECTORY,
    INFRA,
    Api,
    Topics,
    Worker,
    bootstrap_store,
    m_key,
    make_event,
    publish_directory,
    publisher,
    read_topic,
    value_of,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ENTITIES = [("application", f"app-{i:02d}") for i in range(12)] + [
    ("deployment_plan", "plan-ab"),
    ("team", "t-pay"),
    ("user", "u-dev"),
    ("role", "viewer"),
]


class Sequences:
    """Events for random entities, each entity's `details.sequence` counting up from 0."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], int] = defaultdict(int)

    def batch(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            entity = random.choice(ENTITIES)
            out.append(make_event(entity, self._next[entity]))
            self._next[entity] += 1
        return out


class Flow:
    """Events published in the background, paced, in order per entity."""

    def __init__(self, bootstrap: str, topic: str, spool: Path, *, total: int, seconds: float) -> None:
        self.events: list[dict[str, Any]] = []
        self._sequences = Sequences()
        self._bootstrap, self._topic, self._spool = bootstrap, topic, spool
        self._total, self._seconds = total, seconds
        self.error: BaseException | None = None
        self.report: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with publisher(self._bootstrap, self._topic, self._spool) as pub:
                chunks = 100
                size = self._total // chunks
                for i in range(chunks):
                    n = size if i < chunks - 1 else self._total - size * (chunks - 1)
                    batch = self._sequences.batch(n)
                    pub.publish_many(batch)
                    self.events.extend(batch)
                    time.sleep(self._seconds / chunks)
                deadline = time.monotonic() + 180
                report = pub.drain(60)
                while not report.ok and time.monotonic() < deadline:
                    report = pub.drain(60)
                self.report = pub.totals()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 240) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error
        assert self.report is not None and self.report.in_spool == 0 and self.report.failed == 0


def setup(kafka_bootstrap: str, prefix: str, workdir: Path) -> tuple[Topics, Path, str]:
    topics = Topics.for_prefix(prefix)
    topics.create(kafka_bootstrap)
    store = workdir / "store"
    keys = bootstrap_store(store, workdir, ["u-admin"])
    publish_directory(kafka_bootstrap, topics.directory, Directory.model_validate(DIRECTORY).snapshots())
    return topics, store, keys["u-admin"]


def wait_all_visible(api: Api, expected: int, worker: Worker, timeout: float = 120) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def visible() -> bool:
        nonlocal got
        got = api.export()
        if len(got) > expected:
            raise AssertionError(f"{len(got)} events served, only {expected} published: doubled")
        return len(got) == expected

    wait_for(
        f"{expected} events through the API",
        visible,
        timeout,
        every=2.0,
        detail=lambda: f"{len(got)} served\n{worker.tail()}",
    )
    return got


def assert_exactly_once_in_order(published: list[dict[str, Any]], served: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in served]
    assert len(ids) == len(set(ids)), "an event is served twice"
    assert set(ids) == {e["event_id"] for e in published}, "an event is missing"
    per_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in served:
        per_entity[e["details"]["entity"]].append(e)
    for entity, events in per_entity.items():
        events.sort(key=lambda e: e["details"]["sequence"])
        assert [e["details"]["sequence"] for e in events] == list(range(len(events))), entity
        # Published in sequence order to one partition: broker timestamps follow the sequence.
        received = [e["received_at"] for e in events]
        assert received == sorted(received), f"{entity}: events reached Kafka out of order"


def assert_output_stream_in_order(bootstrap: str, topic: str, published: list[dict[str, Any]]) -> None:
    records = read_topic(bootstrap, topic, at_least=len(published), timeout=120)
    first_seen: set[str] = set()
    last_sequence: dict[str, int] = {}
    position: dict[str, Any] = {}
    leaves: dict[str, list[int]] = {}
    for msg in sorted(records, key=lambda m: (m.partition() or 0, m.offset() or 0)):
        body = orjson.loads(value_of(msg))
        if body["event_id"] in first_seen:
            # A redelivered batch produced again: at-least-once on the output, at the same position.
            assert body["position"] == position[body["event_id"]]
            continue
        first_seen.add(body["event_id"])
        position[body["event_id"]] = body["position"]
        leaves.setdefault(body["position"]["log"], []).append(body["position"]["index"])
        key = m_key(msg)
        sequence = body["details"]["sequence"]
        assert sequence > last_sequence.get(key, -1), f"{key}: {sequence} after {last_sequence[key]}"
        last_sequence[key] = sequence
    assert first_seen == {e["event_id"] for e in published}
    # Every event one leaf of its partition's log, the positions of a log without a gap or a double.
    for log_name, indexes in leaves.items():
        assert sorted(indexes) == list(range(len(indexes))), log_name


def assert_tree_verifies(store: Path, leaves: int) -> None:
    """Sign the store's logs and check every row against them, as an auditor would after the fact."""
    cli = [sys.executable, "-m", "auditlog.cli"]
    made = subprocess.run(
        [*cli, "checkpoint", "--store", str(store)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    assert sum(orjson.loads(line)["size"] for line in made.stdout.splitlines()) == leaves
    verify = subprocess.run(
        [*cli, "verify", "--store", str(store)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr[-3000:]


def publish_now(
    bootstrap: str, topic: str, sequences: Sequences, spool: Path, n: int
) -> list[dict[str, Any]]:
    """`n` more events of `sequences`, published and acknowledged before this returns."""
    events = sequences.batch(n)
    with publisher(bootstrap, topic, spool / f"spool-{uuid.uuid4().hex[:6]}") as pub:
        pub.publish_many(events)
        assert pub.flush(60).ok
    return events


def took_a_batch(worker: Worker, flow: Flow) -> bool:
    return int(worker.stats().get("batches", 0)) >= 1 or not flow.running()


def test_kill9_mid_batch_repeatedly_loses_and_doubles_nothing(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "faust").mkdir()
    topics, store, admin_key = setup(kafka_bootstrap, kafka_topic_prefix, tmp_path)
    group = f"{kafka_topic_prefix}-g"
    flow = Flow(kafka_bootstrap, topics.raw, tmp_path / "spool", total=30_000, seconds=30)
    flow.start()

    kills = 0
    taken_by_killed = 0
    redelivered_stored = 0
    # Kill only while events flow: a worker restarted after the last publish may have nothing to do.
    while flow.running() and kills < 12:
        worker = Worker(
            bootstrap=kafka_bootstrap,
            topics=topics,
            store=store,
            group=group,
            workdir=tmp_path,
            api=False,
            batch_size=10,
            # Static membership: the restarted worker takes its partitions back without
            # waiting out the killed one's session.
            extra_args=("--instance-id", "worker-0"),
            # Half a second between "stored" and "committed": most kills land there, so
            # the next worker gets stored events again and must not store them twice.
            env={"AUDITLOG_TEST_FAULT_COMMIT_DELAY_S": "0.5"},
        )
        try:
            wait_for(
                "a batch", partial(took_a_batch, worker, flow), timeout=60, every=0.05, detail=worker.tail
            )
            time.sleep(random.uniform(0.3, 1.5))
            alive = worker.alive()
        finally:
            worker.kill9()
        assert alive, worker.log_text()[-3000:]
        kills += 1
        taken_by_killed += int(worker.stats().get("events_in", 0))
        redelivered_stored += int(worker.stats().get("duplicates", 0))
    flow.join()
    assert kills >= 3

    final = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=group,
        workdir=tmp_path,
        batch_size=10,
        extra_args=("--instance-id", "worker-0"),
    )
    try:
        final.wait_api()
        served = wait_all_visible(final.api(admin_key), len(flow.events), final)
        assert_exactly_once_in_order(flow.events, served)
        # The killed workers' counters died with them; the last one's must balance.
        stats = final.stats()
        assert not stats or stats["balanced"]
        assert taken_by_killed > 0
        # Some kill hit a batch stored but not committed: its events came again and were skipped.
        assert redelivered_stored + int(stats.get("duplicates", 0)) > 0
    finally:
        assert final.stop() == 0
    assert_output_stream_in_order(kafka_bootstrap, topics.events, flow.events)
    # Twelve kills at any moment left no row outside the tree and no leaf without its row.
    assert_tree_verifies(store, len(flow.events))


def test_broker_stop_and_restart_while_producing_and_consuming(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path, broker_control: BrokerControl
) -> None:
    (tmp_path / "faust").mkdir()
    topics, store, admin_key = setup(kafka_bootstrap, kafka_topic_prefix, tmp_path)
    worker = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=tmp_path,
        batch_size=50,
        env={"AUDITLOG_WORKER_FLUSH_TIMEOUT_S": "5", "AUDITLOG_WORKER_RETRY_MAX_S": "2"},
    )
    try:
        worker.wait_api()
        flow = Flow(kafka_bootstrap, topics.raw, tmp_path / "spool", total=20_000, seconds=15)
        flow.start()
        wait_for(
            "the worker to start storing",
            lambda: int(worker.stats().get("batches", 0)) >= 2,
            60,
            detail=worker.tail,
        )
        broker_control.stop()
        time.sleep(6)
        assert worker.alive(), worker.log_text()[-3000:]
        broker_control.start()
        flow.join()

        served = wait_all_visible(worker.api(admin_key), len(flow.events), worker, timeout=150)
        assert worker.alive()
        assert_exactly_once_in_order(flow.events, served)
        assert worker.stats()["balanced"]
    finally:
        code = worker.stop()
    assert code == 0, worker.log_text()[-3000:]
    assert_output_stream_in_order(kafka_bootstrap, topics.events, flow.events)


def test_insert_failure_mid_batch_then_recovery(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "faust").mkdir()
    topics, store, admin_key = setup(kafka_bootstrap, kafka_topic_prefix, tmp_path)
    group = f"{kafka_topic_prefix}-g"

    sequences = Sequences()

    publish = partial(publish_now, kafka_bootstrap, topics.raw, sequences, tmp_path)

    # 1. Inserts of 500-row chunks: two go in, the next three are refused, then it heals.
    first = publish(5000)
    faulty = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=group,
        workdir=tmp_path,
        batch_size=1000,
        env={
            "AUDITLOG_STORE_INSERT_CHUNK_ROWS": "500",
            "AUDITLOG_TEST_FAULT_INSERT_AFTER": "2",
            "AUDITLOG_TEST_FAULT_INSERT_FAILURES": "3",
            "AUDITLOG_WORKER_RETRY_INITIAL_S": "0.2",
        },
    )
    try:
        faulty.wait_api()
        stats = faulty.wait_events_in(5000, timeout=90)
        assert stats["sink_retries"] == 3
        assert stats["duplicates"] >= 1000  # the chunks stored before the failure, skipped on retry
        assert stats["balanced"]
        served = wait_all_visible(faulty.api(admin_key), 5000, faulty, timeout=30)
        assert_exactly_once_in_order(first, served)
        assert "injected fault" in faulty.log_text()
    finally:
        assert faulty.stop() == 0

    # 2. A store that keeps failing: the worker retries, commits nothing, and stops cleanly on SIGTERM.
    second = publish(5000)
    broken = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=group,
        workdir=tmp_path,
        batch_size=1000,
        env={
            "AUDITLOG_STORE_INSERT_CHUNK_ROWS": "500",
            "AUDITLOG_TEST_FAULT_INSERT_AFTER": "2",
            "AUDITLOG_TEST_FAULT_INSERT_FAILURES": "1000000",
            "AUDITLOG_WORKER_RETRY_INITIAL_S": "0.2",
            "AUDITLOG_WORKER_RETRY_MAX_S": "0.5",
        },
    )
    try:
        broken.wait_api()
        wait_for("retries", lambda: int(broken.stats().get("sink_retries", 0)) >= 3, timeout=60)
        so_far = broken.api(admin_key).export()
        assert 5000 < len(so_far) < 10_000  # two chunks of the failing batch went in
        assert broken.stats().get("batches", 0) == 0
    finally:
        assert broken.stop() == 0

    healed = Worker(
        bootstrap=kafka_bootstrap, topics=topics, store=store, group=group, workdir=tmp_path, batch_size=1000
    )
    try:
        healed.wait_api()
        stats = healed.wait_events_in(5000, timeout=90)
        assert stats["duplicates"] >= 1000 and stats["balanced"]
        served = wait_all_visible(healed.api(admin_key), 10_000, healed, timeout=60)
        assert_exactly_once_in_order(first + second, served)
    finally:
        assert healed.stop() == 0
    assert {e["infrastructure"] for e in served} == {INFRA}


def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_siem_topic_outage_stops_commits_loses_nothing_and_recovers(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "faust").mkdir()
    topics, store, admin_key = setup(kafka_bootstrap, kafka_topic_prefix, tmp_path)
    sequences = Sequences()

    publish = partial(publish_now, kafka_bootstrap, topics.raw, sequences, tmp_path)

    worker = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=tmp_path,
        batch_size=500,
        env={"AUDITLOG_WORKER_RETRY_INITIAL_S": "0.2", "AUDITLOG_WORKER_RETRY_MAX_S": "1"},
    )
    try:
        first = publish(1000)
        worker.wait_api()
        worker.wait_events_in(1000, timeout=90)
        committed = int(worker.stats()["batches"])
        # The SIEM topic now refuses every record (as a full or misconfigured cluster would).
        set_topic_config(kafka_bootstrap, topics.events, "max.message.bytes", "64")
        second = publish(1000)
        wait_for("the publish step to fail", lambda: worker.ops("/readyz").status_code == 503, timeout=60)
        assert "publish" in worker.ops("/readyz").text
        wait_for(
            "retries", lambda: worker.metric("auditlog_worker_call_failures_total", call="publish") >= 3, 60
        )
        assert int(worker.stats()["batches"]) == committed  # nothing committed meanwhile
        assert worker.ops("/healthz").status_code == 200  # alive: not a reason to restart it
        set_topic_config(kafka_bootstrap, topics.events, "max.message.bytes", str(16 * 1024 * 1024))
        worker.wait_events_in(2000, timeout=120)
        wait_for("ready again", lambda: worker.ops("/readyz").status_code == 200, timeout=30)
        served = wait_all_visible(worker.api(admin_key), 2000, worker)
        assert_exactly_once_in_order(first + second, served)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert_output_stream_in_order(kafka_bootstrap, topics.events, first + second)
