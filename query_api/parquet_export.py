"""An export as one Parquet file, written a row group at a time while the rows stream out.

The columns are the API's event shape, typed: times as UTC millisecond timestamps, the actor,
target, source and position as structs, related entities and changes as lists of structs.
`details` and the old and new value of a change are JSON text: they hold any JSON value,
which no one Parquet type can. A reader (DuckDB, pandas, Spark) needs no schema of ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from query_api.serialize import event_out

_TEXT = pa.string()
_TIME = pa.timestamp("ms", tz="UTC")
_REF = pa.struct([("kind", _TEXT), ("id", _TEXT), ("name", _TEXT)])

SCHEMA = pa.schema(
    [
        ("event_id", _TEXT),
        ("schema_version", pa.int32()),
        ("occurred_at", _TIME),
        ("received_at", _TIME),
        ("infrastructure", _TEXT),
        ("environment", _TEXT),
        (
            "actor",
            pa.struct(
                [(k, _TEXT) for k in ("id", "name", "type", "ip", "user_agent", "session_id")],
            ),
        ),
        ("action", _TEXT),
        ("target", _REF),
        ("related", pa.list_(_REF)),
        ("outcome", _TEXT),
        ("reason", _TEXT),
        ("changes", pa.list_(pa.struct([("field", _TEXT), ("old", _TEXT), ("new", _TEXT)]))),
        ("details", _TEXT),
        ("source", pa.struct([(k, _TEXT) for k in ("service", "host", "version")])),
        ("request_id", _TEXT),
        ("correlation_id", _TEXT),
        (
            "enrichment",
            pa.struct([("plan_application_ids", pa.list_(_TEXT)), ("application_team_id", _TEXT)]),
        ),
        ("provenance", pa.struct([("ingest_source", _TEXT), ("ingest_key_id", _TEXT)])),
        ("position", pa.struct([("log", _TEXT), ("index", pa.uint64())])),
    ]
)
MEDIA_TYPE = "application/vnd.apache.parquet"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the export's record: the API's event, typed for Parquet."""
    event = event_out(row)
    event["occurred_at"] = int(row["occurred_at_ms"])
    event["received_at"] = int(row["received_at_ms"])
    event["details"] = _json(event["details"])
    event["changes"] = [
        {"field": c.get("field"), "old": _json(c.get("old")), "new": _json(c.get("new"))}
        for c in event["changes"]
    ]
    return event


class _Sink:
    """What pyarrow writes to: bytes kept until the stream takes them."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class ParquetStream:
    """`add` a chunk of rows, get the bytes written so far; `finish` gives the footer."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(self._sink, SCHEMA, compression="zstd")

    def add(self, rows: Iterable[dict[str, Any]]) -> bytes:
        batch = pa.RecordBatch.from_pylist([parquet_row(r) for r in rows], schema=SCHEMA)
        if batch.num_rows:
            self._writer.write_batch(batch)
        return self._sink.take()

    def finish(self) -> bytes:
        self._writer.close()
        return self._sink.take()
