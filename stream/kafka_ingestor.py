"""The HTTP ingest endpoint in Kafka mode: validate, publish to `audit.raw`, report per event.

Embedded mode writes a POSTed batch straight to the store (`stream.batch_ingest`);
with a worker, every event must take the one path through Kafka and the worker,
so the API publishes instead, with the producer SDK. Each event is judged
alone, like `BatchIngestor`: invalid ones are reported (index, event_id, reason,
field errors) and the valid ones published. The answer waits until Kafka
acknowledged every published event or the SDK spooled it to disk (both
durable); `stored` becomes `published`, and an event whose delivery failed for
good is reported as rejected.

The SDK's delivery callback reports by event id, for the whole publisher; this
ingestor keeps one waiter per request so that concurrent requests each learn
about their own events.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from producers.contract.event import AuditEvent, InvalidEvent, parse_event
from producers.publisher import DeliveryError, ProducerSettings, Publisher
from stream.batch_ingest import Rejection
from stream.transform import check_key_infrastructure, check_reserved_action


@dataclass
class KafkaIngestReport:
    received: int = 0
    published: int = 0
    spooled: int = 0
    pending: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "published": self.published,
            "spooled": self.spooled,
            "pending": self.pending,
            "rejected": [r.__dict__ for r in self.rejected],
        }


class _Waiter:
    def __init__(self, ids: dict[str, int]) -> None:
        self.index_of = ids
        self.outstanding = set(ids)
        self.spooled: set[str] = set()
        self.failed: dict[str, str] = {}
        self.done = threading.Event()
        if not ids:
            self.done.set()

    def settle(self, event_id: str, error: DeliveryError | None) -> None:
        if error is not None and error.spooled:
            self.spooled.add(event_id)
        elif error is not None:
            self.failed[event_id] = f"not delivered to Kafka: {error.code}: {error.reason}"
        self.outstanding.discard(event_id)
        if not self.outstanding:
            self.done.set()


class KafkaIngestor:
    def __init__(self, settings: ProducerSettings, *, timeout_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Waiter]] = defaultdict(list)
        self._timeout_s = timeout_s if timeout_s is not None else settings.message_timeout_ms / 1000 + 5
        self.publisher = Publisher(settings, on_delivery=self._on_delivery)

    def _on_delivery(self, ids: list[str], error: DeliveryError | None) -> None:
        with self._lock:
            for event_id in ids:
                waiters = self._waiting.get(event_id)
                if not waiters:
                    continue
                waiter = waiters.pop(0)
                if not waiters:
                    del self._waiting[event_id]
                waiter.settle(event_id, error)

    def ingest(
        self,
        items: Sequence[Any],
        *,
        received_at_ms: int,
        key_id: str = "",
        key_infrastructure: str | None = None,
        service_record: bool = False,
    ) -> KafkaIngestReport:
        """Publish to audit.raw. received_at comes from the broker's timestamp once a worker reads
        the event; the key id is not carried (a header would be the producer's word, not proof):
        a worker's row records its Kafka lineage. Messages are signed when the publisher has a
        signing key, so only this service's own record of reads may carry `audit_log.*`."""
        report = KafkaIngestReport(received=len(items))
        valid: list[tuple[int, AuditEvent]] = []
        for index, item in enumerate(items):
            try:
                event = parse_event(item)
                check_key_infrastructure(event, key_infrastructure)
                check_reserved_action(event, service_record=service_record)
                valid.append((index, event))
            except InvalidEvent as exc:
                report.rejected.append(_rejection(index, item, exc))
        ids = {str(event.event_id): index for index, event in valid}
        waiter = _Waiter(ids)
        with self._lock:
            for event_id in ids:
                self._waiting[event_id].append(waiter)
        sent: list[AuditEvent] = []
        try:
            for index, event in valid:
                try:
                    self.publisher.publish(event)
                    sent.append(event)
                except InvalidEvent as exc:  # EventTooLarge: valid, but too big for any message
                    report.rejected.append(_rejection(index, event.model_dump(mode="json"), exc))
                    self._forget(str(event.event_id), waiter)
        except BaseException:
            for event_id in ids:
                self._forget(event_id, waiter)
            raise
        deadline = time.monotonic() + self._timeout_s
        self.publisher.flush(timeout=self._timeout_s)
        waiter.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            outstanding = set(waiter.outstanding)
            for event_id in outstanding:
                self._forget_locked(event_id, waiter)
        for event_id, reason in waiter.failed.items():
            rejection = Rejection(index=ids[event_id], event_id=event_id, reason=reason, errors=[])
            report.rejected.append(rejection)
        report.pending = len(outstanding)
        report.spooled = len(waiter.spooled - set(waiter.failed))
        report.published = len(sent) - len(waiter.failed) - report.pending
        report.rejected.sort(key=lambda r: r.index)
        return report

    def _forget(self, event_id: str, waiter: _Waiter) -> None:
        with self._lock:
            self._forget_locked(event_id, waiter)
        waiter.settle(event_id, None)

    def _forget_locked(self, event_id: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(event_id)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[event_id]

    def close(self) -> None:
        self.publisher.close()


def _rejection(index: int, item: Any, exc: InvalidEvent) -> Rejection:
    event_id = item.get("event_id") if isinstance(item, dict) else None
    return Rejection(
        index=index,
        event_id=event_id if isinstance(event_id, str) else None,
        reason=exc.reason,
        errors=[e.model_dump() for e in exc.errors],
        code=exc.code,
    )
