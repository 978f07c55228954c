"""Step 6: sign a checkpoint of the logs this worker writes, at least once a minute while
events arrive.

The rows of a batch are leaves already (the insert wrote them with their rows); this
step only signs the trees' new heads, for the logs of the partitions this worker
owns (the logs its batches touch), so two workers never chain one log's
checkpoints. A failed checkpoint holds nothing back: it is logged and made when the
next one is due, covering everything since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import orjson

from storage.writer import log_of
from stream.checkpointer import Checkpointer, Made
from stream.messages import Batch
from stream.steps import Step
from stream.steps.delivery import Delivery, Record

log = logging.getLogger("auditlog.checkpoints")


class CheckpointStep:
    """Records the logs each batch wrote and passes the batch on at once; the checkpoints are
    signed by `start()`'s thread (or by `tick()`), never on the chain's thread.

    A checkpoint only reads what earlier inserts committed, and the commit never waits for
    it, so no batch waits behind a signing either (one ran on the chain's thread before, 3%
    of that thread's time)."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        next_step: Step,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checkpointer = checkpointer
        self._next = next_step
        self._interval = interval_s
        self._clock = clock
        self._pending: set[str] = set()
        self._last = clock()
        self._state = threading.Condition()
        self._signing = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, batch: Batch) -> None:
        # The logs of this worker's partitions: a duplicate carries its stored copy's log,
        # which another process may be signing.
        logs = {log_of(row) for row in batch.rows if row.get("kafka_topic")}
        with self._state:
            self._pending.update(logs)
            self._state.notify()
        self._next.submit(batch)

    def start(self) -> None:
        """Sign in a thread of its own from now on, as soon as a checkpoint is due."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="auditlog-checkpoints", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread, after signing what is pending (the tail before a shutdown)."""
        with self._state:
            self._stopping = True
            self._state.notify()
        if self._thread is not None:
            # Unbounded: a signing still running must end before the store it reads is closed.
            self._thread.join()
        self._sign(self._take(due_only=False))

    def tick(self) -> None:
        """Sign now, in the caller's thread, if a checkpoint is due."""
        self._sign(self._take(due_only=True))

    def _due_in(self) -> float:
        return self._interval - (self._clock() - self._last)

    def _take(self, *, due_only: bool) -> set[str]:
        with self._state:
            if not self._pending or (due_only and self._due_in() > 0):
                return set()
            logs, self._pending = self._pending, set()
            return logs

    def _loop(self) -> None:
        while True:
            with self._state:
                while not self._stopping and (not self._pending or self._due_in() > 0):
                    self._state.wait(timeout=max(0.05, self._due_in()) if self._pending else None)
                if self._stopping:
                    return
            self._sign(self._take(due_only=True))

    def _sign(self, logs: set[str]) -> None:
        if not logs:
            return
        with self._signing:
            try:
                self._checkpointer.run(logs)
            except Exception:
                log.exception("checkpoint of %s failed; made again when the next is due", sorted(logs))
                with self._state:
                    self._pending.update(logs)
            with self._state:
                self._last = self._clock()


def kafka_publisher(delivery: Delivery, *, topic: str) -> Callable[[Made], None]:
    """Each checkpoint to `topic` (keyed by log) for SIEMs and witnesses; a failed produce is
    logged, as the checkpoint is in the store and the anchor directory already."""

    def publish(made: Made) -> None:
        value = orjson.dumps(
            {
                "log": made.log,
                "origin": made.origin,
                "tree_size": made.checkpoint.size,
                "note": made.note,
                "verifier_key": made.verifier_key,
            }
        )
        record = Record(topic, value, made.log.encode(), [("content-type", b"application/json")])
        try:
            delivery.deliver(made, lambda: [record])
        except Exception:
            log.exception("checkpoint %s/%d not published to %s", made.log, made.checkpoint.size, topic)

    return publish
