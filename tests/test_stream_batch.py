"""The pure batch step of the worker: decode -> validate -> normalize -> enrich, and the reject guard.

No Kafka here: `RawMessage`s are built by hand with the coordinates a broker
would give. The golden test feeds the golden events in one envelope at the
lineage the golden rows were made with, so the worker's path must produce the
very bytes of tests/golden/rows_out.ndjson.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from producers.contract.directory import Directories, load_directory
from producers.envelope import (
    ENVELOPE_CONTENT_TYPE,
    EVENT_CONTENT_TYPE,
    SIGNATURE_HEADER,
    encode_envelope,
    signature,
)
from storage.store import Store
from stream.faust_edge import next_offsets, slices
from stream.messages import Batch, RawMessage
from stream.ocsf import to_ocsf
from stream.steps.decode import decode_batch
from stream.steps.guard import RejectGuard, TooManyRejects
from stream.steps.insert import Insert
from stream.steps.retry import once

GOLDEN = Path(__file__).parent / "golden"
TS = 1_792_000_000_123


@pytest.fixture(scope="module")
def directory() -> Directories:
    """The golden installation: one infrastructure, acme."""
    return Directories([load_directory(GOLDEN / "directory.yaml")])


def golden_events() -> list[dict[str, Any]]:
    lines = (GOLDEN / "events_in.ndjson").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines if line.strip()]


def msg(
    value: bytes | None,
    *,
    offset: int = 0,
    partition: int = 0,
    content_type: str | None = None,
    topic: str = "audit.raw",
    ts: int = TS,
) -> RawMessage:
    headers = (("content-type", content_type.encode()),) if content_type else ()
    return RawMessage(
        value=value,
        headers=headers,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=ts,
        key=b"application/app-1",
    )


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=i + 1, version=4)),
        "occurred_at": "2026-10-01T08:00:00.000Z",
        "infrastructure": "acme",
        "actor": {"id": "u-priya"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-billing"},
        "details": {"sequence": i},
    }
    base.update(changes)
    return base


def dump(outcome: Batch) -> bytes:
    return orjson.dumps(
        {
            "rows": outcome.rows,
            "events": outcome.events,
            "dead": [
                {"reason": r.reason, "payload": r.payload.decode(errors="replace"), "index": r.index}
                for r in outcome.rejects
            ],
            "verdicts": outcome.verdicts,
        }
    )


# ---------------------------------------------------------------- golden and replay


def test_envelope_of_golden_events_gives_the_golden_rows(directory: Directories) -> None:
    # The golden rows were made with lineage audit.raw / partition 2 / offset 41 / broker ts TS.
    value = encode_envelope(golden_events())
    message = msg(value, partition=2, offset=41, content_type=ENVELOPE_CONTENT_TYPE)
    outcome = decode_batch([message], directory)
    out = b"".join(orjson.dumps(r) + b"\n" for r in outcome.rows)
    assert out == (GOLDEN / "rows_out.ndjson").read_bytes()
    assert outcome.rejects == []
    assert outcome.messages == 1
    assert outcome.received == len(golden_events())


def test_single_event_messages_and_envelopes_give_the_same_rows_but_their_own_lineage(
    directory: Directories,
) -> None:
    events = golden_events()
    singles = [msg(orjson.dumps(e), offset=100 + i) for i, e in enumerate(events)]
    envelope = msg(encode_envelope(events), offset=7)
    a = decode_batch(singles, directory).rows
    b = decode_batch([envelope], directory).rows
    lineage = {"kafka_offset"}
    assert [{k: v for k, v in r.items() if k not in lineage} for r in a] == [
        {k: v for k, v in r.items() if k not in lineage} for r in b
    ]
    assert [r["kafka_offset"] for r in a] == [100 + i for i in range(len(events))]
    assert {r["kafka_offset"] for r in b} == {7}


def test_replay_gives_identical_output(directory: Directories) -> None:
    events = golden_events()
    messages = [
        msg(encode_envelope(events[:5]), offset=1),
        msg(b"not json at all", offset=2),
        msg(orjson.dumps(events[5]), offset=3),
        msg(encode_envelope([*events[6:], {"schema_version": 1}]), offset=4),
    ]
    first, second = decode_batch(messages, directory), decode_batch(list(messages), directory)
    assert dump(first) == dump(second)
    # A directory rebuilt from its own snapshots (as the worker does from audit.directory) enriches the same.
    rebuilt = Directories.assemble(directory.snapshots())
    assert dump(decode_batch(messages, rebuilt)) == dump(first)


def test_received_at_is_the_broker_timestamp_not_the_clock(directory: Directories) -> None:
    earlier = event(occurred_at="2023-11-14T22:00:00Z")
    outcome = decode_batch([msg(orjson.dumps(earlier), ts=1_700_000_000_007)], directory)
    assert outcome.rows[0]["received_at"] == "2023-11-14 22:13:20.007"
    assert outcome.events[0]["received_at"] == "2023-11-14T22:13:20.007Z"


def test_normalized_event_is_the_api_shape_with_enrichment_and_lineage(directory: Directories) -> None:
    raw = event(
        action="App.Deploy",
        actor={"id": "u-andrea", "name": "a"},
        related=[{"kind": "environment", "id": "env-prod"}, {"kind": "environment", "id": "env-prod"}],
    )
    outcome = decode_batch([msg(orjson.dumps(raw), partition=1, offset=9)], directory)
    wire = outcome.events[0]
    assert wire["action"] == "application.deploy"
    assert wire["actor"]["name"] == "Andrea Fleet"
    assert wire["target"] == {"kind": "application", "id": "app-billing", "name": "Billing Portal"}
    assert wire["related"] == [{"kind": "environment", "id": "env-prod", "name": "Production"}]
    assert wire["enrichment"] == {"plan_application_ids": [], "application_team_id": "t-payments"}
    assert wire["lineage"] == {"topic": "audit.raw", "partition": 1, "offset": 9}
    assert wire["occurred_at"] == "2026-10-01T08:00:00.000Z"
    assert wire["details"] == {"sequence": 0}


# ---------------------------------------------------------------- bad input


def test_one_bad_event_in_an_envelope_is_dead_lettered_alone(directory: Directories) -> None:
    bad = event(2, actor={"id": 42})
    value = encode_envelope([event(1), bad, event(3)])
    outcome = decode_batch([msg(value, offset=5, content_type=ENVELOPE_CONTENT_TYPE)], directory)
    assert [r["event_id"] for r in outcome.rows] == [event(1)["event_id"], event(3)["event_id"]]
    assert outcome.verdicts == [True, False, True]
    [dead] = outcome.rejects
    assert dead.index == 1
    assert orjson.loads(dead.payload) == bad
    assert "actor.id" in dead.reason
    assert dead.lineage.offset == 5
    letter = dead.dead_letter()
    assert (letter.topic, letter.partition, letter.offset, letter.source) == ("audit.raw", 0, 5, "kafka")


def test_envelope_of_one_bad_event_keeps_the_event_not_the_envelope(directory: Directories) -> None:
    bad = event(1, schema_version=9)
    value = encode_envelope([bad])
    [dead] = decode_batch([msg(value)], directory).rejects
    assert orjson.loads(dead.payload) == bad
    assert dead.index == 0


def test_a_bad_single_event_message_keeps_its_original_bytes(directory: Directories) -> None:
    value = b'{"schema_version": 1,   "event_id": "nope"}'
    for content_type in (None, EVENT_CONTENT_TYPE):
        [dead] = decode_batch([msg(value, content_type=content_type)], directory).rejects
        assert dead.payload == value
        assert dead.index is None


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        pytest.param(b"\x00\xff\xfe garbage \x81", "not JSON", id="garbage-bytes"),
        pytest.param(orjson.dumps(event())[:-17], "truncated", id="truncated-json"),
        pytest.param(encode_envelope([event()])[:-3], "truncated", id="truncated-envelope"),
        pytest.param(b'{"hello": "world"}', "schema_version is missing", id="wrong-schema"),
        pytest.param(b"[1, 2, 3]", "must be a JSON object", id="json-array"),
        pytest.param(
            orjson.dumps(event(schema_version=2)), "unsupported schema_version 2", id="future-version"
        ),
        pytest.param(b'{"envelope": 7, "events": [{}]}', "unknown envelope version 7", id="future-envelope"),
        pytest.param(b"", "no value", id="empty-bytes"),
        pytest.param(None, "no value", id="null-value"),
        pytest.param(b"x" * TEN_MB, "exceeds", id="10MB-garbage"),
        pytest.param(orjson.dumps(event(details={"blob": "y" * TEN_MB})), "exceeds", id="10MB-json-event"),
    ],
)
def test_bad_messages_become_dead_letters_with_a_reason(
    directory: Directories, value: bytes | None, reason_part: str
) -> None:
    good = msg(orjson.dumps(event(1)), offset=1)
    bad = msg(value, offset=2)
    outcome = decode_batch([good, bad, msg(orjson.dumps(event(3)), offset=3)], directory)
    assert len(outcome.rows) == 2
    [dead] = outcome.rejects
    assert reason_part in dead.reason
    assert dead.payload == (value or b"")
    assert dead.lineage.offset == 2
    assert "\n" not in dead.reason and len(dead.reason) <= 1000
    assert outcome.verdicts == [True, False, True]
    assert outcome.received == 3


def test_a_large_event_under_the_message_limit_is_judged_by_the_contract(directory: Directories) -> None:
    value = orjson.dumps(event(details={"blob": "y" * TEN_MB}))
    [dead] = decode_batch([msg(value)], directory, max_message_bytes=16 * 1024 * 1024).rejects
    assert "details" in dead.reason and "larger than" in dead.reason
    assert dead.payload == value


def test_unknown_content_type_is_dead_lettered(directory: Directories) -> None:
    [dead] = decode_batch([msg(orjson.dumps(event()), content_type="text/csv")], directory).rejects
    assert "content-type" in dead.reason


def test_accounting_counts_every_event_once(directory: Directories) -> None:
    messages = [
        msg(encode_envelope([event(i) for i in range(10)] + [{"bad": True}]), offset=0),
        msg(b"garbage", offset=1),
        msg(orjson.dumps(event(50)), offset=2),
    ]
    outcome = decode_batch(messages, directory)
    assert outcome.messages == 3
    assert outcome.received == 13 == len(outcome.rows) + len(outcome.rejects)
    assert len(outcome.events) == len(outcome.rows) == 11
    assert len(outcome.verdicts) == 13


def test_bugs_are_not_dead_lettered(directory: Directories, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only typed bad input goes to the DLQ; a failing step must stop the worker instead.
    import stream.core

    def broken(*args: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(stream.core, "enrich", broken)
    with pytest.raises(KeyError):
        decode_batch([msg(orjson.dumps(event()))], directory)


# ---------------------------------------------------------------- reject guard


def test_guard_trips_on_the_reject_ratio() -> None:
    guard = RejectGuard(max_ratio=0.5, max_consecutive=1000, min_sample=100, window=1000)
    guard.observe([True, False] * 50)  # 50%: not above the limit
    with pytest.raises(TooManyRejects, match="rejected"):
        guard.observe([False, False, True] * 20)


def test_guard_waits_for_the_minimum_sample() -> None:
    guard = RejectGuard(max_ratio=0.1, max_consecutive=1000, min_sample=100, window=1000)
    guard.observe([False] * 50)  # 100% of 50 events: too few to judge
    with pytest.raises(TooManyRejects):
        guard.observe([True] * 40 + [False] * 10)


def test_guard_ratio_is_over_a_sliding_window() -> None:
    guard = RejectGuard(max_ratio=0.5, max_consecutive=10_000, min_sample=10, window=100)
    guard.observe([False] * 40 + [True] * 60)
    guard.observe([True] * 100)  # the old rejects slide out
    assert guard.reject_ratio == 0.0
    guard.observe([False] * 50)
    assert guard.reject_ratio == 0.5
    with pytest.raises(TooManyRejects):
        guard.observe([False])


def test_guard_trips_on_a_consecutive_run_across_batches() -> None:
    guard = RejectGuard(max_ratio=1.0, max_consecutive=100, min_sample=10, window=10_000)
    guard.observe([True] * 10_000)
    guard.observe([False] * 60)
    assert guard.consecutive_rejects == 60
    with pytest.raises(TooManyRejects, match="consecutive"):
        guard.observe([False] * 41)


def test_guard_run_resets_on_an_accepted_event() -> None:
    guard = RejectGuard(max_ratio=1.0, max_consecutive=5, min_sample=1, window=10)
    for _ in range(20):
        guard.observe([False] * 5 + [True])
    assert guard.consecutive_rejects == 0


def test_guard_is_fed_by_batch_verdicts(directory: Directories) -> None:
    guard = RejectGuard(max_ratio=0.2, max_consecutive=1000, min_sample=5, window=100)
    garbage = [msg(b"\x00", offset=i) for i in range(10)]
    with pytest.raises(TooManyRejects):
        guard.observe(decode_batch(garbage, directory).verdicts)


# ---------------------------------------------------------------- OCSF rendering


@pytest.mark.parametrize(
    ("action", "target", "class_uid", "activity_id"),
    [
        ("user.create", {"kind": "user", "id": "u-andrea"}, 3001, 1),
        ("user.password_reset", {"kind": "user", "id": "u-andrea"}, 3001, 4),
        ("role.update", {"kind": "role", "id": "developer"}, 3004, 3),
        ("team.member_add", {"kind": "team", "id": "t-payments"}, 3006, 3),
        ("deployment_plan.delete", {"kind": "deployment_plan", "id": "plan-q4"}, 3004, 4),
        ("application.deploy", {"kind": "application", "id": "app-billing"}, 6002, 1),
        ("deployment_plan.execute", {"kind": "deployment_plan", "id": "plan-q4"}, 6003, 3),
        ("user.login", {"kind": "user", "id": "u-priya"}, 3002, 1),
        ("team.frobnicate", {"kind": "team", "id": "t-payments"}, 6003, 99),
    ],
)
def test_ocsf_classes(
    directory: Directories, action: str, target: dict[str, str], class_uid: int, activity_id: int
) -> None:
    raw = event(action=action, target=target, outcome="denied", reason="no rights")
    wire = decode_batch([msg(orjson.dumps(raw))], directory).events[0]
    out = to_ocsf(wire)
    assert out["class_uid"] == class_uid
    assert out["activity_id"] == activity_id
    assert out["type_uid"] == class_uid * 100 + activity_id
    assert out["metadata"]["uid"] == raw["event_id"]
    assert out["time"] == 1_790_841_600_000  # 2026-10-01T08:00:00Z
    assert (out["status_id"], out["status"], out["status_detail"]) == (99, "Denied", "no rights")
    acting = out["actor"] if "actor" in out else out["unmapped"]["actor"]  # Group Management has none
    assert acting["user"]["uid"] == "u-priya"
    assert acting["user"]["name"] == "Priya Raman"
    assert out["unmapped"]["details"] == {"sequence": 0}


# ---------------------------------------------------------------- slicing a faust batch


def _faust_event(partition: int, offset: int, size: int) -> SimpleNamespace:
    # The two attributes of a faust event the worker reads for slicing and offsets.
    message = SimpleNamespace(value=b"x" * size, tp=("audit.raw", partition), offset=offset)
    return SimpleNamespace(message=message)


def test_slices_are_in_order_prefixes_bounded_by_bytes() -> None:
    events = [_faust_event(i % 3, 10 + i // 3, 400) for i in range(30)]
    parts = slices(events, 1000)
    assert [len(p) for p in parts] == [2] * 15
    assert [e for p in parts for e in p] == events
    [alone] = slices([big := _faust_event(0, 0, 5000)], 1000)
    assert list(alone) == [big]


def test_offsets_to_commit_are_the_last_offset_plus_one_per_partition() -> None:
    events = [_faust_event(p, o, 1) for p, o in [(0, 5), (1, 7), (0, 6), (2, 1), (1, 8)]]
    assert next_offsets(events) == {("audit.raw", 0): 7, ("audit.raw", 1): 9, ("audit.raw", 2): 2}


def test_an_event_for_an_infrastructure_not_served_is_dead_lettered_alone(directory: Directories) -> None:
    other = event(2, infrastructure="globex-other-tenant")
    value = encode_envelope([event(1), other, event(3)])
    outcome = decode_batch([msg(value, offset=7, content_type=ENVELOPE_CONTENT_TYPE)], directory)
    assert outcome.verdicts == [True, False, True]
    [dead] = outcome.rejects
    assert dead.index == 1 and dead.lineage.offset == 7
    assert "'globex-other-tenant' is not served by this installation (served: acme)" in dead.reason
    assert orjson.loads(dead.payload)["infrastructure"] == "globex-other-tenant"
    assert [r["infrastructure"] for r in outcome.rows] == ["acme", "acme"]


def test_a_message_with_duplicate_keys_is_dead_lettered_not_resolved(directory: Directories) -> None:
    value = orjson.dumps(event(1))[:-1] + b',"actor":{"id":"mallory"}}'
    [dead] = decode_batch([msg(value)], directory).rejects
    assert "duplicate key 'actor'" in dead.reason
    assert dead.payload == value  # the original bytes, for whoever investigates


def test_an_event_dated_after_its_broker_timestamp_plus_the_skew_is_dead_lettered(
    directory: Directories,
) -> None:
    ts = 1_792_000_000_000  # 2026-10-14 17:46:40 UTC
    ok = event(1, occurred_at="2026-10-14T17:50:00Z")  # 200 s ahead: inside 300 s
    ahead = event(2, occurred_at="2026-10-14T18:00:00Z")
    value = encode_envelope([ok, ahead])
    outcome = decode_batch([msg(value, ts=ts, content_type=ENVELOPE_CONTENT_TYPE)], directory)
    assert outcome.verdicts == [True, False]
    assert "800 s after the event was received (2026-10-14 17:46:40.000 UTC)" in outcome.rejects[0].reason
    # The verdict is a function of the message: a replay gives the same one, whatever the clock says.
    again = decode_batch([msg(value, ts=ts, content_type=ENVELOPE_CONTENT_TYPE)], directory)
    assert again.verdicts == outcome.verdicts
    looser = decode_batch(
        [msg(value, ts=ts, content_type=ENVELOPE_CONTENT_TYPE)], directory, max_future_s=900
    )
    assert looser.verdicts == [True, True]


def test_audit_log_events_are_accepted_only_signed_by_the_query_service(directory: Directories) -> None:
    read = event(1, action="audit_log.read", target={"kind": "infrastructure", "id": "acme"})
    value = orjson.dumps(read)
    secret = b"shared-with-the-api"

    def signed(sig: bytes | None) -> RawMessage:
        m = msg(value)
        extra = ((SIGNATURE_HEADER, sig),) if sig is not None else ()
        return dataclasses.replace(m, headers=(*(m.headers or ()), *extra))

    cases = {
        "unsigned": signed(None),
        "wrong key": signed(signature(b"another", value)),
        "garbage": signed(b"00"),
        "valid": signed(signature(secret, value)),
    }
    for name, message in cases.items():
        outcome = decode_batch([message], directory, signing_key=secret)
        assert outcome.verdicts == [name == "valid"], name
        if name != "valid":
            assert "reserved" in outcome.rejects[0].reason
    # Without a configured secret nothing can carry audit_log.*, whatever it claims.
    assert decode_batch([cases["valid"]], directory).verdicts == [False]


def test_a_conflict_leaves_the_siem_stream_and_becomes_a_dead_letter(
    directory: Directories, store: Store
) -> None:
    # event 2 is on record with other content; the batch then brings it again, changed.
    store.writer.write(decode_batch([msg(orjson.dumps(event(2, outcome="failure")))], directory).rows)
    value = encode_envelope([event(1), event(2), event(3)])
    outcome = decode_batch([msg(value, offset=4, content_type=ENVELOPE_CONTENT_TYPE)], directory)
    refused = outcome.rows[1]["event_id"]
    seen: list[Batch] = []

    class Next:
        def submit(self, batch: Batch) -> None:
            seen.append(batch)

    Insert(store.writer, once, Next()).submit(outcome)
    [settled] = seen
    assert [r["event_id"] for r in settled.rows] == [event(1)["event_id"], event(3)["event_id"]]
    assert [e["event_id"] for e in settled.events] == [r["event_id"] for r in settled.rows]
    [dead] = settled.rejects
    assert (dead.index, dead.lineage.offset, dead.code) == (
        1,
        4,
        "conflict",
    ) and "other content" in dead.reason
    assert orjson.loads(dead.payload)["event_id"] == refused and dead.event_id == refused
    # Counts still add up: every event in is stored, a duplicate, or a dead letter.
    assert settled.inserted + settled.duplicates + len(settled.rejects) == settled.received == 3
