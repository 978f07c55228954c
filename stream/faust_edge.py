"""The faust edge: group membership, fetching, rebalances, and handing batches to the chain.

Nothing else happens here; the chain (`stream.pipeline`) runs in a thread, and the
logic does not know that faust feeds it.

How commits are kept honest. faust commits the offsets of *acked* messages:
every `broker_commit_interval` seconds, every `broker_commit_every` acks, when
a task raised (`Consumer.on_task_error` commits), on rebalance and on stop.
`Stream.take()`/`take_events()` ack their whole buffer in a `finally` block,
so a handler that raised, or a generator closed at shutdown while its batch
was still being written, gets its messages acked and then committed. None of
that may touch `audit.raw`, so the topic is declared with `acks=False`:
`Consumer.ack` then records nothing for it (`acks_enabled_for` is False), and
none of faust's commit paths has an offset of it to commit. faust's public API
has no commit of explicit offsets; the chain's last step commits
`max(offset) + 1` per partition through the consumer's `_commit` (aiokafka's
`commit()` with explicit offsets), after every other step acknowledged the batch.
aiokafka's own auto-commit is off (faust creates it with `enable_auto_commit=False`).
The kill -9 tests (tests/test_worker_faults.py) are the proof that this holds.

An exception out of a batch is never left to faust: its agent supervisor would
restart the agent past the failed batch, and a later commit would skip it. A step
that cannot reach its service retries for as long as it takes; any other error,
and `TooManyRejects`, end the process at once with a non-zero code and the batch
uncommitted. Everything uncommitted is redelivered on restart, and the writer's
once-forever event ids make that exactly-once as seen through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from confluent_kafka import Producer

from producers.kafka_config import producer_config
from storage.store import Store
from stream.checkpointer import Checkpointer
from stream.counters import Counters
from stream.directory_follower import DirectoryFollower
from stream.gc_pause import gc_paused
from stream.messages import Batch, RawMessage
from stream.metrics import Heartbeat, OpsServer, WorkerMetrics
from stream.pipeline import worker_chain
from stream.settings import WorkerSettings
from stream.steps import Step
from stream.steps.checkpoint import CheckpointStep, kafka_publisher
from stream.steps.delivery import Delivery
from stream.steps.guard import RejectGuard, TooManyRejects
from stream.steps.retry import Retry, Stopping
from stream.topics import ensure_topics

log = logging.getLogger("auditlog.worker")

EXIT_TOO_MANY_REJECTS: Final = 3
EXIT_CRASH: Final = 70  # EX_SOFTWARE


def raw_message(event: Any) -> RawMessage:
    """A faust event (value_serializer raw) as the pipeline's RawMessage."""
    m = event.message
    value = m.value
    timestamp = m.timestamp
    return RawMessage(
        value=bytes(value) if value is not None else None,
        headers=tuple((str(k), bytes(v) if v is not None else b"") for k, v in (m.headers or ())),
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        # faust hands the broker's millisecond timestamp over as float seconds.
        timestamp_ms=round(timestamp * 1000) if timestamp is not None else 0,
        key=bytes(m.key) if m.key is not None else None,
    )


def slices(events: Sequence[Any], max_bytes: int) -> list[Sequence[Any]]:
    """Consecutive runs of `events` of at most `max_bytes` of message values (at least one event each).

    Runs are prefixes of the batch in order, so each one's offsets can be committed
    once it is stored: per partition, everything before them is stored already.
    """
    out: list[Sequence[Any]] = []
    start = size = 0
    for i, event in enumerate(events):
        n = len(event.message.value or b"")
        if i > start and size + n > max_bytes:
            out.append(events[start:i])
            start, size = i, 0
        size += n
    if start < len(events):
        out.append(events[start:])
    return out


def next_offsets(events: Sequence[Any]) -> dict[Any, int]:
    """Per topic-partition, the offset to commit once the batch is stored: last offset + 1."""
    offsets: dict[Any, int] = {}
    for event in events:
        m = event.message
        if m.offset + 1 > offsets.get(m.tp, -1):
            offsets[m.tp] = m.offset + 1
    return offsets


class WorkerRuntime:
    """What the faust agent calls: the directory follower and the chain. Owns the store."""

    def __init__(self, settings: WorkerSettings, store: Store | None = None) -> None:
        self.settings = settings
        ensure_topics(settings)
        self.store = store or Store.open(settings.store)
        self.directory = DirectoryFollower(settings, self.store)
        self.directory.bootstrap()
        self.directory.start()
        self.producer = Producer(producer_config(settings.connection()))
        self.counters = Counters()
        self.checkpoints: CheckpointStep | None = None
        self.metrics = WorkerMetrics()
        self.metrics.directory_age.set_function(self.directory.age_s)
        self.heartbeat = Heartbeat(stale_after_s=max(60.0, 3 * settings.session_timeout_s))
        self.retry = Retry(
            initial_s=settings.retry_initial_s,
            max_s=settings.retry_max_s,
            on_retry=self._on_retry,
            watch=self.metrics,
        )
        self.chain = worker_chain(
            settings,
            writer=self.store.writer,
            producer=self.producer,
            directories=self.directory.current,
            guard=RejectGuard(
                max_ratio=settings.max_reject_ratio,
                max_consecutive=settings.max_consecutive_rejects,
                min_sample=settings.reject_min_sample,
                window=max(settings.reject_window, settings.reject_min_sample),
            ),
            retry=self.retry,
            counters=self.counters,
            on_batch=self._on_batch,
            commit=self._commit_from_thread,
            checkpoints=self._checkpoint_step() if settings.checkpoints.enabled else None,
        )
        self.app: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_started: float | None = None
        self.ops: OpsServer | None = None
        if settings.ops:
            self.ops = OpsServer(
                self.metrics,
                host=settings.ops_host,
                port=settings.ops_port,
                alive=self.liveness,
                ready=self.readiness,
                token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
            )
            self.ops.start()

    def _checkpoint_step(self) -> Callable[[Step], Step]:
        cp = self.settings.checkpoints.beside(self.settings.store)
        delivery = Delivery(self.producer, flush_timeout_s=self.settings.flush_timeout_s)
        checkpointer = Checkpointer.from_settings(
            self.store.tree, cp, publish=kafka_publisher(delivery, topic=cp.topic)
        )

        def step(commit: Step) -> Step:
            self.checkpoints = CheckpointStep(checkpointer, commit, interval_s=cp.interval_s)
            self.checkpoints.start()
            return self.checkpoints

        return step

    def liveness(self) -> str | None:
        """Why this worker should be restarted (its loop stopped, or a batch hangs in a call
        that neither returns nor fails), or None. A step retrying a failing service is alive:
        a restart would not mend the service."""
        problem = self.heartbeat.problem()
        if problem is not None:
            return problem
        started = self._batch_started
        hung_after = self.settings.flush_timeout_s * 3 + 60
        hung = started is not None and time.monotonic() - started > hung_after
        if hung and not self.metrics.failing_calls():
            return f"a batch has been in the chain for more than {hung_after:.0f}s without a failing call"
        return None

    def readiness(self) -> str | None:
        """Why this worker should not be sent traffic now (a step failing), or None."""
        failing = self.metrics.failing_calls()
        if failing:
            return f"failing and retrying: {', '.join(failing)} (batches are not committed meanwhile)"
        return self.heartbeat.problem()

    # -- one batch ---------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        if self.counters.first_batch_at is None:
            self.counters.first_batch_at = time.time()
        started = self._batch_started = time.monotonic()
        messages = [raw_message(e) for e in events]
        offsets = next_offsets(events)
        try:
            await asyncio.to_thread(self._run_chain, messages, offsets)
        except asyncio.CancelledError:
            # faust is stopping: a step still retrying gives up, the batch stays uncommitted.
            self.retry.stopping.set()
            raise
        finally:
            self._batch_started = None
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _run_chain(self, messages: list[RawMessage], offsets: dict[Any, int]) -> None:
        # The batch's objects live until it is stored; collecting meanwhile finds nothing.
        with gc_paused():
            self.chain.submit_messages(messages, offsets)

    def _on_retry(self, what: str, exc: Exception) -> None:
        self.counters.sink_retries += 1
        self.write_stats()

    def _on_batch(self, batch: Batch) -> None:
        self.metrics.observe_batch(batch)
        c = self.counters
        c.last_batch_at = time.time()
        log.info(
            "batch: %d messages, %d events -> %d stored, %d duplicates, %d dead-lettered "
            "(totals: %d in = %d stored + %d duplicates + %d dead-lettered)",
            batch.messages,
            batch.received,
            batch.inserted,
            batch.duplicates,
            len(batch.rejects),
            c.events_in,
            c.rows_stored,
            c.duplicates,
            c.dead_lettered,
        )
        if not c.balanced:
            log.error("accounting does not balance: %s", c.to_dict())
        self.write_stats()

    def _commit_from_thread(self, offsets: dict[Any, int]) -> None:
        """The commit step's call, from the chain's thread to the consumer on faust's loop. Bounded:
        a loop that stopped meanwhile never runs it, and the batch then stays uncommitted."""
        assert self._loop is not None
        if self.retry.stopping.is_set():
            raise Stopping("stopping before the commit: the batch is redelivered")
        future = asyncio.run_coroutine_threadsafe(self._commit(offsets), self._loop)
        future.result(timeout=self.settings.flush_timeout_s)

    async def _commit(self, offsets: dict[Any, int]) -> None:
        # Only partitions still ours: aiokafka refuses (and faust then crashes the consumer)
        # a commit for a partition a rebalance took away mid-batch. Its new owner
        # redelivers those messages and the store dedupes them.
        assigned = self.app.consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        committed = bool(mine) and await self.app.consumer._commit(mine)
        lags = {}
        for tp, offset in mine.items():
            highwater = self.app.consumer.highwater(tp)
            if highwater is not None and highwater >= 0:
                lags[(tp.topic, str(tp.partition))] = max(0, highwater - offset)
        self.metrics.set_lag(lags, assigned={(tp.topic, str(tp.partition)) for tp in assigned})
        if not committed or len(mine) < len(offsets):
            self.counters.commits_refused += 1
            self.metrics.commits_refused.inc()
            log.warning("offsets %s not committed (rebalanced); they will be redelivered", offsets)

    def write_stats(self) -> None:
        self.counters.write(self.settings.stats_path)

    def fatal(self, code: int, message: str) -> None:
        """End the process now, the current batch uncommitted: restart redelivers it."""
        log.critical("%s; exiting with code %d, batch not committed", message, code)
        with contextlib.suppress(Exception):
            self.write_stats()
        logging.shutdown()
        sys.stderr.flush()
        # os._exit, not sys.exit: no faust shutdown path runs, nothing else is flushed or committed.
        os._exit(code)

    def close(self) -> None:
        self.retry.stopping.set()
        if self.ops is not None:
            self.ops.stop()
        self.directory.stop()
        if self.checkpoints is not None:
            self.checkpoints.stop()
        with contextlib.suppress(Exception):
            self.producer.flush(self.settings.flush_timeout_s)


def build_app(runtime: WorkerRuntime) -> Any:
    import faust

    codec: Any = importlib.import_module("aiokafka.codec")  # untyped
    if not (codec.has_zstd() and codec.has_lz4() and codec.has_snappy()):
        # Without it aiokafka crashes on the first compressed batch (the SDK sends zstd).
        raise RuntimeError(
            "the worker needs cramjam to read compressed Kafka batches: pip install 'aiokafka[all]'"
        )

    s = runtime.settings
    connection = s.connection()
    datadir = s.faust_datadir or Path(tempfile.gettempdir()) / "auditlog-faust" / s.group_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.group_id,
        broker=[f"kafka://{h.strip()}" for h in connection.bootstrap_servers.split(",") if h.strip()],
        broker_credentials=connection.faust_credentials(),
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(datadir),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        # No leader topic to create; the worker creates its own topics up front.
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # faust never has an audit.raw offset to commit (acks=False below); these only
        # keep its commit timer from waking up for nothing.
        broker_commit_every=1_000_000_000,
        broker_commit_interval=3600.0,
        stream_wait_empty=False,
        broker_session_timeout=s.session_timeout_s,
        consumer_group_instance_id=s.instance_id,
        broker_heartbeat_interval=min(s.heartbeat_s, s.session_timeout_s / 3),
        consumer_max_fetch_size=s.topic_max_message_bytes,
        stream_buffer_maxsize=max(4096, s.batch_size),
    )
    topic = app.topic(s.raw_topic, value_serializer="raw", key_serializer="raw", acks=False, allow_empty=True)

    async def consume(stream: Any) -> None:
        async for events in stream.take_events(s.batch_size, within=s.batch_seconds):
            try:
                for chunk in slices(events, s.max_batch_bytes):
                    await runtime.handle(chunk)
            except Stopping:
                return
            except TooManyRejects as exc:
                runtime.fatal(EXIT_TOO_MANY_REJECTS, f"too many rejects: {exc}")
            except Exception as exc:
                log.exception("batch failed")
                runtime.fatal(EXIT_CRASH, f"batch failed: {type(exc).__name__}: {exc}")

    app.agent(topic, name="auditlog-raw", concurrency=1)(consume)

    async def beat() -> None:
        runtime.heartbeat.beat()

    app.timer(5.0)(beat)

    runtime.app = app
    return app


def run_faust(app: Any, *, loglevel: str = "WARNING") -> int:
    """Run the faust app until SIGTERM/SIGINT; the process exit code."""
    import faust

    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
