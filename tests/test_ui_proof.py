"""The event page's tamper-evidence panel: pending, proven, altered; its proof link."""

from __future__ import annotations

import base64
import re

from fastapi.testclient import TestClient

from producers.contract.tlog.checkpoint import open_checkpoint
from producers.contract.tlog.leaf import event_leaf_hash, values_from_event
from producers.contract.tlog.merkle import verify_inclusion
from storage.store import Store
from tests.grants import make_key
from tests.test_proofs_api import _event, _setup


def _state(client: TestClient, event_id: str) -> str:
    r = client.get(f"/ui/events/{event_id}")
    assert r.status_code == 200, r.text
    found = re.search(r'id="proof" data-state="([a-z-]+)"', r.text)
    assert found, r.text
    return found.group(1)


def test_the_event_page_shows_whether_the_row_matches_its_signed_leaf(store: Store) -> None:
    api, auth, checkpointer, signer = _setup(store)
    events = [_event(i) for i in range(9)]
    assert api.post("/v1/events", json=events, headers=auth["dev"]).json()["stored"] == 9
    viewer = TestClient(api.app)
    secret = make_key(store, "dev", infrastructure="acme")
    assert (
        viewer.post("/ui/login", data={"api_key": secret, "next": ""}, follow_redirects=False).status_code
        == 303
    )
    target = events[4]["event_id"]

    assert _state(viewer, target) == "pending"
    checkpointer.run()
    page = viewer.get(f"/ui/events/{target}").text
    assert 'data-state="proven"' in page and "matches its signed leaf" in page
    leaves = re.search(r"auditlog/local</span>, (\d+) leaves", page)
    assert leaves and int(leaves.group(1)) >= 9  # and the page's own read records

    # The link is the API's proof, answered to the viewer's session, and it verifies.
    href = re.search(r'href="([^"]+/proof)"', page)
    assert href
    proof = viewer.get(href.group(1)).json()
    event = api.get(f"/v1/events/{target}", headers=auth["dev"]).json()
    checkpoint = open_checkpoint(proof["checkpoint"], [signer.verifier])
    leaf = event_leaf_hash(
        proof["log"],
        proof["index"],
        values_from_event(event, changes=proof["changes"], details=proof["details"]),
        sealed=proof["sealed"],
    )
    path = [base64.b64decode(h) for h in proof["audit_path"]]
    assert verify_inclusion(proof["index"], checkpoint.size, leaf, path, checkpoint.root)

    # A row changed in the store after it was signed says so where it is read.
    store.engine.command(
        f"ALTER TABLE {store.database}.audit_events UPDATE actor_ip = toIPv6('203.0.113.9') "
        "WHERE event_id = toUUID({e:String}) SETTINGS mutations_sync = 2",
        params={"e": target},
    )
    page = viewer.get(f"/ui/events/{target}").text
    assert 'data-state="altered"' in page and "altered since it was signed" in page
    assert _state(viewer, events[3]["event_id"]) == "proven"
