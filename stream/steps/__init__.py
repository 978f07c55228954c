"""The worker's chain, one step a module, composed in `stream.pipeline`.

Each step does its part of a `Batch` and submits it to the next; the last one commits.
A step that talks to a service retries that call alone (`retry.Retry`), so a failure
downstream never repeats the work upstream, and nothing is committed until every
step has acknowledged the batch.
"""

from __future__ import annotations

from typing import Protocol

from stream.messages import Batch


class Step(Protocol):
    def submit(self, batch: Batch) -> None: ...


class Done:
    """The end of a chain without a commit (HTTP, files, the demo): nothing to acknowledge."""

    def submit(self, batch: Batch) -> None:
        return None
