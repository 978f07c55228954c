"""Step 6: sign a checkpoint of the logs this worker writes, at least once a minute while
events arrive.

The rows of a batch are leaves already (the insert wrote them with their rows); this
step only signs the trees' new heads, for the logs of the partitions this worker
owns (the logs its batches touch), so two workers never chain one log's
checkpoints. A failed checkpoint holds nothing back: it is logged and made at the
next batch, covering everything since.
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
        self._lock = threading.Lock()

    def submit(self, batch: Batch) -> None:
        with self._lock:
            # The logs of this worker's partitions: a duplicate carries its stored copy's log,
            # which another process may be signing.
            self._pending.update(log_of(row) for row in batch.rows if row.get("kafka_topic"))
        self.tick()
        self._next.submit(batch)

    def tick(self) -> None:
        """Checkpoint the logs written since the last checkpoint if one is due: after each batch,
        and from the edge's timer, so that the last events before a quiet spell are signed too."""
        with self._lock:
            if self._pending and self._clock() - self._last >= self._interval:
                self._flush()

    def _flush(self) -> None:
        try:
            self._checkpointer.run(self._pending)
        except Exception:
            log.exception("checkpoint of %s failed; made again at the next batch", sorted(self._pending))
            return
        self._pending.clear()
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
