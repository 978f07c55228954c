"""Reads of the audit log are themselves audited, before they are answered.

Every view, query, detail and export becomes an event (`audit_log.read` or
`audit_log.export`) whose actor is the caller and whose details hold the query.
Its target is the caller's infrastructure, so only holders of *Manage
Infrastructure and Users* see it. Recording goes through the service's ingestor
(the store in embedded mode; audit.raw, acknowledged by every in-sync replica,
in Kafka mode), and `record` returns only once the event is durable there: a
read answered a moment before a crash is on record. When it cannot be recorded
the read is refused (`ReadNotRecorded`), unless the service is configured to
answer anyway (`AUDITLOG_API_AUDIT_FAIL_OPEN`).

Concurrent reads share writes (group commit): the first caller to find no write
in progress writes every event queued so far, its own included; the others wait
for the write that carries theirs. So a burst of reads costs a few inserts, not
one each, and nothing depends on a background thread having been started.
"""

from __future__ import annotations

import ipaddress
import logging
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


class Ingestor(Protocol):
    """Takes decoded events, reports per event. Embedded: straight to the store; Kafka: to audit.raw."""

    def ingest(
        self,
        items: list[Any],
        *,
        received_at_ms: int,
        key_id: str = "",
        key_infrastructure: str | None = None,
        service_record: bool = False,
    ) -> Any: ...


class ReadNotRecorded(RuntimeError):
    """The record of a read could not be made durable: the read must not be answered."""


class _Ticket:
    __slots__ = ("error", "event", "settled")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.error: str | None = None
        self.settled = threading.Event()


class ReadAuditor:
    def __init__(
        self,
        ingestor: Ingestor,
        *,
        service_host: str = "",
        fail_open: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self._ingestor = ingestor
        self._host = service_host
        self._fail_open = fail_open
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._pending: list[_Ticket] = []
        self.not_recorded = 0
        """Reads whose record failed (answered only when failing open)."""

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
    ) -> str:
        """Record a read (or a task of the service's own) durably; returns the event's id. Raises
        `ReadNotRecorded` if that failed (unless failing open)."""
        actor: dict[str, Any] = {"id": caller.user_id, "type": "user"}
        if ip and _is_ip(ip):
            actor["ip"] = ip
        if user_agent:
            actor["user_agent"] = user_agent[:4096]
        return self._record(
            caller.infrastructure,
            actor,
            action=action,
            # Which key read: an auditor's first question after "who".
            details={**details, "key_id": caller.key_id} if caller.key_id else details,
            request_id=request_id,
            outcome=outcome,
            reason=reason,
            target=target,
        )

    def record_system(
        self, infrastructure: str, *, actor_id: str, action: str, details: dict[str, Any]
    ) -> str:
        """Record a task the service did by itself (a retention purge), never failing open: the
        task must not go on without its record."""
        return self._record(
            infrastructure, {"id": actor_id, "type": "system"}, action=action, details=details, strict=True
        )

    def _record(
        self,
        infrastructure: str,
        actor: dict[str, Any],
        *,
        action: str,
        details: dict[str, Any],
        request_id: str | None = None,
        outcome: str = "success",
        reason: str | None = None,
        target: tuple[str, str] | None = None,
        strict: bool = False,
    ) -> str:
        now = datetime.now(UTC)
        target_kind, target_id = target or ("infrastructure", infrastructure)
        ms = int(now.timestamp() * 1000)
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": str(uuid7(ms, uuid.uuid4().int)),
            "occurred_at": now.isoformat(timespec="milliseconds"),
            "infrastructure": infrastructure,
            "actor": actor,
            "details": details,
            "action": action,
            "target": {"kind": target_kind, "id": target_id},
            "outcome": outcome,
            "source": {"service": "auditlog-query-api", "host": self._host, "version": "1"},
        }
        if reason:
            event["reason"] = reason[:4096]
        if request_id:
            event["request_id"] = request_id[:256]
        self._commit(event, strict=strict)
        return str(event["event_id"])

    def _commit(self, event: dict[str, Any], *, strict: bool = False) -> None:
        ticket = _Ticket(event)
        with self._lock:
            self._pending.append(ticket)
        deadline = time.monotonic() + self._timeout_s
        while not ticket.settled.is_set():
            if self._writing.acquire(blocking=False):
                try:
                    with self._lock:
                        batch, self._pending = self._pending, []
                    if batch:
                        self._write(batch)
                finally:
                    self._writing.release()
            elif not ticket.settled.wait(0.005) and time.monotonic() > deadline:
                ticket.error = f"not written within {self._timeout_s:g} s"
                break
        if ticket.error is not None:
            self.not_recorded += 1
            if strict or not self._fail_open:
                raise ReadNotRecorded(ticket.error)
            log.error("a read of the audit log was answered without its record: %s", ticket.error)

    def _write(self, batch: list[_Ticket]) -> None:
        try:
            report = self._ingestor.ingest(
                [t.event for t in batch], received_at_ms=int(time.time() * 1000), service_record=True
            )
            outcome = report.to_dict()
            failed = {r["index"]: r["reason"] for r in outcome.get("rejected", [])}
            if outcome.get("pending"):
                # Kafka mode: not acknowledged in time. Which ones is not known: none counts.
                failed = {i: "not acknowledged by Kafka in time" for i in range(len(batch))}
        except Exception as exc:
            log.exception("could not record %d reads of the audit log", len(batch))
            failed = {i: f"the store did not take it: {type(exc).__name__}" for i in range(len(batch))}
        for index, ticket in enumerate(batch):
            ticket.error = failed.get(index)
            ticket.settled.set()
