"""The stream worker end to end: SDK -> audit.raw -> `auditlog worker` -> store -> query API.

Everything is real: the session's Kafka broker, the worker as a subprocess
(`python -m auditlog.cli worker`) with its own chDB folder (chDB opens one
folder per process, and this test process already holds one), and the query
API served by that same worker process (`--with-api`), read over HTTP with
keys made by `auditlog keys create`. Each test uses its own topics and group.

The helpers here are shared with tests/test_worker_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from producers.contract.directory import Directory, DirectorySnapshot
from producers.contract.tlog.checkpoint import open_checkpoint
from producers.envelope import ENVELOPE_CONTENT_TYPE, encode_envelope
from producers.publisher import ProducerSettings, Publisher
from stream.settings import WorkerSettings
from stream.signing_key import published_verifiers
from stream.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
INFRA = "acme-e2e"
TEN_MB = 10 * 1024 * 1024

# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    every: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{more}")
        time.sleep(every)


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "auditlog.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"auditlog {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


@dataclass(frozen=True)
class Topics:
    raw: str
    events: str
    dlq: str
    directory: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.raw", f"{prefix}.events", f"{prefix}.dlq", f"{prefix}.directory")

    def settings(self, bootstrap: str, partitions: int = 3) -> WorkerSettings:
        return WorkerSettings(
            bootstrap_servers=bootstrap,
            raw_topic=self.raw,
            events_topic=self.events,
            dlq_topic=self.dlq,
            directory_topic=self.directory,
            topic_partitions=partitions,
        )

    def create(self, bootstrap: str, partitions: int = 3) -> None:
        ensure_topics(self.settings(bootstrap, partitions))


class Worker:
    """`auditlog worker` as a subprocess, with its stats file and (optionally) its API."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        store: Path,
        group: str,
        workdir: Path,
        api: bool = True,
        batch_size: int = 1000,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.stats_path = workdir / f"stats-{uuid.uuid4().hex[:8]}.json"
        self.log_path = workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.port = free_port() if api else None
        self.ops_port = free_port()
        # Fault-injection hooks come with the tests' own entry point, never with the product's.
        faulty = any(k.startswith("AUDITLOG_TEST_FAULT_") for k in env or {})
        args = [
            sys.executable,
            "-m",
            "tests.faults" if faulty else "auditlog.cli",
            "-v",
            "worker",
            "--store",
            str(store),
            "--bootstrap",
            bootstrap,
            "--group",
            group,
            "--raw-topic",
            topics.raw,
            "--events-topic",
            topics.events,
            "--dlq-topic",
            topics.dlq,
            "--directory-topic",
            topics.directory,
            "--partitions",
            "3",
            "--batch-size",
            str(batch_size),
            "--batch-seconds",
            "0.5",
            "--session-timeout",
            "6",
            "--stats-file",
            str(self.stats_path),
            *extra_args,
        ]
        if self.port is not None:
            args += ["--with-api", "--port", str(self.port)]
        full_env = {
            **os.environ,
            "AUDITLOG_WORKER_FAUST_DATADIR": str(workdir / "faust"),
            "AUDITLOG_KAFKA_SPOOL_DIR": str(workdir / f"api-spool-{uuid.uuid4().hex[:8]}"),
            "AUDITLOG_API_KEY_CACHE_SECONDS": "0",
            # Reads of the API are recorded as events, which these tests would count as input;
            # test_the_api_of_a_worker_records_its_reads turns it back on.
            "AUDITLOG_API_AUDIT_READS": "false",
            "AUDITLOG_WORKER_OPS_PORT": str(self.ops_port),
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    # -- state -------------------------------------------------------------------

    def ops(self, path: str) -> httpx.Response:
        """The worker's own /metrics, /healthz or /readyz."""
        return httpx.get(f"http://127.0.0.1:{self.ops_port}{path}", timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the worker's /metrics (0 when it has none yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.ops("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = orjson.loads(self.stats_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return data

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return f"stats: {self.stats()}\nlog:\n{self.log_text()[-4000:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_events_in(self, n: int, timeout: float = 60) -> dict[str, Any]:
        def done() -> bool:
            if not self.alive():
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            return int(self.stats().get("events_in", 0)) >= n

        wait_for(f"the worker to take in {n} events", done, timeout, detail=self.tail)
        return self.stats()

    def wait_api(self, timeout: float = 60) -> None:
        assert self.port is not None

        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the worker's API", up, timeout)

    def api(self, key: str) -> Api:
        assert self.port is not None
        return Api(f"http://127.0.0.1:{self.port}", key)

    # -- ending ------------------------------------------------------------------

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def export(self, **params: Any) -> list[dict[str, Any]]:
        """Every matching event in one streamed NDJSON export (read audits filtered out by INFRA)."""
        query = {"infrastructure": INFRA, "format": "ndjson", **params}
        with self.client.stream("GET", "/v1/events/export", params=query) as response:
            assert response.status_code == 200, response.read()
            body = b"".join(response.iter_bytes())
        return [orjson.loads(line) for line in body.splitlines() if line]

    def all_events(self, path: str = "/v1/events", **params: Any) -> list[dict[str, Any]]:
        """Every page of a listing. Read audits (infrastructure 'default') are filtered out by INFRA."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"infrastructure": INFRA, "limit": 1000, "fields": "full", **params}
            if cursor:
                query["cursor"] = cursor
            response = self.client.get(path, params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            items.extend(body["items"])
            cursor = body["next_cursor"]
            if not cursor:
                return items


def publisher(bootstrap: str, topic: str, spool: Path, **settings: Any) -> Publisher:
    return Publisher(
        ProducerSettings(
            bootstrap_servers=bootstrap,
            topic=topic,
            spool_dir=spool,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            **settings,
        )
    )


def raw_producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": 32 * 1024 * 1024,
            "log_level": 3,
        }
    )


def publish_directory(bootstrap: str, topic: str, snapshots: list[DirectorySnapshot]) -> None:
    producer = raw_producer(bootstrap)
    for snap in snapshots:
        value = None if snap.entity is None else snap.model_dump_json().encode()
        producer.produce(topic, key=snap.key.encode(), value=value)
    assert producer.flush(30) == 0


def read_topic(bootstrap: str, topic: str, *, at_least: int, timeout: float = 60) -> list[Message]:
    """Every record of `topic` from the beginning, once `at_least` arrived and the topic went quiet."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 32 * 1024 * 1024,
            "log_level": 3,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                out.append(msg)
            if batch:
                idle_since = time.monotonic()
            elif len(out) >= at_least and time.monotonic() - idle_since > 1.0:
                return out
        raise AssertionError(
            f"{topic}: {len(out)} records after {timeout:.0f}s, expected at least {at_least}"
        )
    finally:
        consumer.close()


def headers_of(msg: Message) -> dict[str, bytes]:
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    return {name: value for name, value in pairs if isinstance(value, bytes)}


def value_of(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes)
    return value


def make_event(
    target: tuple[str, str],
    sequence: int,
    *,
    related: list[dict[str, str]] | None = None,
    actor: str = "u-admin",
    base_ms: int = 1_790_000_000_000,
) -> dict[str, Any]:
    kind, ident = target
    occurred = base_ms + sequence
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(occurred // 1000))
        + f".{occurred % 1000:03d}Z",
        "infrastructure": INFRA,
        "actor": {"id": actor},
        "action": f"{kind}.update",
        "target": {"kind": kind, "id": ident},
        "related": related or [],
        "details": {"sequence": sequence, "entity": f"{kind}/{ident}"},
    }


# The installation of these tests. u-dev can list app-a only (an application role);
# u-lead manages team t-pay through a team role. Served to the worker on audit.directory.
DIRECTORY: dict[str, Any] = {
    "infrastructure": INFRA,
    "roles": [
        {
            "id": "admin",
            "name": "Administrator",
            "app_level": "full_control",
            "manage_infrastructure": True,
            "manage_teams": True,
        },
        {"id": "viewer", "name": "Viewer", "app_level": "list"},
        {"id": "team-admin", "name": "Team Admin", "manage_teams": True},
        {"id": "none", "name": "No Access"},
    ],
    "users": [
        {"id": "u-admin", "name": "Ada Admin", "default_role": "admin"},
        {"id": "u-dev", "name": "Dev Eloper", "default_role": "none", "app_roles": {"app-a": "viewer"}},
        {"id": "u-lead", "name": "Lea Lead", "default_role": "none", "team_roles": {"t-pay": "team-admin"}},
    ],
    "teams": [{"id": "t-pay", "name": "Payments"}],
    "applications": [
        {"id": "app-a", "name": "App A", "team": "t-pay"},
        {"id": "app-b", "name": "App B"},
    ],
    "deployment_plans": [
        {"id": "plan-a", "name": "Plan A", "applications": ["app-a"]},
        {"id": "plan-ab", "name": "Plan AB", "applications": ["app-a", "app-b"]},
    ],
}


def bootstrap_store(store: Path, workdir: Path, users: list[str]) -> dict[str, str]:
    """What an operator does before the first start: load who may log in, make their keys.

    Only the users and their roles go in from a file, without grants; everything
    else (applications, plans, teams, the grants) reaches the worker through
    audit.directory, so what the API enforces proves the topic -> store path.
    """
    bare = {
        "infrastructure": INFRA,
        "roles": DIRECTORY["roles"],
        "users": [{"id": u["id"], "name": u["name"], "default_role": "none"} for u in DIRECTORY["users"]],
    }
    path = workdir / "bootstrap-directory.yaml"
    path.write_text(yaml.safe_dump(bare))
    cli("directory", "load", "--store", str(store), str(path))
    keys = {user: cli("keys", "create", "--store", str(store), "--user", user) for user in users}
    keys["ingest"] = cli("keys", "create", "--store", str(store), "--user", "u-admin", "--ingest")
    return keys


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "faust").mkdir()
    return tmp_path


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Collects the test's workers; whatever is still running at the end is stopped."""
    started: list[Worker] = []
    yield started
    for w in started:
        if w.alive():
            w.kill9()


# ---------------------------------------------------------------- tests


@pytest.mark.kafka
def test_published_events_reach_the_api_scoped_by_the_directory_topic(
    kafka_bootstrap: str, kafka_topic_prefix: str, workdir: Path, workers: list[Worker]
) -> None:
    topics = Topics.for_prefix(kafka_topic_prefix)
    topics.create(kafka_bootstrap)
    store = workdir / "store"
    keys = bootstrap_store(store, workdir, ["u-admin", "u-dev", "u-lead"])
    directory = Directory.model_validate(DIRECTORY)
    publish_directory(kafka_bootstrap, topics.directory, directory.snapshots())

    targets = {
        ("application", "app-a"): 300,
        ("application", "app-b"): 300,
        ("deployment_plan", "plan-a"): 100,
        ("deployment_plan", "plan-ab"): 100,
        ("team", "t-pay"): 100,
        ("user", "u-dev"): 50,
        ("role", "viewer"): 50,
    }
    events = [make_event(t, i) for t, n in targets.items() for i in range(n)]
    total = len(events)
    with publisher(kafka_bootstrap, topics.raw, workdir / "spool") as pub:
        pub.publish_many(events)
        assert pub.flush(60).ok

    checkpoint_topic = f"{kafka_topic_prefix}.checkpoints"
    worker = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=workdir,
        env={"AUDITLOG_CHECKPOINT_INTERVAL_S": "1", "AUDITLOG_CHECKPOINT_TOPIC": checkpoint_topic},
    )
    workers.append(worker)
    worker.wait_api()
    stats = worker.wait_events_in(total)
    assert stats["rows_stored"] == total
    assert stats["dead_lettered"] == 0 and stats["duplicates"] == 0
    assert stats["balanced"]
    # What an operator's Prometheus sees says the same; the probes answer.
    assert worker.metric("auditlog_worker_events_in_total") == total
    assert worker.metric("auditlog_worker_rows_stored_total") == total
    assert worker.metric("auditlog_worker_call_seconds_count", call="insert") >= 1
    assert sum(worker.metric("auditlog_worker_consumer_lag", partition=str(p)) for p in range(3)) == 0
    assert worker.ops("/healthz").status_code == 200 and worker.ops("/readyz").status_code == 200

    admin, dev, lead = (worker.api(keys[u]) for u in ("u-admin", "u-dev", "u-lead"))
    seen = admin.all_events()
    assert sorted(e["event_id"] for e in seen) == sorted(e["event_id"] for e in events)

    # Enrichment came from the directory topic: the file held no applications or plans.
    by_target = {(e["target"]["kind"], e["target"]["id"]): e for e in seen}
    assert by_target["application", "app-a"]["target"]["name"] == "App A"
    assert by_target["application", "app-a"]["enrichment"]["application_team_id"] == "t-pay"
    assert by_target["deployment_plan", "plan-ab"]["enrichment"]["plan_application_ids"] == ["app-a", "app-b"]
    assert by_target["application", "app-a"]["actor"]["name"] == "Ada Admin"

    # Row scoping, with grants that exist only on the topic.
    dev_targets = {(e["target"]["kind"], e["target"]["id"]) for e in dev.all_events()}
    assert dev_targets == {("application", "app-a"), ("deployment_plan", "plan-a")}
    assert len(dev.all_events()) == 400
    lead_targets = {(e["target"]["kind"], e["target"]["id"]) for e in lead.all_events()}
    assert lead_targets == {("team", "t-pay")}
    hidden = by_target["application", "app-b"]["event_id"]
    assert dev.get(f"/v1/events/{hidden}").status_code == 404
    assert dev.get("/v1/entities/application/app-b/changes").status_code == 403
    assert dev.get("/v1/users/u-admin/activity").status_code == 403

    # A grant published later applies to old rows as soon as the worker saved it.
    dev_user = next(u for u in DIRECTORY["users"] if u["id"] == "u-dev")
    granted = {**dev_user, "app_roles": {"app-a": "viewer", "app-b": "viewer"}}
    publish_directory(
        kafka_bootstrap,
        topics.directory,
        [DirectorySnapshot(infrastructure=INFRA, kind="user", id="u-dev", entity=granted)],
    )
    wait_for("u-dev's new grant", lambda: len(dev.all_events()) == 800, timeout=30)

    # The normalized stream for SIEMs holds every event, keyed by entity.
    out = read_topic(kafka_bootstrap, topics.events, at_least=total)
    assert len(out) == total
    bodies = [orjson.loads(value_of(m)) for m in out]
    assert {b["event_id"] for b in bodies} == {e["event_id"] for e in events}
    sample = bodies[0]
    assert m_key(out[0]) == f"{INFRA}/{sample['target']['kind']}/{sample['target']['id']}"
    assert headers_of(out[0])["x-event-id"].decode() == sample["event_id"]
    # Each event names its leaf: its partition's log and its index there, one per event.
    positions = {(b["position"]["log"], b["position"]["index"]) for b in bodies}
    assert len(positions) == total and {log for log, _ in positions} <= {
        f"{topics.raw}/{p}" for p in range(3)
    }
    assert headers_of(out[0])["x-log"].decode() == sample["position"]["log"]

    # Checkpoints signed within the interval, on their topic, verify with the published key,
    # and a proof of an event leads to one of them.
    verifiers = published_verifiers(Path(os.environ["AUDITLOG_CHECKPOINT_DIR"]))
    signed: dict[str, int] = {}

    def all_signed() -> bool:
        for m in read_topic(kafka_bootstrap, checkpoint_topic, at_least=1, timeout=30):
            cp = open_checkpoint(orjson.loads(value_of(m))["note"], verifiers)
            log_name = cp.origin.split("/", 1)[1]
            signed[log_name] = max(signed.get(log_name, 0), cp.size)
        return sum(signed.values()) == total

    wait_for("checkpoints of every event", all_signed, timeout=60)
    proof = admin.get(f"/v1/events/{sample['event_id']}/proof")
    assert proof.status_code == 200, proof.text
    assert (
        proof.json()["log"] == sample["position"]["log"]
        and proof.json()["index"] == sample["position"]["index"]
    )

    # The HTTP ingest endpoint publishes to audit.raw; the worker stores what it accepted.
    posted = [make_event(("application", "app-b"), 10_000 + i) for i in range(5)]
    ingest = worker.api(keys["ingest"])
    response = ingest.client.post("/v1/events", content=orjson.dumps([*posted, {"schema_version": 1}]))
    assert response.status_code == 207, response.text
    report = response.json()
    assert report["received"] == 6 and report["published"] == 5
    assert [r["index"] for r in report["rejected"]] == [5]
    worker.wait_events_in(total + 5)
    got = {e["event_id"] for e in admin.all_events(entity="application/app-b")}
    assert {e["event_id"] for e in posted} <= got

    assert worker.stop() == 0
    final = worker.stats()
    assert final["events_in"] == final["rows_stored"] + final["duplicates"] + final["dead_lettered"]


def m_key(msg: Message) -> str:
    key = msg.key()
    assert isinstance(key, bytes)
    return key.decode()


@pytest.mark.kafka
def test_bad_input_at_the_kafka_edge_is_dead_lettered_and_the_worker_keeps_going(
    kafka_bootstrap: str, kafka_topic_prefix: str, workdir: Path, workers: list[Worker]
) -> None:
    topics = Topics.for_prefix(kafka_topic_prefix)
    topics.create(kafka_bootstrap)
    store = workdir / "store"
    keys = bootstrap_store(store, workdir, ["u-admin"])
    publish_directory(kafka_bootstrap, topics.directory, Directory.model_validate(DIRECTORY).snapshots())
    worker = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=workdir,
        extra_args=("--ocsf",),
    )
    workers.append(worker)
    worker.wait_api()

    good_before = [make_event(("application", "app-a"), i) for i in range(300)]
    good_after = [make_event(("application", "app-b"), i) for i in range(300)]
    with publisher(kafka_bootstrap, topics.raw, workdir / "spool") as pub:
        pub.publish_many(good_before)
        assert pub.flush(60).ok

    inner_bad = make_event(("application", "app-a"), 999)
    inner_bad["actor"] = {"id": 7}
    envelope_ok = [make_event(("application", "app-a"), 1000), make_event(("application", "app-a"), 1001)]
    bad: dict[str, bytes] = {
        "garbage": b"\x00\xff\xfegarbage\x81",
        "truncated": orjson.dumps(make_event(("application", "app-a"), 2000))[:-20],
        "wrong-schema": orjson.dumps({"user": "x", "did": "something"}),
        "future-version": orjson.dumps({**make_event(("application", "app-a"), 2001), "schema_version": 2}),
        "ten-mb": orjson.dumps(
            {**make_event(("application", "app-a"), 2002), "details": {"blob": "z" * TEN_MB}}
        ),
    }
    expected_reason = {
        "garbage": "not JSON",
        "truncated": "truncated",
        "wrong-schema": "schema_version is missing",
        "future-version": "unsupported schema_version 2",
        "ten-mb": "exceeds",
    }
    producer = raw_producer(kafka_bootstrap)
    for name, value in bad.items():
        producer.produce(topics.raw, key=name.encode(), value=value)
    producer.produce(
        topics.raw,
        key=b"envelope",
        value=encode_envelope([envelope_ok[0], inner_bad, envelope_ok[1]]),
        headers=[("content-type", ENVELOPE_CONTENT_TYPE.encode())],
    )
    assert producer.flush(60) == 0
    with publisher(kafka_bootstrap, topics.raw, workdir / "spool2") as pub:
        pub.publish_many(good_after)
        assert pub.flush(60).ok

    total = len(good_before) + len(good_after) + len(bad) + 3
    stats = worker.wait_events_in(total)
    assert worker.alive()
    assert stats["dead_lettered"] == len(bad) + 1
    assert stats["rows_stored"] == len(good_before) + len(good_after) + 2
    assert stats["events_in"] == stats["rows_stored"] + stats["duplicates"] + stats["dead_lettered"]

    # The DLQ keeps the original bytes, the reason and where each came from.
    dlq = read_topic(kafka_bootstrap, topics.dlq, at_least=len(bad) + 1)
    assert len(dlq) == len(bad) + 1
    by_key = {m_key(m): m for m in dlq}
    for name, value in bad.items():
        msg = by_key[name]
        h = headers_of(msg)
        assert expected_reason[name] in h["x-reason"].decode(), (name, h["x-reason"])
        assert msg.value() == value, name
        assert h["x-source-topic"].decode() == topics.raw
        assert int(h["x-source-offset"]) >= 0 and int(h["x-source-partition"]) in (0, 1, 2)
        assert int(h["x-source-timestamp"]) > 1_600_000_000_000
    envelope_letter = by_key["envelope"]
    assert orjson.loads(value_of(envelope_letter)) == inner_bad
    assert headers_of(envelope_letter)["x-envelope-index"] == b"1"
    assert "actor.id" in headers_of(envelope_letter)["x-reason"].decode()

    # The good events, including the two around the bad one in the envelope, are all served.
    admin = worker.api(keys["u-admin"])
    served = {e["event_id"] for e in admin.all_events()}
    assert served == {e["event_id"] for e in [*good_before, *good_after, *envelope_ok]}

    # With --ocsf the SIEM stream speaks OCSF: application.update is Entity Management: Update.
    records = read_topic(kafka_bootstrap, topics.events, at_least=len(served))
    ocsf = [orjson.loads(value_of(m)) for m in records]
    assert {o["metadata"]["uid"] for o in ocsf} == served
    assert {(o["class_uid"], o["activity_id"], o["type_uid"]) for o in ocsf} == {(3004, 3, 300403)}
    assert all(o["entity"]["type"] == "application" and o["time"] > 0 for o in ocsf)
    assert worker.stop() == 0


@pytest.mark.kafka
def test_too_many_rejects_stop_the_worker_with_nothing_committed(
    kafka_bootstrap: str, kafka_topic_prefix: str, workdir: Path, workers: list[Worker]
) -> None:
    topics = Topics.for_prefix(kafka_topic_prefix)
    topics.create(kafka_bootstrap)
    producer = raw_producer(kafka_bootstrap)
    for i in range(120):
        producer.produce(topics.raw, key=b"k", value=b"<xml>not an event %d</xml>" % i)
    assert producer.flush(30) == 0

    group = f"{kafka_topic_prefix}-g"
    store = workdir / "store"
    strict = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=group,
        workdir=workdir,
        api=False,
        extra_args=("--max-consecutive-rejects", "50", "--reject-min-sample", "10"),
    )
    workers.append(strict)
    assert strict.wait_exit(timeout=90) == 3
    assert "too many rejects" in strict.log_text()
    assert strict.stats().get("dead_lettered", 0) == 0

    # Nothing of that batch was committed nor dead-lettered: a lenient worker sees all of it again.
    lenient = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=group,
        workdir=workdir,
        api=False,
        extra_args=("--max-consecutive-rejects", "1000", "--max-reject-ratio", "1"),
    )
    workers.append(lenient)
    stats = lenient.wait_events_in(120)
    assert stats["dead_lettered"] == 120
    dlq = read_topic(kafka_bootstrap, topics.dlq, at_least=120)
    assert len(dlq) == 120
    assert lenient.stop() == 0


@pytest.mark.kafka
def test_the_api_of_a_worker_records_its_reads_before_answering(
    kafka_bootstrap: str, kafka_topic_prefix: str, workdir: Path, workers: list[Worker]
) -> None:
    """`worker --with-api`: each read is on audit.raw (acknowledged) before it is answered, and
    reaches the store through the worker, signed, so it is not refused as a forged audit_log.*."""
    topics = Topics.for_prefix(kafka_topic_prefix)
    topics.create(kafka_bootstrap)
    store = workdir / "store"
    keys = bootstrap_store(store, workdir, ["u-admin", "u-dev"])
    publish_directory(kafka_bootstrap, topics.directory, Directory.model_validate(DIRECTORY).snapshots())
    worker = Worker(
        bootstrap=kafka_bootstrap,
        topics=topics,
        store=store,
        group=f"{kafka_topic_prefix}-g",
        workdir=workdir,
        env={"AUDITLOG_API_AUDIT_READS": "true"},
    )
    workers.append(worker)
    worker.wait_api()
    admin, dev = worker.api(keys["u-admin"]), worker.api(keys["u-dev"])
    assert dev.get("/v1/events", q="action:application.*").status_code == 200

    def recorded() -> list[dict[str, Any]]:
        r = admin.get("/v1/events", q="action:audit_log.read actor:u-dev", limit=10, fields="full")
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    wait_for("the developer's read on record", lambda: bool(recorded()), 60, detail=worker.tail)
    [read] = [r for r in recorded() if r["details"].get("view") == "global"]
    assert read["details"]["query"] == {"q": "action:application.*"}
    assert read["provenance"]["ingest_source"] == "kafka" and read["infrastructure"] == INFRA
    stats = worker.stats()
    assert stats["dead_lettered"] == 0 and stats["balanced"], stats
