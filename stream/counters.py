"""The worker's accounting, kept by the chain's tally step before the commit."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.messages import Batch
from stream.steps import Step


@dataclass
class Counters:
    """Since this process started. Invariant: events_in == rows_stored + duplicates + dead_lettered."""

    batches: int = 0
    messages_in: int = 0
    events_in: int = 0
    rows_stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    conflicts: int = 0
    produced: int = 0
    sink_retries: int = 0
    commits_refused: int = 0
    first_batch_at: float | None = None
    last_batch_at: float | None = None

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.messages_in += batch.messages
        self.events_in += batch.received
        self.rows_stored += batch.inserted
        self.duplicates += batch.duplicates
        self.dead_lettered += len(batch.rejects)
        self.conflicts += batch.conflicts
        self.produced += batch.produced

    @property
    def balanced(self) -> bool:
        return self.events_in == self.rows_stored + self.duplicates + self.dead_lettered

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced}

    def write(self, path: Path | None) -> None:
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **self.to_dict()}))
        tmp.replace(path)


class Tally:
    """Counts a batch once every output has it, before its commit."""

    def __init__(self, counters: Counters, next_step: Step, *, on_batch: Callable[[Batch], None]) -> None:
        self._counters = counters
        self._next = next_step
        self._on_batch = on_batch

    def submit(self, batch: Batch) -> None:
        self._counters.add(batch)
        self._on_batch(batch)
        self._next.submit(batch)
