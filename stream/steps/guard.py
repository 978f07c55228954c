"""Step 2: the reject guard. Stops the worker instead of draining the topic into the DLQ."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class TooManyRejects(RuntimeError):
    """Rejects crossed a limit: most likely bad code or a broken producer, not bad luck."""


class RejectGuard:
    """Stops the worker instead of draining the topic into the DLQ.

    Trips when, over the last `window` events (and once at least `min_sample`
    were seen), the share of rejects exceeds `max_ratio`, or when more than
    `max_consecutive` events in a row were rejected. The state covers the
    events observed so far; a tripped batch must not be committed.
    """

    def __init__(
        self,
        max_ratio: float = 0.5,
        max_consecutive: int = 1000,
        min_sample: int = 200,
        *,
        window: int = 10_000,
    ) -> None:
        if not 0.0 <= max_ratio <= 1.0:
            raise ValueError("max_ratio must be between 0 and 1")
        if max_consecutive < 1 or min_sample < 1 or window < min_sample:
            raise ValueError("max_consecutive and min_sample must be >= 1, and window >= min_sample")
        self.max_ratio = max_ratio
        self.max_consecutive = max_consecutive
        self.min_sample = min_sample
        self._window: deque[bool] = deque(maxlen=window)
        self._rejects_in_window = 0
        self._run = 0

    @property
    def consecutive_rejects(self) -> int:
        return self._run

    @property
    def reject_ratio(self) -> float:
        return self._rejects_in_window / len(self._window) if self._window else 0.0

    def observe(self, verdicts: Sequence[bool]) -> None:
        """Account for one batch's verdicts (True = accepted); raise `TooManyRejects` past a limit."""
        window = self._window
        longest = self._run
        for accepted in verdicts:
            if len(window) == window.maxlen and not window[0]:
                self._rejects_in_window -= 1
            window.append(accepted)
            if accepted:
                self._run = 0
            else:
                self._rejects_in_window += 1
                self._run += 1
                longest = max(longest, self._run)
        if longest > self.max_consecutive:
            raise TooManyRejects(
                f"{longest} consecutive events rejected (limit {self.max_consecutive}): "
                "stopping instead of dead-lettering the topic"
            )
        if len(window) >= self.min_sample and self.reject_ratio > self.max_ratio:
            raise TooManyRejects(
                f"{self._rejects_in_window} of the last {len(window)} events rejected "
                f"({self.reject_ratio:.0%} > {self.max_ratio:.0%}): "
                "stopping instead of dead-lettering the topic"
            )
