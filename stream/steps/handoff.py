"""Between decode and insert: the rest of the chain on a thread of its own, one batch at a time.

Decoding is Python and holds the interpreter; inserting is mostly ClickHouse and the
Kafka client, which release it. With the two on separate threads the next batch is
decoded while the previous one is stored, published and committed, in the order
they came: one batch in the stage, at most one waiting for it, so no more than three
batches are ever uncommitted (all redelivered after a crash, and found stored once).

A failure in the stage is never dropped: the stage stops taking batches, so nothing
after the failed one is stored or committed, `on_error` hears of it at once (the
worker ends the process), and the next `submit` or `drain` raises it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from stream.gc_pause import gc_paused
from stream.messages import Batch
from stream.steps import Step


class Handoff:
    def __init__(self, next_step: Step, *, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._next = next_step
        self._on_error = on_error
        self._state = threading.Condition()
        self._waiting: Batch | None = None
        self._busy_since: float | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="auditlog-chain-stage", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Queue `batch` behind the one in the stage; blocks while another already waits."""
        with self._state:
            while self._waiting is not None and self._error is None and not self._stopping:
                self._state.wait()
            self._raise_failure()
            if self._stopping:
                raise RuntimeError("the chain's stage is stopped")
            self._waiting = batch
            self._state.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every batch submitted has been through the stage (raising its failure);
        False if `timeout` passed first."""
        with self._state:
            done = self._state.wait_for(
                lambda: self._error is not None or (self._waiting is None and self._busy_since is None),
                timeout=timeout,
            )
            self._raise_failure()
            return done

    def busy_since(self) -> float | None:
        """When (time.monotonic) the batch now in the stage entered it, or None when idle."""
        return self._busy_since

    def stop(self, timeout: float = 60) -> None:
        """Let the batches already submitted through, then end the thread."""
        with self._state:
            self._stopping = True
            self._state.notify_all()
        self._thread.join(timeout=timeout)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            with self._state:
                while self._waiting is None and not self._stopping:
                    self._state.wait()
                batch, self._waiting = self._waiting, None
                if batch is None:
                    return
                self._busy_since = time.monotonic()
                self._state.notify_all()
            try:
                # The batch's objects live until it is stored; collecting meanwhile finds nothing.
                with gc_paused():
                    self._next.submit(batch)
            except BaseException as exc:
                with self._state:
                    self._error = exc
                    self._busy_since = None
                    self._waiting = None
                    self._state.notify_all()
                if self._on_error is not None:
                    self._on_error(exc)
                return
            with self._state:
                self._busy_since = None
                self._state.notify_all()
