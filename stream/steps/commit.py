"""Step 6, always the last: commit the batch's offsets, now that every step before
acknowledged it. `commit` is the edge's (the consumer is faust's); a partition a
rebalance took away meanwhile is not committed, and its new owner redelivers it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stream.messages import Batch


class Commit:
    def __init__(self, commit: Callable[[dict[Any, int]], None]) -> None:
        self._commit = commit

    def submit(self, batch: Batch) -> None:
        if batch.offsets:
            self._commit(batch.offsets)
