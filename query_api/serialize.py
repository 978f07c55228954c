"""Stored rows back into the API's event shape (the contract's nesting, plus enrichment)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from producers.contract.event import rfc3339_ms


def to_ms(ts: datetime | None) -> int | None:
    """A query parameter's time as epoch milliseconds; one without a zone is UTC."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


def _none_if_empty(value: str) -> str | None:
    return value or None


def summary_out(row: dict[str, Any]) -> dict[str, Any]:
    """A listing's row (query_api.models.EventSummary), from `storage.reader.SUMMARY_COLUMNS`."""
    return {
        "event_id": row["event_id"],
        "occurred_at": rfc3339_ms(int(row["occurred_at_ms"])),
        "infrastructure": row["infrastructure"],
        "environment": _none_if_empty(row["environment"]),
        "actor": {
            "id": row["actor_id"],
            "name": _none_if_empty(row["actor_name"]),
            "type": row["actor_type"],
        },
        "action": row["action"],
        "target": {
            "kind": row["target_kind"],
            "id": row["target_id"],
            "name": _none_if_empty(row["target_name"]),
        },
        "outcome": row["outcome"],
        "reason": _none_if_empty(row["reason"]),
    }


def event_out(row: dict[str, Any]) -> dict[str, Any]:
    """An event whole (query_api.models.Event): its summary and everything else."""
    summary = summary_out(row)
    return {
        "event_id": summary["event_id"],
        "schema_version": row["schema_version"],
        "occurred_at": summary["occurred_at"],
        "received_at": rfc3339_ms(int(row["received_at_ms"])),
        "infrastructure": summary["infrastructure"],
        "environment": summary["environment"],
        "actor": {
            **summary["actor"],
            "ip": _none_if_empty(row["actor_ip"]),
            "user_agent": _none_if_empty(row["actor_user_agent"]),
            "session_id": _none_if_empty(row["actor_session_id"]),
        },
        "action": summary["action"],
        "target": summary["target"],
        "related": [
            {"kind": k, "id": i, "name": n or None}
            for k, i, n in zip(row["related_kinds"], row["related_ids"], row["related_names"], strict=True)
        ],
        "outcome": summary["outcome"],
        "reason": summary["reason"],
        "changes": orjson.loads(row["changes"]) if row["changes"] else [],
        "details": orjson.loads(row["details"]) if row["details"] else {},
        "source": {
            "service": row["source_service"],
            "host": row["source_host"],
            "version": row["source_version"],
        },
        "request_id": _none_if_empty(row["request_id"]),
        "correlation_id": _none_if_empty(row["correlation_id"]),
        "enrichment": {
            "plan_application_ids": row["plan_app_ids"],
            "application_team_id": _none_if_empty(row["app_team_id"]),
        },
        # How the row entered: api, file, demo, kafka, or read-audit (the query service's own
        # record of reads), and the id of the API key it was posted with.
        "provenance": {
            "ingest_source": row["ingest_source"],
            "ingest_key_id": _none_if_empty(row.get("ingest_key_id", "")),
        },
        # Its leaf in the Merkle tree (GET /v1/events/{id}/proof); none for a row stored
        # before the tree existed.
        "position": {"log": row["log"], "index": int(row["leaf_index"])} if row.get("log") else None,
    }
