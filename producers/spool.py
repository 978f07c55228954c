"""A bounded, append-only, on-disk queue of Kafka messages that could not be delivered yet.

The publisher writes here when the broker is unreachable, and re-sends from here,
strictly in order, once it is back. Records leave the spool only after Kafka
acknowledged them (acks=all), so a crash at any point loses nothing; it may
re-send records that were in fact delivered, which is harmless because every
event carries its `event_id` and the store dedupes by it.

On disk, in the spool directory:

``segment-<n>.ndjson``
    Append-only segment files, one record per line::

        {"v":1,"topic":"audit.raw","content_type":"...","events":37,"message":<value>}

    where ``<value>`` is the Kafka message value itself (an envelope or one
    event, compact JSON), embedded as-is so it is re-sent byte for byte. A new
    segment starts when the current one reaches the segment size; a segment file
    is deleted once every record in it was delivered.
``ackpos.json``
    ``{"segment": n, "index": i}``: the first record not yet delivered. It is
    rewritten atomically on `flush`; records delivered since the last flush are
    re-sent after a crash (duplicates, never loss).
``rejected.ndjson``
    Records Kafka refused for good (e.g. a message too large for the broker),
    with the reason: kept for an operator instead of being dropped.
``corrupt.ndjson``
    Lines that could not be parsed when the spool was reopened (for example a
    disk error). A torn last line after a crash is truncated instead: it was
    never reported as spooled by a `flush`.
``.lock``
    Held with ``flock`` while a process uses the directory: two publishers
    sharing one spool would re-send each other's records out of order.

Not thread-safe: `producers.publisher.Publisher` serializes access.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import orjson

log = logging.getLogger(__name__)

SPOOL_FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
# Bytes a record line adds around the message value (header fields, topic name).
RECORD_OVERHEAD = 256

_SEGMENT_PREFIX = "segment-"
_SEGMENT_SUFFIX = ".ndjson"
_MESSAGE_MARK = b',"message":'


class SpoolError(Exception):
    """The spool cannot take or give back records."""


class SpoolFull(SpoolError):
    """The spool reached its size bound; the events that did not fit were not accepted."""


class SpoolLocked(SpoolError):
    """Another process (or another publisher in this process) uses the spool directory."""


@dataclass(frozen=True)
class SpoolRecord:
    """One spooled Kafka message."""

    topic: str
    content_type: str
    events: int
    value: bytes


@dataclass(frozen=True)
class _Entry:
    segment: int
    index: int
    offset: int
    length: int
    events: int


def _segment_name(number: int) -> str:
    return f"{_SEGMENT_PREFIX}{number:012d}{_SEGMENT_SUFFIX}"


def _segment_number(path: Path) -> int | None:
    name = path.name
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def encode_record(topic: str, value: bytes, events: int, content_type: str) -> bytes:
    """One spool line. `value` must be a single line of JSON."""
    header = orjson.dumps(
        {"v": SPOOL_FORMAT_VERSION, "topic": topic, "content_type": content_type, "events": events}
    )
    return header[:-1] + _MESSAGE_MARK + value + b"}\n"


def decode_record(line: bytes) -> SpoolRecord:
    """Parse one spool line; ValueError if it is not a complete, valid record."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a JSON line: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != SPOOL_FORMAT_VERSION:
        raise ValueError("not a spool record of format version 1")
    topic, content_type, events = doc.get("topic"), doc.get("content_type"), doc.get("events")
    if not isinstance(topic, str) or not isinstance(content_type, str) or not isinstance(events, int):
        raise ValueError("spool record lacks topic, content_type or events")
    # A quote inside a JSON string is always escaped, so the first bare
    # `,"message":` is the field separator written by encode_record.
    start = line.find(_MESSAGE_MARK)
    if start < 0 or "message" not in doc:
        raise ValueError("spool record lacks its message")
    value = line[start + len(_MESSAGE_MARK) :].rstrip(b"\n")[:-1]
    return SpoolRecord(topic=topic, content_type=content_type, events=events, value=value)


class Spool:
    """An ordered, size-bounded, crash-safe queue of Kafka messages on disk."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fh = self._acquire_lock()
        self._entries: deque[_Entry] = deque()
        self._sizes: dict[int, int] = {}
        self._pending_events = 0
        self._active = 0
        self._next_index = 0
        self._fh: BinaryIO | None = None
        self._dirty = False
        self._ack_dirty = False
        self._dir_dirty = False
        self._closed = False
        try:
            self._recover()
        except BaseException:
            self._release_lock()
            raise

    # ------------------------------------------------------------- state

    @property
    def used_bytes(self) -> int:
        """Bytes of the live segment files (delivered records count until their segment goes)."""
        return sum(self._sizes.values())

    @property
    def pending_records(self) -> int:
        return len(self._entries)

    @property
    def pending_events(self) -> int:
        return self._pending_events

    def free_bytes(self) -> int:
        return max(0, self.max_bytes - self.used_bytes)

    def full_error(self, needed: int) -> SpoolFull:
        return SpoolFull(
            f"the audit spool {self.directory} is full: {self.used_bytes:,} of {self.max_bytes:,} bytes "
            f"hold {self._pending_events:,} undelivered events and {needed:,} more bytes do not fit. "
            "The new events were NOT accepted. Restore the connection to Kafka so the spool drains, "
            "or raise AUDITLOG_KAFKA_SPOOL_MAX_BYTES."
        )

    # ------------------------------------------------------------ writing

    def append(self, topic: str, value: bytes, events: int, content_type: str) -> None:
        """Add one message at the end. Raises SpoolFull if it does not fit."""
        self._check_open()
        if b"\n" in value:
            # NDJSON needs one line per record; re-encoding compacts any JSON.
            value = orjson.dumps(orjson.loads(value))
        line = encode_record(topic, value, events, content_type)
        if self.used_bytes + len(line) > self.max_bytes:
            raise self.full_error(len(line))
        fh = self._writer(len(line))
        offset = self._sizes[self._active]
        try:
            fh.write(line)
        except OSError as exc:
            raise SpoolError(f"cannot write to the audit spool {self.directory}: {exc}") from exc
        self._sizes[self._active] = offset + len(line)
        self._entries.append(_Entry(self._active, self._next_index, offset, len(line), events))
        self._next_index += 1
        self._pending_events += events
        self._dirty = True

    def _writer(self, incoming: int) -> BinaryIO:
        size = self._sizes.get(self._active, 0)
        if size > 0 and size + incoming > self.segment_bytes:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
            self._active += 1
            self._next_index = 0
        if self._fh is None:
            path = self.directory / _segment_name(self._active)
            self._fh = open(path, "ab")  # noqa: SIM115 -- kept open across appends
            self._sizes[self._active] = path.stat().st_size
            self._dir_dirty = True
        return self._fh

    def flush(self) -> None:
        """Make every appended record and every acknowledgement durable (fsync)."""
        if self._closed:
            return
        if self._fh is not None and self._dirty:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._dirty = False
        if self._ack_dirty:
            self._write_ackpos()
            self._ack_dirty = False
        if self._dir_dirty:
            self._fsync_dir()
            self._dir_dirty = False

    def reject(self, record: SpoolRecord, reason: str) -> None:
        """Keep a record Kafka refused for good in rejected.ndjson, with the reason."""
        line = orjson.dumps(
            {
                "rejected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "reason": reason,
                "topic": record.topic,
                "content_type": record.content_type,
                "events": record.events,
            }
        )
        value = record.value if b"\n" not in record.value else orjson.dumps(orjson.loads(record.value))
        with open(self.directory / "rejected.ndjson", "ab") as fh:
            fh.write(line[:-1] + _MESSAGE_MARK + value + b"}\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------ reading

    def pending(self, limit: int | None = None) -> Generator[SpoolRecord, None, None]:
        """Undelivered records from the oldest, read from disk lazily."""
        self._check_open()
        if self._fh is not None and self._dirty:
            self._fh.flush()
        readers: dict[int, BinaryIO] = {}
        try:
            # Callers consume this while holding the publisher's lock, so the
            # deque cannot change underneath the iteration.
            for entry in itertools.islice(self._entries, limit):
                fh = readers.get(entry.segment)
                if fh is None:
                    fh = open(self.directory / _segment_name(entry.segment), "rb")  # noqa: SIM115
                    readers[entry.segment] = fh
                fh.seek(entry.offset)
                line = fh.read(entry.length)
                try:
                    yield decode_record(line)
                except ValueError as exc:
                    raise SpoolError(
                        f"spool record {entry.index} of {_segment_name(entry.segment)} is unreadable: {exc}"
                    ) from None
        finally:
            for fh in readers.values():
                fh.close()

    def ack(self, count: int) -> None:
        """The `count` oldest records were delivered: forget them."""
        self._check_open()
        if count > len(self._entries):
            raise ValueError(f"cannot acknowledge {count} records, only {len(self._entries)} are pending")
        for _ in range(count):
            entry = self._entries.popleft()
            self._pending_events -= entry.events
        self._ack_dirty = count > 0 or self._ack_dirty
        head_segment = self._entries[0].segment if self._entries else None
        for number in sorted(self._sizes):
            if number == self._active or (head_segment is not None and number >= head_segment):
                continue
            self._delete_segment(number)
        if not self._entries and self._sizes.get(self._active, 0) > 0:
            # Everything was delivered: reclaim the active segment too.
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self._delete_segment(self._active)
            self._active += 1
            self._next_index = 0
            self._dirty = False

    def _delete_segment(self, number: int) -> None:
        self._sizes.pop(number, None)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _segment_name(number)).unlink()
        self._dir_dirty = True

    # ----------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self._closed = True
            self._release_lock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"the spool {self.directory} is closed")

    def _acquire_lock(self) -> BinaryIO:
        fh = open(self.directory / ".lock", "ab")  # noqa: SIM115 -- held for the spool's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SpoolLocked(
                f"the spool directory {self.directory} is in use by another publisher; "
                "give each publisher its own AUDITLOG_KAFKA_SPOOL_DIR"
            ) from None
        return fh

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
        self._lock_fh.close()

    def _write_ackpos(self) -> None:
        if self._entries:
            head = self._entries[0]
            position = {"segment": head.segment, "index": head.index}
        else:
            position = {"segment": self._active, "index": self._next_index}
        tmp = self.directory / "ackpos.json.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(position))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / "ackpos.json")
        self._dir_dirty = True

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ recovery

    def _read_ackpos(self) -> tuple[int, int]:
        path = self.directory / "ackpos.json"
        if not path.is_file():
            return (-1, 0)
        try:
            doc = orjson.loads(path.read_bytes())
            return (int(doc["segment"]), int(doc["index"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("spool %s: ackpos.json is unreadable; re-sending every spooled record", self.directory)
            return (-1, 0)

    def _recover(self) -> None:
        ack_segment, ack_index = self._read_ackpos()
        numbers = sorted(n for p in self.directory.iterdir() if (n := _segment_number(p)) is not None)
        lines_in: dict[int, int] = {}
        for number in numbers:
            path = self.directory / _segment_name(number)
            if number < ack_segment:
                path.unlink()
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning(
                    "spool %s: dropping a torn last record (%d bytes) of %s left by a crash before a flush",
                    self.directory,
                    len(data) - cut,
                    path.name,
                )
                with open(path, "r+b") as fh:
                    fh.truncate(cut)
                data = data[:cut]
            lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
            offset = 0
            for index, line in enumerate(lines):
                if not (number == ack_segment and index < ack_index):
                    try:
                        record = decode_record(line)
                    except ValueError as exc:
                        self._quarantine(path, index, line, str(exc))
                    else:
                        self._entries.append(_Entry(number, index, offset, len(line), record.events))
                        self._pending_events += record.events
                offset += len(line)
            self._sizes[number] = len(data)
            lines_in[number] = len(lines)
        if self._entries:
            # Keep appending to the newest segment, after its last line.
            self._active = max(self._sizes)
            self._next_index = lines_in[self._active]
            log.warning(
                "spool %s holds %d undelivered events in %d messages from an earlier run; "
                "they are sent before any new event",
                self.directory,
                self._pending_events,
                len(self._entries),
            )
            return
        for number in list(self._sizes):
            self._delete_segment(number)
        # Segment numbers only grow: a new segment must sort after the one
        # ackpos.json points into, or its records would be taken as delivered.
        self._active = max([ack_segment, *numbers], default=-1) + 1
        self._next_index = 0
        self._ack_dirty = True

    def _quarantine(self, path: Path, index: int, line: bytes, problem: str) -> None:
        log.error(
            "spool %s: record %d of %s is unreadable (%s); moved to corrupt.ndjson",
            self.directory,
            index,
            path.name,
            problem,
        )
        with open(self.directory / "corrupt.ndjson", "ab") as fh:
            fh.write(line if line.endswith(b"\n") else line + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
