"""Administration of a running installation: keys (list, create with expiry, revoke), the
directory endpoint, and the viewer's server-side sessions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient

from auditlog.embedded import Embedded, build_embedded
from producers.contract.directory import Directory
from query_api.sessions import SessionStore
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

ADMIN_ROLE = {"app_level": "full_control", "manage_infrastructure": True, "manage_teams": True}
ROLES = [
    {"id": "admin", "name": "Admin", **ADMIN_ROLE},
    {"id": "viewer", "name": "Viewer", "app_level": "list"},
]


def directory(infrastructure: str, dev_apps: list[str]) -> Directory:
    return Directory.model_validate(
        {
            "infrastructure": infrastructure,
            "roles": ROLES,
            "users": [
                {"id": "admin", "name": "Ada", "default_role": "admin"},
                {"id": "dev", "name": "Dev", "app_roles": {a: "viewer" for a in dev_apps}},
            ],
            "applications": [{"id": "app-1", "name": "One"}, {"id": "app-2", "name": "Two"}],
        }
    )


def event(app: str, infrastructure: str = "acme") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-03-01T10:00:00Z",
        "infrastructure": infrastructure,
        "actor": {"id": "admin"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": app},
    }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Install:
    def __init__(self, store: Store, **settings: Any) -> None:
        self.store = store
        self.embedded: Embedded = build_embedded(store, api_settings=ApiSettings(**settings))
        self.embedded.services.directory.replace(directory("acme", ["app-1"]))
        self.embedded.services.directory.replace(directory("globex", ["app-2"]))
        self.client = TestClient(self.embedded.app)
        self.admin = make_key(store, "admin", can_ingest=True)
        self.dev = make_key(store, "dev")
        self.globex_admin = make_key(store, "admin", infrastructure="globex", can_ingest=True)
        r = self.client.post("/v1/events", json=[event("app-1"), event("app-2")], headers=auth(self.admin))
        assert r.status_code == 200, r.text
        r = self.client.post("/v1/events", json=[event("app-1", "globex")], headers=auth(self.globex_admin))
        assert r.status_code == 200, r.text

    def events(self, key: str) -> list[str]:
        r = self.client.get("/v1/events", headers=auth(key))
        assert r.status_code == 200, r.text
        return sorted(i["target"]["id"] for i in r.json()["items"])


@pytest.fixture
def inst(store: Store) -> Install:
    return Install(store, audit_reads=True, key_cache_seconds=0.0)


# -- keys -------------------------------------------------------------------------------


def test_keys_are_listed_created_with_an_expiry_and_revoked_by_administrators(inst: Install) -> None:
    listed = inst.client.get("/v1/keys", headers=auth(inst.admin))
    assert listed.status_code == 200, listed.text
    # Only the caller's infrastructure, and never a key itself.
    assert {(k["infrastructure"], k["user_id"]) for k in listed.json()} == {
        ("acme", "admin"),
        ("acme", "dev"),
    }
    assert inst.admin not in listed.text and inst.dev not in listed.text

    expires = "2099-01-01T00:00:00Z"
    made = inst.client.post(
        "/v1/keys", json={"user_id": "dev", "label": "ci", "expires_at": expires}, headers=auth(inst.admin)
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["expires_at"] == "2099-01-01T00:00:00.000Z" and body["infrastructure"] == "acme"
    new_key = body["key"]
    assert inst.events(new_key) == ["app-1"]

    revoked = inst.client.delete(f"/v1/keys/{body['key_id']}", headers=auth(inst.admin))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert inst.client.get("/v1/events", headers=auth(new_key)).status_code == 401
    state = {k["key_id"]: k["revoked"] for k in inst.client.get("/v1/keys", headers=auth(inst.admin)).json()}
    assert state[body["key_id"]] is True

    # Key management is recorded as tasks performed to the key's user, before the answer left.
    rows = inst.client.get("/v1/events?q=action:user.api_key_*&fields=full", headers=auth(inst.admin)).json()[
        "items"
    ]
    assert sorted(r["action"] for r in rows) == ["user.api_key_create", "user.api_key_revoke"]
    assert all(r["target"]["id"] == "dev" and "key" not in r["details"]["key"] for r in rows)


def test_key_administration_needs_manage_infrastructure_in_the_same_infrastructure(inst: Install) -> None:
    assert inst.client.get("/v1/keys", headers=auth(inst.dev)).status_code == 403
    assert inst.client.post("/v1/keys", json={"user_id": "dev"}, headers=auth(inst.dev)).status_code == 403
    acme_keys = inst.client.get("/v1/keys", headers=auth(inst.admin)).json()
    dev_id = next(k["key_id"] for k in acme_keys if k["user_id"] == "dev")
    # globex's administrator cannot see or revoke acme's keys.
    assert inst.client.delete(f"/v1/keys/{dev_id}", headers=auth(inst.globex_admin)).status_code == 404
    assert inst.events(inst.dev) == ["app-1"]
    # Bad requests say what is wrong.
    r = inst.client.post("/v1/keys", json={"user_id": "nobody"}, headers=auth(inst.admin))
    assert r.status_code == 400 and "not in the directory" in r.text
    r = inst.client.post(
        "/v1/keys", json={"user_id": "dev", "expires_at": "2001-01-01T00:00:00Z"}, headers=auth(inst.admin)
    )
    assert r.status_code == 400 and "in the past" in r.text
    assert inst.client.delete("/v1/keys/not-a-key-id", headers=auth(inst.admin)).status_code == 422


def test_a_revoked_or_expired_key_stops_within_the_key_cache_interval(store: Store) -> None:
    inst = Install(store, audit_reads=False, key_cache_seconds=0.5)
    assert inst.events(inst.dev) == ["app-1"]
    dev_id = next(k.key_id for k in store.keys.list() if k.user_id == "dev")
    # Revoked behind this API's back (another replica, say): the cached lookup holds for a moment.
    assert store.keys.revoke(dev_id) is not None
    deadline = time.monotonic() + 5
    while inst.client.get("/v1/events", headers=auth(inst.dev)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key kept working past the cache interval"
        time.sleep(0.05)
    assert inst.client.get("/v1/events", headers=auth(inst.dev)).status_code == 401

    short, _ = store.keys.create(
        infrastructure="acme", user_id="dev", expires_at_ms=int(time.time() * 1000) + 300
    )
    assert inst.events(short) == ["app-1"]
    time.sleep(0.35)
    # An expired key is refused even while its lookup is cached.
    assert inst.client.get("/v1/events", headers=auth(short)).status_code == 401


def test_made_up_keys_cost_lookups_never_memory(inst: Install) -> None:
    cache = inst.embedded.services.keys
    cache._max = 50  # a small bound to reach in a test
    for _ in range(200):
        assert inst.client.get("/v1/me", headers=auth("alk_" + uuid.uuid4().hex)).status_code == 401
    assert len(cache._cache) <= 50
    # An overlong key is refused before any lookup.
    before = len(cache._cache)
    assert inst.client.get("/v1/me", headers=auth("alk_" + "x" * 5000)).status_code == 401
    assert len(cache._cache) == before
    assert inst.events(inst.admin) == ["app-1", "app-2"]


# -- the directory ----------------------------------------------------------------------


def test_the_running_server_takes_a_new_directory_at_once(inst: Install) -> None:
    assert inst.events(inst.dev) == ["app-1"]
    body = yaml.safe_dump(directory("acme", ["app-1", "app-2"]).model_dump(mode="json", exclude={"version"}))
    r = inst.client.put(
        "/v1/directory", content=body, headers={**auth(inst.admin), "Content-Type": "application/yaml"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["users"] == 2
    assert inst.events(inst.dev) == ["app-1", "app-2"]
    # Another infrastructure's directory is untouched.
    assert inst.events(inst.globex_admin) == ["app-1"]
    rows = inst.client.get("/v1/events?q=action:infrastructure.directory_replace", headers=auth(inst.admin))
    assert [i["target"]["id"] for i in rows.json()["items"]] == ["acme"]


def test_a_directory_key_publishes_and_reads_nothing_else(inst: Install) -> None:
    made = inst.client.post(
        "/v1/keys",
        json={"user_id": "hr-sync", "can_publish_directory": True, "label": "directory sync"},
        headers=auth(inst.admin),
    )
    assert made.status_code == 201, made.text
    sync = made.json()["key"]
    new = directory("acme", []).model_dump(mode="json", exclude={"version"})
    r = inst.client.put(
        "/v1/directory", content=orjson.dumps(new), headers={**auth(sync), "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert inst.events(inst.dev) == []
    assert inst.events(sync) == []
    assert inst.client.get("/v1/keys", headers=auth(sync)).status_code == 403
    # It cannot reach another infrastructure, and a broken directory says what is wrong.
    other = {**new, "infrastructure": "globex"}
    r = inst.client.put(
        "/v1/directory",
        content=orjson.dumps(other),
        headers={**auth(sync), "Content-Type": "application/json"},
    )
    assert r.status_code == 403 and "globex" in r.text
    broken = {**new, "users": [{"id": "x", "name": "X", "default_role": "no-such-role"}]}
    r = inst.client.put(
        "/v1/directory",
        content=orjson.dumps(broken),
        headers={**auth(sync), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "no-such-role" in r.text
    assert inst.client.put("/v1/directory", content=b"{", headers=auth(sync)).status_code == 422
    assert inst.client.put("/v1/directory", content=b"[]", headers=auth(inst.dev)).status_code == 403


# -- viewer sessions --------------------------------------------------------------------


def sign_in(inst: Install, key: str) -> str:
    r = inst.client.post("/ui/login", data={"api_key": key, "next": ""}, follow_redirects=False)
    assert r.status_code == 303, r.text
    session: str = r.cookies["auditlog_session"]
    inst.client.cookies.clear()
    assert key not in r.headers["set-cookie"]
    return session


def page(inst: Install, session: str, path: str = "/ui/") -> int:
    r = inst.client.get(path, headers={"Cookie": f"auditlog_session={session}"}, follow_redirects=False)
    return int(r.status_code)


def csrf_of(inst: Install, session: str) -> str:
    html: str = inst.client.get("/ui/", headers={"Cookie": f"auditlog_session={session}"}).text
    marker = 'name="csrf_token" value="'
    token: str = html[html.index(marker) + len(marker) :].split('"', 1)[0]
    return token


def test_sign_out_is_a_same_site_post_that_ends_the_session_on_the_server(inst: Install) -> None:
    session = sign_in(inst, inst.dev)
    assert page(inst, session) == 200
    cookie = {"Cookie": f"auditlog_session={session}"}
    assert inst.client.get("/ui/logout", headers=cookie).status_code == 405
    # A form on another site knows neither the token nor the origin.
    forged = inst.client.post(
        "/ui/logout", data={"csrf_token": "guess"}, headers={**cookie, "Origin": "https://evil.example"}
    )
    assert forged.status_code == 403
    assert page(inst, session) == 200
    token = csrf_of(inst, session)
    assert inst.client.post("/ui/logout", data={"csrf_token": "wrong"}, headers=cookie).status_code == 403
    done = inst.client.post("/ui/logout", data={"csrf_token": token}, headers=cookie, follow_redirects=False)
    assert done.status_code == 303
    # The old cookie is worth nothing now, in the viewer and in the API.
    assert page(inst, session) == 303
    assert inst.client.get("/v1/events", headers=cookie).status_code == 401


def test_sessions_of_a_revoked_key_end_with_it(inst: Install) -> None:
    session = sign_in(inst, inst.dev)
    assert inst.client.get("/v1/events", headers={"Cookie": f"auditlog_session={session}"}).status_code == 200
    dev_id = next(
        k["key_id"]
        for k in inst.client.get("/v1/keys", headers=auth(inst.admin)).json()
        if k["user_id"] == "dev"
    )
    assert inst.client.delete(f"/v1/keys/{dev_id}", headers=auth(inst.admin)).status_code == 200
    assert page(inst, session) == 303
    assert len(inst.embedded.services.sessions) == 0


def test_sessions_expire_when_idle_and_absolutely() -> None:
    store = SessionStore(absolute_seconds=0.4, idle_seconds=0.15)
    idle = store.create("h1")
    busy = store.create("h2")
    for _ in range(3):
        time.sleep(0.08)
        assert store.get(busy.id) is not None
    assert store.get(idle.id) is None  # 0.24 s without a request
    time.sleep(0.2)
    assert store.get(busy.id) is None  # used all along, but signed in more than 0.4 s ago
    assert store.get("made-up") is None and store.get("x" * 1000) is None
