"""Step 1: Kafka messages -> decoded items -> the core -> a `Batch` of rows and refusals.

Pure: no Kafka client, no faust, no clock. Every output is a function of the messages
(their bytes, headers and broker coordinates) and the directory, so a replay of the
same messages gives byte-identical rows, SIEM events and dead letters (DESIGN 4.1).

Bad input is a value here, not an exception: an undecodable message, or an event
that fails the contract, becomes an `InvalidMessage` and the rest of the batch goes
on. A bad event inside an envelope is refused alone, with its own JSON as the payload.
Anything else (a bug in a step) raises: the worker must stop rather than dead-letter
good input. The reject guard, applied next, turns "everything is refused" into a stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from producers.contract.directory import Directories
from producers.envelope import (
    ENVELOPE_CONTENT_TYPE,
    EVENT_CONTENT_TYPE,
    MalformedMessage,
    content_type_of,
    decode_message,
    signed_by,
)
from stream.core import Rules, accept
from stream.messages import (
    Batch,
    Headers,
    InvalidMessage,
    Lineage,
    RawMessage,
    key_infrastructure,
    one_line,
    payload_json,
)
from stream.steps import Step
from stream.steps.guard import RejectGuard
from stream.transform import DEFAULT_MAX_FUTURE_S

# A message this large is refused before decoding: JSON parsing it would hold
# several times its size in memory, and no honest producer sends one (the SDK's
# envelopes stay far below). It is still kept, whole, in the DLQ.
DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024


def decode_batch(
    messages: Sequence[RawMessage],
    directories: Directories,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    signing_key: bytes = b"",
    wire: bool = True,
) -> Batch:
    """Decode, validate, normalize and enrich every event of `messages`, in order.
    `signing_key`: the secret the query service signs its messages with; only a message
    signed with it may carry the reserved `audit_log.*` actions."""
    batch = Batch(messages=len(messages))
    rules = Rules(directories=directories, max_future_s=max_future_s, wire=wire)

    def refuse(message: RawMessage, reason: str, code: Any) -> None:
        # Filed under the key's infrastructure only when it is not an envelope: an envelope's
        # key is its first event's, and in the API's Kafka mode one envelope may hold several
        # tenants' events. An unattributed letter is an operator's to read.
        envelope = content_type_of(message.headers) == ENVELOPE_CONTENT_TYPE
        batch.rejects.append(
            InvalidMessage(
                reason=one_line(reason),
                code=code,
                payload=message.value or b"",
                lineage=Lineage.of(message),
                infrastructure="" if envelope else key_infrastructure(message.key),
            )
        )
        batch.verdicts.append(False)

    for message in messages:
        value = message.value
        if value is None:
            refuse(message, "empty message: the record has no value", "empty")
            continue
        if len(value) > max_message_bytes:
            size = f"message of {len(value)} bytes exceeds the {max_message_bytes}-byte limit; not decoded"
            refuse(message, size, "too_large")
            continue
        try:
            items = decode_message(value, message.headers)
        except MalformedMessage as exc:
            refuse(message, exc.reason, exc.code)
            continue
        single = not _is_envelope(value, message.headers, items)
        accept(
            batch,
            items,
            Lineage.of(message),
            rules,
            service_record=_signature_check(signing_key, value, message.headers),
            payload=_whole(value) if single else _item_json,
            indexed=not single,
        )
    return batch


def _whole(value: bytes) -> Callable[[int, object], bytes]:
    return lambda _index, _item: value


def _item_json(_index: int, item: object) -> bytes:
    return payload_json(item)


def _signature_check(key: bytes, value: bytes, headers: Headers) -> Callable[[], bool]:
    """Checked once per message, and only when one of its events needs it."""
    verdict: list[bool] = []

    def check() -> bool:
        if not verdict:
            verdict.append(signed_by(key, value, headers))
        return verdict[0]

    return check


def _is_envelope(value: bytes, headers: Headers, items: list[object]) -> bool:
    # A single-event message decodes to one item that is the whole message; an
    # envelope of one event does not. Only unlabelled one-item messages need a look.
    if len(items) != 1:
        return True
    content_type = content_type_of(headers)
    if content_type in (EVENT_CONTENT_TYPE, ENVELOPE_CONTENT_TYPE):
        return content_type == ENVELOPE_CONTENT_TYPE
    try:
        whole = orjson.loads(value)
    except orjson.JSONDecodeError:
        return True
    return bool(whole != items[0])


class Decode:
    """Raw messages in, a judged batch out; the guard stops the worker before anything of
    a batch that trips it is stored or committed."""

    def __init__(
        self,
        directories: Callable[[], Directories],
        guard: RejectGuard,
        next_step: Step,
        *,
        max_message_bytes: int,
        max_future_s: float,
        signing_key: bytes,
    ) -> None:
        self._directories = directories
        self._guard = guard
        self._next = next_step
        self._max_message_bytes = max_message_bytes
        self._max_future_s = max_future_s
        self._signing_key = signing_key

    def submit_messages(self, messages: Sequence[RawMessage], offsets: dict[Any, int]) -> None:
        batch = decode_batch(
            messages,
            self._directories(),
            max_message_bytes=self._max_message_bytes,
            max_future_s=self._max_future_s,
            signing_key=self._signing_key,
        )
        batch.offsets = offsets
        self._guard.observe(batch.verdicts)
        self._next.submit(batch)
