"""Administrators see what was refused for their infrastructure, and nothing of another's."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from producers.envelope import ENVELOPE_CONTENT_TYPE
from query_api.settings import ApiSettings
from storage.dead_letter_reader import MAX_PAYLOAD_CHARS
from storage.reader import EventFilter, View
from storage.store import Store
from stream.messages import RawMessage
from stream.steps.decode import decode_batch
from tests.grants import make_key, scope, served

ROLES = [
    {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True},
    {"id": "viewer", "name": "Viewer", "app_level": "list"},
]


def directory(infrastructure: str) -> Directory:
    return Directory.model_validate(
        {
            "infrastructure": infrastructure,
            "roles": ROLES,
            "users": [
                {"id": "boss", "name": "Boss", "default_role": "admin"},
                {"id": "dev", "name": "Dev", "default_role": "viewer"},
            ],
        }
    )


def event(event_id: str, infrastructure: str = "acme", **changes: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": "2026-09-01T10:00:00Z",
        "infrastructure": infrastructure,
        "actor": {"id": "dev"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-1"},
        **changes,
    }


def test_a_conflict_is_listed_for_the_administrators_of_its_infrastructure(store: Store) -> None:
    store.directory.replace(directory("globex"))
    app = build_embedded(store, api_settings=ApiSettings(), directory=directory("acme")).app
    client = TestClient(app)

    def auth(user: str, infrastructure: str = "acme", **options: Any) -> dict[str, str]:
        key = make_key(store, user, infrastructure=infrastructure, **options)
        return {"Authorization": f"Bearer {key}"}

    ingest, boss = auth("dev", can_ingest=True), auth("boss")
    eid = str(uuid.uuid4())
    assert client.post("/v1/events", json=[event(eid)], headers=ingest).json()["stored"] == 1
    r = client.post("/v1/events", json=[event(eid, outcome="failure"), {"nonsense": 1}], headers=ingest)
    assert r.status_code == 207, r.text
    assert [x["code"] for x in r.json()["rejected"]] == ["conflict", "invalid"]

    page = client.get("/v1/dead-letters", headers=boss)
    assert page.status_code == 200, page.text
    letters = page.json()["items"]
    assert sorted(x["code"] for x in letters) == ["conflict", "invalid"]
    [conflict] = [x for x in letters if x["code"] == "conflict"]
    assert conflict["event_id"] == eid and conflict["infrastructure"] == "acme"
    assert "stored content hash" in conflict["reason"] and conflict["ingest_key_id"]
    assert orjson.loads(conflict["payload"])["outcome"] == "failure"
    only = client.get("/v1/dead-letters", params={"code": "conflict"}, headers=boss).json()["items"]
    assert [x["event_id"] for x in only] == [eid]

    # Who may not: a user without Manage Infrastructure and Users; another infrastructure's
    # administrator sees none of acme's letters.
    assert client.get("/v1/dead-letters", headers=auth("dev")).status_code == 403
    assert client.get("/v1/dead-letters", headers=auth("boss", "globex")).json()["items"] == []
    assert client.get("/v1/dead-letters", params={"code": "nope"}, headers=boss).status_code == 422

    # The administrator's look is on record, as every read is.
    reads = store.reader.page(
        scope=scope(admin=True), view=View(), filters=EventFilter(actions=["audit_log.read"]), limit=50
    ).items
    assert any('"dead_letters"' in r["details"] for r in reads)


def test_kafka_rejects_are_filed_under_the_infrastructure_they_claim() -> None:
    def message(value: bytes, key: bytes | None, offset: int) -> RawMessage:
        return RawMessage(value, (), "audit.raw", 0, offset, 1_792_000_000_000, key)

    outcome = decode_batch(
        [
            message(b"not json", b"globex/application/app-9", 1),
            message(orjson.dumps(event(str(uuid.uuid4()), "initech")), b"initech/application/app-1", 2),
            message(orjson.dumps(event(str(uuid.uuid4()), outcome="maybe")), None, 3),
        ],
        served("acme"),
    )
    got = [(d.code, d.infrastructure) for d in outcome.rejects]
    assert got == [("not_json", "globex"), ("unknown_infrastructure", "initech"), ("invalid", "acme")]
    assert outcome.rejects[2].dead_letter().event_id


def test_input_orjson_cannot_encode_is_dead_lettered_not_a_crash() -> None:
    # Strict JSON decodes an integer past 64 bits; the contract refuses it; the dead letter
    # must still be written, or the worker would crash on this message after every restart.
    huge = '{"envelope":1,"events":[' + orjson.dumps(event(str(uuid.uuid4()))).decode()[:-1]
    huge += ',"details":{"n":' + str(2**70) + "}}]}"
    envelope = RawMessage(
        huge.encode(),
        (("content-type", ENVELOPE_CONTENT_TYPE.encode()),),
        "audit.raw",
        0,
        7,
        1_792_000_000_000,
    )
    [dead] = decode_batch([envelope], served("acme")).rejects
    assert dead.code == "invalid" and str(2**70) in dead.payload.decode()
    # A whole envelope refused is filed under nobody: its key names its first event only.
    broken = RawMessage(
        b'{"envelope":9,"events":[{}]}', envelope.headers, "audit.raw", 0, 8, 1, b"globex/user/u"
    )
    [letter] = decode_batch([broken], served("acme")).rejects
    assert (letter.code, letter.infrastructure) == ("envelope_version", "")


def test_a_long_payload_is_cut_between_characters(store: Store) -> None:
    # Found by schemathesis: the listing cut payloads by bytes, splitting a character at the
    # cut; the page was then no UTF-8 and the listing answered 500.
    embedded = build_embedded(store, api_settings=ApiSettings(audit_reads=False), directory=directory("acme"))
    headers = {"Authorization": "Bearer " + make_key(store, "boss", can_ingest=True)}
    client = TestClient(embedded.app)
    body = orjson.dumps(event(str(uuid.uuid4()), details="é" * (MAX_PAYLOAD_CHARS + 10)))
    assert client.post("/v1/events", content=body, headers=headers).status_code == 207
    [letter] = client.get("/v1/dead-letters", headers=headers).json()["items"]
    assert letter["payload_bytes"] > MAX_PAYLOAD_CHARS + 1000
    assert len(letter["payload"]) == MAX_PAYLOAD_CHARS and letter["payload"].endswith("é" * 1000)
