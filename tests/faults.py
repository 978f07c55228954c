"""Fault injection for the worker's fault tests: `python -m tests.faults worker ...` runs
`auditlog worker ...` with these hooks, which production code knows nothing of.

- AUDITLOG_TEST_FAULT_INSERT_AFTER / _INSERT_FAILURES: after that many successful inserts
  into audit_events, the next ones raise `StoreError`, as a lost ClickHouse connection or
  a rejected part would. With a small insert chunk size this fails a batch half way
  through: some chunks stored, the rest not.
- AUDITLOG_TEST_FAULT_COMMIT_DELAY_S: pause this long between a stored batch and its
  commit, to widen the window a kill -9 must hit for redelivery and dedupe to be exercised.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from storage.engine import Engine, Params, StoreError

log = logging.getLogger("auditlog.faults")


class FaultyEngine:
    """The store's engine, refusing `failures` inserts into audit_events after `after` went in."""

    def __init__(self, inner: Engine, *, failures: int, after: int = 0) -> None:
        self._inner = inner
        self._failures = failures
        self._after = after
        self.name = inner.name
        self.injected = 0

    def query(self, sql: str, *, params: Params | None = None) -> list[dict[str, Any]]:
        return self._inner.query(sql, params=params)

    def command(self, sql: str, *, params: Params | None = None) -> None:
        self._inner.command(sql, params=params)

    def command_aside(self, sql: str, *, params: Params | None = None) -> None:
        self._inner.command_aside(sql, params=params)

    def insert_json(self, table: str, *, columns: Sequence[str], data: bytes) -> None:
        if table.endswith(".audit_events"):
            if self._after > 0:
                self._after -= 1
            elif self._failures > 0:
                self._failures -= 1
                self.injected += 1
                raise StoreError("injected fault: insert into audit_events refused (AUDITLOG_TEST_FAULT_*)")
        self._inner.insert_json(table, columns=columns, data=data)

    def stream(self, sql: str, *, params: Params | None = None) -> Any:
        return self._inner.stream(sql, params=params)

    def query_binary(self, sql: str, *, params: Params | None = None) -> bytes:
        return self._inner.query_binary(sql, params=params)

    def query_raw(self, sql: str, *, params: Params | None = None, fmt: str) -> bytes:
        return self._inner.query_raw(sql, params=params, fmt=fmt)

    def insert_binary(self, table: str, *, columns: Sequence[str], data: bytes) -> None:
        self._inner.insert_binary(table, columns=columns, data=data)

    def close(self) -> None:
        self._inner.close()


def install() -> None:
    failures = int(os.environ.get("AUDITLOG_TEST_FAULT_INSERT_FAILURES", "0"))
    after = int(os.environ.get("AUDITLOG_TEST_FAULT_INSERT_AFTER", "0"))
    delay = float(os.environ.get("AUDITLOG_TEST_FAULT_COMMIT_DELAY_S", "0"))
    if failures:
        from storage.store import Store, StoreSettings

        opened = Store.open

        def open_faulty(settings: StoreSettings | None = None) -> Store:
            store = opened(settings)
            log.warning("FAULT INJECTION: %d inserts into audit_events will fail after %d", failures, after)
            return Store(
                FaultyEngine(store.engine, failures=failures, after=after),
                database=store.database,
                insert_chunk_rows=(settings or StoreSettings()).insert_chunk_rows,
            )

        Store.open = staticmethod(open_faulty)  # type: ignore[method-assign]
    if delay:
        from stream.steps.commit import Commit

        submit = Commit.submit

        def delayed(self: Commit, batch: Any) -> None:
            time.sleep(delay)
            submit(self, batch)

        Commit.submit = delayed  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from auditlog.cli import main

    sys.exit(main(sys.argv[1:]))
