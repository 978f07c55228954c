"""Reads of the audit log are themselves audited.

Every view, query, detail and export becomes an event (`audit_log.read` or
`audit_log.export`) whose actor is the caller and whose details hold the query.
Its target is the caller's infrastructure, so only holders of *Manage Infrastructure and
Users* see it. Recording goes through the service's ingestor, like any event,
but off the request path: a background thread flushes every `interval` seconds,
so a read costs a queue append, not an insert.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from producers.contract.permissions import Caller
from producers.ids import uuid7

log = logging.getLogger("auditlog.read_audit")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class _Ingestor(Protocol):
    def ingest(
        self, items: list[Any], *, received_at_ms: int, key_id: str = "", service_record: bool = False
    ) -> Any: ...


class ReadAuditor:
    def __init__(
        self,
        ingestor: _Ingestor,
        *,
        service_host: str = "",
        interval: float = 1.0,
        max_queue: int = 100_000,
    ) -> None:
        self._ingestor = ingestor
        self._host = service_host
        self._interval = interval
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()

    def record(
        self,
        caller: Caller,
        *,
        action: str,
        details: dict[str, Any],
        ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        outcome: str = "success",
        reason: str | None = None,
        target: tuple[str, str] | None = None,
    ) -> None:
        now = datetime.now(UTC)
        target_kind, target_id = target or ("infrastructure", caller.infrastructure)
        ms = int(now.timestamp() * 1000)
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": str(uuid7(ms, uuid.uuid4().int)),
            "occurred_at": now.isoformat(timespec="milliseconds"),
            "infrastructure": caller.infrastructure,
            "actor": {"id": caller.user_id, "type": "user"},
            # Which key read: an auditor's first question after "who".
            "details": {**details, "key_id": caller.key_id} if caller.key_id else details,
            "action": action,
            "target": {"kind": target_kind, "id": target_id},
            "outcome": outcome,
            "source": {"service": "auditlog-query-api", "host": self._host, "version": "1"},
        }
        if reason:
            event["reason"] = reason[:4096]
        if ip and _is_ip(ip):
            event["actor"]["ip"] = ip
        if user_agent:
            event["actor"]["user_agent"] = user_agent[:4096]
        if request_id:
            event["request_id"] = request_id[:256]
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            # Recording must not take the read path down; a full queue means the store is stuck.
            log.error("read-audit queue full; flushing inline")
            self.flush()
            self._queue.put_nowait(event)

    def flush(self) -> int:
        with self._flush_lock:
            batch: list[Any] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                try:
                    self._ingestor.ingest(batch, received_at_ms=int(time.time() * 1000), service_record=True)
                except Exception:
                    log.exception("could not record %d audit-log reads; will retry", len(batch))
                    for item in batch:
                        self._queue.put_nowait(item)
                    return 0
            return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="read-audit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()
