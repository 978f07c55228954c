"""Proofs served by the API, and exports that verify offline: what an auditor checks without the store."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from auditlog.verify_export import verify_export
from producers.contract.directory import Directory
from producers.contract.tlog.checkpoint import Checkpoint, open_checkpoint
from producers.contract.tlog.leaf import event_leaf_hash, values_from_event
from producers.contract.tlog.merkle import verify_consistency, verify_inclusion
from producers.contract.tlog.note import Signer
from query_api.settings import ApiSettings
from storage.store import Store
from stream.checkpointer import Checkpointer
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True},
            {"id": "viewer", "name": "Viewer", "app_level": "list"},
            {"id": "none", "name": "None"},
        ],
        "users": [
            {"id": "boss", "name": "Boss", "default_role": "admin"},
            {"id": "dev", "name": "Dev", "default_role": "viewer"},
            {"id": "outsider", "name": "Out", "default_role": "none"},
        ],
        "applications": [{"id": "app-1", "name": "One"}],
    }
)


def _event(i: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": f"2026-09-01T10:{i // 60:02d}:{i % 60:02d}Z",
        "infrastructure": "acme",
        "actor": {"id": "dev", "ip": "10.0.0.7"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-1"},
        "changes": [{"field": "version", "old": f"1.{i}", "new": f"1.{i + 1}"}],
        "details": {"ticket": f"OPS-{i}", "ratio": 0.25, "nested": {"ü": [1, 2, None]}},
    }


def _setup(store: Store) -> tuple[TestClient, dict[str, dict[str, str]], Checkpointer, Signer]:
    client = TestClient(build_embedded(store, api_settings=ApiSettings(), directory=DIRECTORY).app)
    auth = {
        user: {"Authorization": f"Bearer {make_key(store, user, infrastructure='acme', **opts)}"}
        for user, opts in (("boss", {}), ("dev", {"can_ingest": True}), ("outsider", {}))
    }
    signer = Signer.generate("auditlog")
    return client, auth, Checkpointer(store.tree, signer, origin="auditlog", anchor_dir=None), signer


def _b(h: str) -> bytes:
    return base64.b64decode(h)


def test_a_proof_verifies_from_the_event_alone_and_is_gated_like_the_event(store: Store) -> None:
    client, auth, checkpointer, signer = _setup(store)
    events = [_event(i) for i in range(21)]
    assert client.post("/v1/events", json=events, headers=auth["dev"]).json()["stored"] == 21
    checkpointer.run()
    for sent in events[::5]:
        eid = sent["event_id"]
        event = client.get(f"/v1/events/{eid}", headers=auth["dev"]).json()
        r = client.get(f"/v1/events/{eid}/proof", headers=auth["dev"])
        assert r.status_code == 200, r.text
        proof = r.json()
        assert event["position"] == {"log": proof["log"], "index": proof["index"]}
        cp = open_checkpoint(proof["checkpoint"], [signer.verifier])
        values = values_from_event(event, changes=proof["changes"], details=proof["details"])
        leaf = event_leaf_hash(proof["log"], proof["index"], values, sealed=proof["sealed"])
        path = [_b(h) for h in proof["audit_path"]]
        assert verify_inclusion(proof["index"], cp.size, leaf, path, cp.root)
        # The event as another would have it (one field changed) does not verify.
        forged = values_from_event(
            {**event, "outcome": "failure"}, changes=proof["changes"], details=proof["details"]
        )
        forged_leaf = event_leaf_hash(proof["log"], proof["index"], forged, sealed=proof["sealed"])
        assert not verify_inclusion(proof["index"], cp.size, forged_leaf, path, cp.root)
        assert set(proof) == {
            "event_id",
            "log",
            "index",
            "tree_size",
            "sealed",
            "changes",
            "details",
            "audit_path",
            "checkpoint",
        }  # fmt: skip: hashes and the row's own texts only, never another row
    # Who may not read the event may not have its proof, and cannot tell it exists.
    eid = events[0]["event_id"]
    assert client.get(f"/v1/events/{eid}/proof", headers=auth["outsider"]).status_code == 404
    assert client.get(f"/v1/events/{uuid.uuid4()}/proof", headers=auth["dev"]).status_code == 404
    # Stored after the last checkpoint: not provable yet, said plainly.
    late = _event(30)
    client.post("/v1/events", json=[late], headers=auth["dev"])
    r = client.get(f"/v1/events/{late['event_id']}/proof", headers=auth["dev"])
    assert r.status_code == 409 and "not covered by a signed checkpoint yet" in r.json()["detail"]
    # The proof reads are on record like any read.
    reads = store.engine.query(
        f"SELECT details FROM {store.database}.audit_events WHERE action = 'audit_log.read' "
        'AND details LIKE \'%"view":"proof"%\''
    )
    assert len(reads) >= 5


def test_consistency_between_checkpoints_for_administrators(store: Store) -> None:
    client, auth, checkpointer, signer = _setup(store)
    client.post("/v1/events", json=[_event(i) for i in range(7)], headers=auth["dev"])
    checkpointer.run()
    client.post("/v1/events", json=[_event(i) for i in range(7, 20)], headers=auth["dev"])
    checkpointer.run()
    listed = client.get("/v1/checkpoints", params={"log": "local"}, headers=auth["boss"])
    assert listed.status_code == 200, listed.text
    first, second = (open_checkpoint(c["note"], [signer.verifier]) for c in listed.json()[:2])
    r = client.get(
        "/v1/checkpoints/consistency",
        params={"log": "local", "first": first.size, "second": second.size},
        headers=auth["boss"],
    )
    assert r.status_code == 200, r.text
    proof = [_b(h) for h in r.json()["proof"]]
    assert verify_consistency(first.size, second.size, first.root, second.root, proof)
    assert not verify_consistency(first.size, second.size, second.root, second.root, proof)
    assert client.get("/v1/checkpoints", params={"log": "local"}, headers=auth["dev"]).status_code == 403
    bad = client.get(
        "/v1/checkpoints/consistency",
        params={"log": "local", "first": 5, "second": 10_000},
        headers=auth["boss"],
    )
    assert bad.status_code == 400 and "newest checkpoint" in bad.json()["detail"]


def test_an_export_with_proofs_verifies_offline_and_names_an_altered_row(
    store: Store, tmp_path: Path
) -> None:
    client, auth, checkpointer, signer = _setup(store)
    events = [_event(i) for i in range(40)]
    client.post("/v1/events", json=events, headers=auth["dev"])
    checkpointer.run()
    r = client.get("/v1/events/export", params={"format": "ndjson", "proofs": "true"}, headers=auth["dev"])
    assert r.status_code == 200, r.text
    body = r.content
    check = verify_export(body, [signer.verifier])
    assert check.problems == [] and check.verified == check.rows >= 40 and check.checkpoints == 1
    lines = body.splitlines()
    altered_at = next(i for i, line in enumerate(lines) if b'"event_id"' in line and b"OPS-7" in line)
    row = orjson.loads(lines[altered_at])
    row["actor"]["ip"] = "203.0.113.9"
    lines[altered_at] = orjson.dumps(row)
    check = verify_export(b"\n".join(lines), [signer.verifier])
    assert (
        len(check.problems) == 1 and row["event_id"] in check.problems[0] and "altered" in check.problems[0]
    )
    # Offline with another key: nothing verifies.
    other = verify_export(body, [Signer.generate("auditlog").verifier])
    assert other.verified == 0 and other.problems
    # The command line says the same, without a store.
    path = tmp_path / "export.ndjson"
    path.write_bytes(body)
    from auditlog.cli import main

    assert main(["verify-export", str(path), "--public-key", str(signer.verifier)]) == 0
    path.write_bytes(b"\n".join(lines))
    assert main(["verify-export", str(path), "--public-key", str(signer.verifier)]) == 1
    csv = client.get("/v1/events/export", params={"format": "csv", "proofs": "true"}, headers=auth["dev"])
    assert csv.status_code == 400 and "ndjson" in csv.json()["detail"]


def test_an_export_verifies_only_against_its_own_origin(store: Store) -> None:
    client, auth, checkpointer, signer = _setup(store)
    client.post("/v1/events", json=[_event(i) for i in range(5)], headers=auth["dev"])
    checkpointer.run()
    r = client.get("/v1/events/export", params={"format": "ndjson", "proofs": "true"}, headers=auth["dev"])
    lines = r.content.splitlines()
    at = next(i for i, line in enumerate(lines) if b'"checkpoint"' in line)
    item = orjson.loads(lines[at])
    cp = open_checkpoint(item["checkpoint"]["note"], [signer.verifier])
    assert cp.origin == f"{signer.verifier.name}/local"
    assert verify_export(r.content, [signer.verifier], origin=signer.verifier.name).problems == []

    # The same tree, signed by the trusted key but as another installation's log.
    foreign = Checkpoint(f"elsewhere/{item['checkpoint']['log']}", cp.size, cp.root, cp.time_ms)
    item["checkpoint"]["note"] = signer.sign(foreign.text())
    lines[at] = orjson.dumps(item)
    check = verify_export(b"\n".join(lines), [signer.verifier])
    assert check.verified == 0 and "expected 'auditlog/local'" in check.problems[0]
    # A key trusted under the other name proves its own origin, unless the origin is pinned.
    elsewhere = Signer.from_pem("elsewhere", signer.private_pem())
    item["checkpoint"]["note"] = elsewhere.sign(foreign.text())
    lines[at] = orjson.dumps(item)
    assert verify_export(b"\n".join(lines), [elsewhere.verifier]).problems == []
    pinned = verify_export(b"\n".join(lines), [elsewhere.verifier], origin="auditlog")
    assert pinned.verified == 0 and "expected 'auditlog/local'" in pinned.problems[0]
