"""How a step retries the one call it makes to a service: with backoff, for as long as it
takes, until the worker stops. The batch stays uncommitted meanwhile, so a crash or a
stop redelivers it; what was done before the failing call is not done again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from confluent_kafka import KafkaException

from storage.engine import StoreError

log = logging.getLogger("auditlog.worker")

T = TypeVar("T")


class SinkError(RuntimeError):
    """A batch did not reach a destination; retry it, do not commit it."""


class Stopping(RuntimeError):
    """The worker is stopping while a step retries: the batch is left uncommitted."""


RETRIABLE = (StoreError, SinkError, KafkaException)


class Watch(Protocol):
    """Who hears of each call: its time when it succeeds, each failure."""

    def call_done(self, call: str, seconds: float) -> None: ...

    def call_failed(self, call: str) -> None: ...


class Retry:
    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        on_retry: Callable[[str, Exception], None] | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.stopping = threading.Event()
        self._on_retry = on_retry
        self._watch = watch

    def __call__(self, what: str, call: Callable[[], T]) -> T:
        delay = self.initial_s
        while True:
            started = time.monotonic()
            try:
                result = call()
            except RETRIABLE as exc:
                if _fatal(exc):
                    # A fatal client error (e.g. the idempotent producer fenced): retrying cannot
                    # mend it, a restart with a fresh client can.
                    raise
                log.warning("%s failed, batch not committed; retrying in %.1fs: %s", what, delay, exc)
                if self._watch is not None:
                    self._watch.call_failed(what)
                if self._on_retry is not None:
                    self._on_retry(what, exc)
                if self.stopping.wait(delay):
                    raise Stopping(f"stopped while retrying {what}") from exc
                delay = min(delay * 2, self.max_s)
                continue
            if self._watch is not None:
                self._watch.call_done(what, time.monotonic() - started)
            return result


class Retrying(Protocol):
    """What a step calls its service through: `Retry`, or `once`."""

    def __call__(self, what: str, call: Callable[[], T]) -> T: ...


def once(what: str, call: Callable[[], T]) -> T:
    """No retry (HTTP ingest): the caller sees the failure and sends again."""
    return call()


def _fatal(exc: Exception) -> bool:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return bool(getattr(error, "fatal", lambda: False)())
