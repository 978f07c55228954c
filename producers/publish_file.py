"""Publish an NDJSON file of contract events to Kafka (``auditlog publish FILE``).

Every line is validated before anything is sent for it; invalid lines are
reported with their line number and never sent. Valid lines go through the
`Publisher`, so they are batched into envelopes and spooled if the broker is
unreachable (the spool is drained by the next run with the same spool dir).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from producers.contract.event import InvalidEvent, parse_event
from producers.publisher import DeliveryReport, ProducerSettings, Publisher

MAX_KEPT_INVALID = 1000
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class InvalidLine:
    line: int
    reason: str


@dataclass(frozen=True)
class Progress:
    lines: int
    published: int
    invalid: int
    elapsed_s: float


@dataclass
class PublishSummary:
    lines: int = 0
    """Non-blank lines read."""
    published: int = 0
    """Valid events handed to the publisher."""
    delivered: int = 0
    failed: int = 0
    in_spool: int = 0
    """Valid events still in the spool at the end (broker unreachable): not lost, sent by the next run."""
    pending: int = 0
    invalid_count: int = 0
    invalid: list[InvalidLine] = field(default_factory=list)
    """The first MAX_KEPT_INVALID invalid lines."""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.invalid_count == 0 and self.failed == 0 and self.in_spool == 0 and self.pending == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "published": self.published,
            "delivered": self.delivered,
            "failed": self.failed,
            "in_spool": self.in_spool,
            "pending": self.pending,
            "invalid": self.invalid_count,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def publish_ndjson(
    path: Path | str,
    settings: ProducerSettings | None = None,
    progress: Callable[[Progress], None] | None = None,
    *,
    drain_timeout: float = 60.0,
) -> PublishSummary:
    """Publish every valid event of an NDJSON file (``-`` reads stdin).

    Waits for delivery; if the spool held events (now or from an earlier run)
    it is drained for up to `drain_timeout` seconds.
    """
    summary = PublishSummary()
    started = time.monotonic()
    last_progress = started

    def report(now: float) -> None:
        if progress is not None:
            progress(Progress(summary.lines, summary.published, summary.invalid_count, now - started))

    with Publisher(settings or ProducerSettings()) as publisher:
        with _open(path) as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                summary.lines += 1
                reason = _publish_line(publisher, raw)
                if reason is not None:
                    summary.invalid_count += 1
                    if len(summary.invalid) < MAX_KEPT_INVALID:
                        summary.invalid.append(InvalidLine(number, reason))
                else:
                    summary.published += 1
                if progress is not None and summary.lines % 1000 == 0:
                    now = time.monotonic()
                    if now - last_progress >= PROGRESS_EVERY_S:
                        last_progress = now
                        report(now)
        publisher.flush()
        if publisher.spooling:
            publisher.drain(drain_timeout)
        totals: DeliveryReport = publisher.totals()
    summary.delivered = totals.delivered
    summary.failed = totals.failed
    summary.in_spool = totals.in_spool
    summary.pending = totals.pending
    summary.elapsed_s = time.monotonic() - started
    report(time.monotonic())
    return summary


def _publish_line(publisher: Publisher, raw: bytes) -> str | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    try:
        publisher.publish(parse_event(obj))
    except InvalidEvent as exc:
        return exc.reason
    return None


def _open(path: Path | str) -> BinaryIO:
    if str(path) == "-":
        # Not closed by the caller's `with`: stdin stays usable.
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return open(path, "rb")
