"""The one core: decoded items in, stored rows and refusals out, for every ingest path.

Kafka (`stream.steps.decode`), HTTP, files and the demo (`stream.batch_ingest`) all
hand their items here, so an event is judged by the same rules, in the same order,
whichever way it came: the contract, the clock, the key's infrastructure, the
reserved actions, the served infrastructures; then normalized and enriched. Pure:
no I/O and no clock, so a replay gives identical rows and refusals.

Validation, normalization and enrichment run in one pass per event rather than one
step each over the batch: the event is touched once while it is hot, and a second
loop over 20,000 events is pure interpreter overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from producers.contract.directory import Directories
from producers.contract.event import InvalidEvent, parse_event
from stream.messages import Batch, InvalidMessage, Lineage, Origin, claimed, one_line
from stream.transform import (
    DEFAULT_MAX_FUTURE_S,
    RESERVED_ACTION_PREFIX,
    check_key_infrastructure,
    check_not_in_future,
    check_reserved_action,
    directory_for,
    enrich,
    normalize,
    wire_event,
)


@dataclass(frozen=True, slots=True)
class Rules:
    """What an event is judged against. `key_infrastructure`: the only infrastructure the
    credential may write (None: not posted with a key). `wire`: also build the event's
    SIEM shape (the worker's `audit.events.v1`)."""

    directories: Directories
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    key_infrastructure: str | None = None
    wire: bool = False


def accept(
    batch: Batch,
    items: Sequence[object],
    lineage: Lineage,
    rules: Rules,
    *,
    service_record: Callable[[], bool],
    payload: Callable[[int, object], bytes],
    indexed: bool = True,
) -> None:
    """Judge each of `items` into `batch`. `service_record()`: whether these items are the
    query service's own record of reads (asked only when an event claims a reserved action).
    `payload(index, item)`: what a refusal keeps. `indexed`: the items are a batch or an
    envelope, so a refusal names its position."""
    for index, item in enumerate(items):
        try:
            event = normalize(parse_event(item))
            check_not_in_future(event, lineage, max_future_s=rules.max_future_s)
            check_key_infrastructure(event, rules.key_infrastructure)
            if event.action.startswith(RESERVED_ACTION_PREFIX):
                check_reserved_action(event, service_record=service_record())
            directory = directory_for(event, rules.directories)
        except InvalidEvent as exc:
            batch.rejects.append(
                InvalidMessage(
                    reason=one_line(exc.reason),
                    code=exc.code,
                    payload=payload(index, item),
                    lineage=lineage,
                    index=index if indexed else None,
                    infrastructure=rules.key_infrastructure or claimed(item, "infrastructure"),
                    event_id=claimed(item, "event_id"),
                    errors=tuple(exc.errors),
                )
            )
            batch.verdicts.append(False)
            continue
        row = enrich(event, directory, lineage)
        batch.rows.append(row)
        if rules.wire:
            batch.events.append(wire_event(event, row, lineage))
        batch.origins.append(Origin(lineage, index if indexed else None, item))
        batch.verdicts.append(True)
