"""Pytest plugin: a real Kafka broker for the tests that need one.

Enable it from ``tests/conftest.py`` with::

    pytest_plugins = ["tests.kafka_fixture"]

Fixtures:

``kafka_bootstrap`` (session)
    Bootstrap servers of a running broker, found in this order:

    a. ``AUDITLOG_TEST_KAFKA_BOOTSTRAP`` if set (it must answer, else the
       tests fail);
    b. a ``testcontainers`` Kafka container, if a Docker engine answers
       (``AUDITLOG_TEST_KAFKA_NO_DOCKER=1`` skips this step;
       ``AUDITLOG_TEST_KAFKA_IMAGE`` picks the image);
    c. ``deploy/kafka/local-broker.sh start`` -- the real Apache Kafka jars
       from Maven Central in a JVM on 127.0.0.1, state under
       ``<repo>/.local/kafka-test``, on a free port unless ``KAFKA_PORT``
       (and ``KAFKA_CONTROLLER_PORT``) are set. It is stopped at session end
       if this plugin started it. It also listens for SASL_SSL on another
       free port (``kafka_secure_env`` gives a client's settings for it).

    If none of these gives a working broker the tests *fail*; they are never
    skipped.

``broker_control`` (function)
    ``stop()`` / ``start()`` the broker, for broker-restart fault tests. Only
    the script-managed broker (c) supports it; with (a) or (b) a test using it
    fails with an explanation. The broker is running again after the test.

``kafka_topic_prefix`` (function)
    A unique topic-name prefix per test, so tests use isolated topics.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "local-broker.sh"
TEST_STATE_DIR = REPO_ROOT / ".local" / "kafka-test"

ENV_BOOTSTRAP = "AUDITLOG_TEST_KAFKA_BOOTSTRAP"
ENV_NO_DOCKER = "AUDITLOG_TEST_KAFKA_NO_DOCKER"
ENV_IMAGE = "AUDITLOG_TEST_KAFKA_IMAGE"

# Generous: a cold first run downloads the Kafka jars with Maven.
SCRIPT_START_TIMEOUT_S = 900.0
SCRIPT_STOP_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
DOCKER_CHECK_TIMEOUT_S = 15.0

BrokerKind = Literal["env", "docker", "script"]


class BrokerControl(Protocol):
    """What ``broker_control`` gives a test."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: test needs a real Kafka broker (kafka_bootstrap fixture)")


# ------------------------------------------------------------------ helpers


def probe_broker(bootstrap: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Return None once ``bootstrap`` serves metadata listing a broker, else
    the last error seen before ``timeout`` seconds ran out."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return last
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, remaining)))
            if metadata.brokers:
                return None
            last = "metadata lists no brokers"
        except KafkaException as exc:
            last = str(exc)
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    return values


def _docker_unavailable_reason() -> str | None:
    """None if a Docker engine answers a ping, else why not. Runs in a child
    process so a hanging DOCKER_HOST cannot hang the test session."""
    if os.environ.get(ENV_NO_DOCKER, "").strip() not in ("", "0"):
        return f"{ENV_NO_DOCKER} is set"
    check = "import docker; docker.from_env(timeout=5).ping()"
    try:
        result = subprocess.run(
            [sys.executable, "-c", check],
            capture_output=True,
            text=True,
            timeout=DOCKER_CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "Docker engine did not answer in time"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return f"no Docker engine ({lines[-1] if lines else 'ping failed'})"
    return None


@dataclass
class ScriptBroker:
    """A broker run by ``deploy/kafka/local-broker.sh`` in ``state_dir``."""

    state_dir: Path
    port: int
    controller_port: int
    sasl_ssl_port: int | None = None
    started_by_us: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["AUDITLOG_KAFKA_HOME"] = str(self.state_dir)
        env["KAFKA_PORT"] = str(self.port)
        env["KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        env["KAFKA_SASL_SSL_PORT"] = str(self.sasl_ssl_port or "")
        return env

    def client_env(self) -> dict[str, str]:
        """AUDITLOG_KAFKA_* of a client of the SASL_SSL listener (the script writes them)."""
        return _read_env_file(self.state_dir / "tls" / "client.env")

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", str(BROKER_SCRIPT), command],
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{BROKER_SCRIPT.name} {command} did not finish in {timeout:.0f}s") from exc

    def is_running(self) -> bool:
        return self._run("status", SCRIPT_STOP_TIMEOUT_S).returncode == 0

    def start(self) -> None:
        result = self._run("start", SCRIPT_START_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f"{BROKER_SCRIPT.name} start failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
            )

    def stop(self) -> None:
        result = self._run("stop", SCRIPT_STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f"{BROKER_SCRIPT.name} stop failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
            )


@dataclass
class KafkaBroker:
    """The broker the session uses and how it was obtained."""

    bootstrap: str
    kind: BrokerKind
    script: ScriptBroker | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self.cleanups:
            self.cleanups.pop()()


def _script_broker() -> ScriptBroker:
    """Start (or reuse) the script-managed broker in TEST_STATE_DIR."""
    if not BROKER_SCRIPT.is_file():
        raise RuntimeError(f"{BROKER_SCRIPT} is missing")
    if shutil.which("bash") is None:
        raise RuntimeError("bash is not on PATH")
    # A broker left running in the test state dir (e.g. by an interrupted
    # session) is reused on the ports it recorded.
    recorded = _read_env_file(TEST_STATE_DIR / "run.env")
    if recorded.get("KAFKA_PORT") and recorded.get("KAFKA_CONTROLLER_PORT"):
        previous = ScriptBroker(
            TEST_STATE_DIR,
            int(recorded["KAFKA_PORT"]),
            int(recorded["KAFKA_CONTROLLER_PORT"]),
            int(recorded["KAFKA_SASL_SSL_PORT"]) if recorded.get("KAFKA_SASL_SSL_PORT") else None,
        )
        if previous.is_running() and previous.sasl_ssl_port is not None:
            return previous
    env_port = os.environ.get("KAFKA_PORT", "").strip()
    env_controller = os.environ.get("KAFKA_CONTROLLER_PORT", "").strip()
    port = int(env_port) if env_port else _free_port()
    controller_port = int(env_controller) if env_controller else _free_port()
    while controller_port == port:
        controller_port = _free_port()
    # A SASL_SSL listener beside PLAINTEXT: what a production cluster asks of every client.
    sasl_ssl_port = _free_port()
    while sasl_ssl_port in (port, controller_port):
        sasl_ssl_port = _free_port()
    broker = ScriptBroker(TEST_STATE_DIR, port, controller_port, sasl_ssl_port, started_by_us=True)
    # Each session that starts the test broker starts from empty data; the
    # fetched jars and the cluster id are kept.
    shutil.rmtree(TEST_STATE_DIR / "data", ignore_errors=True)
    try:
        broker.start()
    except RuntimeError:
        with contextlib.suppress(RuntimeError):
            broker.stop()
        raise
    return broker


def _docker_broker() -> KafkaBroker:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer

    image = os.environ.get(ENV_IMAGE, "").strip() or "confluentinc/cp-kafka:7.6.0"
    container = (
        KafkaContainer(image)
        .with_env("KAFKA_MESSAGE_MAX_BYTES", "16777216")
        .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", "16777216")
        .with_env("KAFKA_NUM_PARTITIONS", "3")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    container.start(timeout=120)
    broker = KafkaBroker(container.get_bootstrap_server(), "docker")
    broker.cleanups.append(container.stop)
    return broker


def _obtain_broker() -> KafkaBroker:
    reasons: list[str] = []

    explicit = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if explicit:
        error = probe_broker(explicit)
        if error is not None:
            pytest.fail(
                f"{ENV_BOOTSTRAP}={explicit} does not answer as a Kafka broker: {error}",
                pytrace=False,
            )
        return KafkaBroker(explicit, "env")

    docker_reason = _docker_unavailable_reason()
    if docker_reason is None:
        try:
            broker = _docker_broker()
        except Exception as exc:  # any failure: fall back to the script
            reasons.append(f"Kafka container failed: {type(exc).__name__}: {exc}")
        else:
            error = probe_broker(broker.bootstrap)
            if error is None:
                return broker
            broker.close()
            reasons.append(f"Kafka container did not answer: {error}")
    else:
        reasons.append(docker_reason)

    try:
        script = _script_broker()
    except (RuntimeError, OSError, ValueError) as exc:
        reasons.append(f"local broker script failed: {exc}")
    else:
        broker = KafkaBroker(script.bootstrap, "script", script=script)
        if script.started_by_us:
            broker.cleanups.append(script.stop)
        error = probe_broker(broker.bootstrap)
        if error is None:
            return broker
        broker.close()
        reasons.append(f"local broker did not answer on {script.bootstrap}: {error}")

    pytest.fail(
        "no Kafka broker for the tests:\n  - " + "\n  - ".join(reasons),
        pytrace=False,
    )


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's broker, with how it was obtained."""
    broker = _obtain_broker()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """Bootstrap servers (``host:port``) of a running Kafka broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def broker_control(kafka_broker: KafkaBroker) -> Iterator[BrokerControl]:
    """Stop/start the session's broker; it is running again after the test."""
    script = kafka_broker.script
    if kafka_broker.kind != "script" or script is None:
        how = {
            "env": f"given by {ENV_BOOTSTRAP}",
            "docker": "a testcontainers Kafka container",
            "script": "script-managed",
        }[kafka_broker.kind]
        pytest.fail(
            f"broker_control needs the broker run by {BROKER_SCRIPT.name}, but this "
            f"session's broker ({kafka_broker.bootstrap}) is {how}: it cannot be "
            f"stopped and restarted with its data kept. Unset {ENV_BOOTSTRAP} and set "
            f"{ENV_NO_DOCKER}=1 to run this test.",
            pytrace=False,
        )
    yield script
    if not script.is_running():
        script.start()
    error = probe_broker(script.bootstrap)
    if error is not None:
        pytest.fail(f"broker did not come back after the test: {error}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_secure_env(kafka_broker: KafkaBroker) -> dict[str, str]:
    """AUDITLOG_KAFKA_* settings that reach the session's broker over SASL_SSL (SCRAM-SHA-512,
    TLS against the CA the broker script made)."""
    script = kafka_broker.script
    env = script.client_env() if script is not None else {}
    if not env:
        pytest.fail(
            f"the SASL_SSL listener is made by {BROKER_SCRIPT.name}, but this session's broker "
            f"({kafka_broker.bootstrap}) is not script-managed or has none. Unset {ENV_BOOTSTRAP} "
            f"and set {ENV_NO_DOCKER}=1 to run this test.",
            pytrace=False,
        )
    return env


_UNSAFE_TOPIC_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


@pytest.fixture
def kafka_topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic-name prefix unique to this test, e.g. ``t-test_foo-1a2b3c4d5e6f``."""
    name = _UNSAFE_TOPIC_CHARS.sub("_", request.node.name)[:60]
    return f"t-{name}-{uuid.uuid4().hex[:12]}"
