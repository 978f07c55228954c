"""Bad input at the API's edges: bodies, events, query parameters, keys, hostile strings.

Every malformed request gets a 4xx that says what is wrong (the field or the
parameter by name), never a 5xx; rejected events of a batch are reported with
their index and kept in `dead_letters` while the valid ones are stored; strings
that look like SQL travel as bound values only: the results are exactly the rows
a reference filter in Python selects, and the table is intact afterwards.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient

from auditlog.embedded import Embedded, build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "infra-1",
        "roles": [
            {
                "id": "admin",
                "name": "Administrator",
                "app_level": "full_control",
                "manage_infrastructure": True,
                "manage_teams": True,
            },
            {"id": "viewer", "name": "Viewer", "app_level": "list"},
        ],
        "users": [
            {"id": "admin", "name": "Ada Admin", "default_role": "admin"},
            {"id": "viewer", "name": "Vic Viewer", "app_roles": {"a0": "viewer"}},
        ],
        "teams": [{"id": "t0", "name": "Team 0"}],
        "applications": [{"id": "a0", "name": "App 0", "team": "t0"}],
    }
)


@dataclass
class Api:
    store: Store
    embedded: Embedded
    client: TestClient
    admin: str
    """key of a user who may read everything, without the ingest right"""
    viewer: str
    """key of a user with List on application a0 only"""
    ingester: str
    """key with the ingest right"""

    def post(
        self, body: Any = None, *, content: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        data = content if content is not None else orjson.dumps(body)
        return self.client.post(
            "/v1/events",
            content=data,
            headers={"Authorization": f"Bearer {self.ingester}", "Content-Type": content_type},
        )

    def get(self, path: str, key: str | None = None, params: Sequence[tuple[str, str]] = ()) -> Any:
        return self.client.get(path, params=list(params), headers=auth(key or self.admin))

    def count(self, table: str = "audit_events") -> int:
        rows = self.store.engine.query(f"SELECT count() AS n FROM {self.store.database}.{table}")
        return int(rows[0]["n"])

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.store.engine.query(
            f"SELECT reason, payload FROM {self.store.database}.dead_letters ORDER BY received_at"
        )

    def tables(self) -> list[str]:
        rows = self.store.engine.query(f"SHOW TABLES FROM {self.store.database}")
        return sorted(r["name"] for r in rows)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_api(store: Store, settings: ApiSettings) -> Api:
    embedded = build_embedded(store, api_settings=settings, directory=DIRECTORY)
    return Api(
        store=store,
        embedded=embedded,
        client=TestClient(embedded.app),
        admin=make_key(store, "admin", infrastructure="infra-1"),
        viewer=make_key(store, "viewer", infrastructure="infra-1"),
        ingester=make_key(store, "ingest-bot", infrastructure="infra-1", can_ingest=True),
    )


@pytest.fixture
def api(store: Store) -> Api:
    return make_api(store, ApiSettings(audit_reads=False))


def event(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid wire event; `overrides` replace top-level fields."""
    ev: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": f"2026-02-03T10:00:{n % 60:02d}.{n % 1000:03d}Z",
        "infrastructure": "infra-1",
        "environment": "prod",
        "actor": {"id": "u-plain", "type": "user"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "a0"},
        "related": [],
        "outcome": "success",
    }
    ev.update(overrides)
    return ev


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    found = {i["event_id"] for i in items}
    assert len(found) == len(items)
    return found


def segment(value: str) -> str:
    """`value` as one path segment.

    Starlette's TestClient unquotes the path that httpx already decoded, so a path
    reaches the app decoded twice; encoding twice delivers `value` as a real server would.
    """
    return quote(quote(value, safe=""), safe="")


def detail(response: Any) -> str:
    body = response.json()
    return str(body.get("detail", "")) + " " + orjson.dumps(body.get("errors", [])).decode()


# --------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------


MALFORMED = [
    b'{"schema_version": 1,',
    b"[{}, ",
    b"nul",
    b"{'single': 'quotes'}",
    b"\xff\xfe\x00{",
    b'{"a": 1}}',
]


def test_malformed_json_body_is_422_and_stores_nothing(api: Api) -> None:
    for body in MALFORMED:
        r = api.post(content=body)
        assert r.status_code == 422, (body, r.text)
        assert "not valid JSON" in r.json()["detail"], body
    assert api.count() == 0 and api.dead_letters() == []


def test_empty_body_is_422(api: Api) -> None:
    for body in (b"", b"   ", b"\n\n", b"\r\n\t "):
        for content_type in ("application/json", "application/x-ndjson"):
            r = api.post(content=body, content_type=content_type)
            assert r.status_code == 422, (body, content_type, r.text)
            assert "empty body" in r.json()["detail"]
    assert api.count() == 0


_DELETE = object()

WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("event_id", 123, "event_id"),
    ("event_id", "not-a-uuid", "event_id"),
    ("event_id", _DELETE, "event_id"),
    ("occurred_at", 1_770_000_000, "occurred_at"),
    ("occurred_at", "yesterday", "occurred_at"),
    ("occurred_at", "2026-02-03T10:00:00", "occurred_at"),
    ("infrastructure", 7, "infrastructure"),
    ("infrastructure", "   ", "infrastructure"),
    ("environment", ["prod"], "environment"),
    ("actor", "alice", "actor"),
    ("actor", _DELETE, "actor"),
    ("actor.id", 42, "actor.id"),
    ("actor.type", "robot", "actor.type"),
    ("actor.ip", "999.1.1.1", "actor.ip"),
    ("action", 5, "action"),
    ("action", "deploy", "action"),
    ("target.kind", 3, "target.kind"),
    ("target.id", None, "target.id"),
    ("target", _DELETE, "target"),
    ("related", {"kind": "application", "id": "a0"}, "related"),
    ("related", [{"kind": "application", "id": 5}], "related.0.id"),
    ("outcome", "maybe", "outcome"),
    ("outcome", True, "outcome"),
    ("changes", {"field": "x"}, "changes"),
    ("details", [1], "details"),
    ("source", {"service": 1}, "source.service"),
    ("request_id", 1, "request_id"),
    ("unexpected", 1, "unexpected"),
    ("schema_version", "1", "schema_version"),
    ("schema_version", _DELETE, "schema_version"),
]


def _set(ev: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    ev = copy.deepcopy(ev)
    *parents, last = path.split(".")
    node = ev
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return ev


def test_wrong_types_are_rejected_one_by_one_naming_the_field(api: Api) -> None:
    good = event(99)
    batch = [_set(event(n), path, value) for n, (path, value, _) in enumerate(WRONG_TYPES)] + [good]
    r = api.post(batch)
    assert r.status_code == 207, r.text
    report = r.json()
    assert (report["received"], report["stored"]) == (len(batch), 1)
    rejected = {x["index"]: x for x in report["rejected"]}
    assert sorted(rejected) == list(range(len(WRONG_TYPES)))
    for n, (path, value, field) in enumerate(WRONG_TYPES):
        rejection = rejected[n]
        fields = [e["field"] for e in rejection["errors"]]
        assert field in fields, (path, value, fields)
        assert field in rejection["reason"], (path, value, rejection["reason"])
    assert ids(api.get("/v1/events")) == {good["event_id"]}
    letters = api.dead_letters()
    assert sorted(x["reason"] for x in letters) == sorted(x["reason"] for x in rejected.values())


def test_ndjson_with_a_line_that_is_not_json_is_refused_whole(api: Api) -> None:
    lines = [orjson.dumps(event(1)), b'{"schema_version": 1, oops', orjson.dumps(event(2))]
    r = api.post(content=b"\n".join(lines), content_type="application/x-ndjson")
    assert r.status_code == 422, r.text
    assert "line 2" in r.json()["detail"]
    assert api.count() == 0


def test_ndjson_with_an_invalid_event_keeps_the_others(api: Api) -> None:
    good = [event(1), event(3)]
    bad = event(2, actor={"id": 42})
    body = b"\n".join(orjson.dumps(e) for e in (good[0], bad, good[1])) + b"\n"
    # Also without an NDJSON content type: several lines of JSON are read as NDJSON.
    for content_type in ("application/x-ndjson", "application/json"):
        r = api.post(content=body, content_type=content_type)
        assert r.status_code == 207, r.text
        report = r.json()
        assert [x["index"] for x in report["rejected"]] == [1]
        assert report["rejected"][0]["errors"][0]["field"] == "actor.id"
    assert api.count() == 2
    assert ids(api.get("/v1/events")) == {e["event_id"] for e in good}


def test_mixed_batch_stores_valid_and_dead_letters_invalid(api: Api) -> None:
    valid = [event(0), event(2), event(5)]
    batch: list[Any] = [
        valid[0],
        event(1, actor={"id": 42}),
        valid[1],
        "not an object",
        event(4, schema_version=2),
        valid[2],
        event(6, target={"kind": "widget", "id": "w1"}),
        None,
    ]
    r = api.post(batch)
    assert r.status_code == 207, r.text
    report = r.json()
    assert (report["received"], report["stored"], report["duplicates"]) == (8, 3, 0)
    rejected = {x["index"]: x for x in report["rejected"]}
    assert sorted(rejected) == [1, 3, 4, 6, 7]
    assert "actor.id" in rejected[1]["reason"]
    assert "JSON object" in rejected[3]["reason"] and "str" in rejected[3]["reason"]
    assert "schema_version" in rejected[4]["reason"]
    assert "target.kind" in rejected[6]["reason"]
    assert rejected[1]["event_id"] == batch[1]["event_id"]

    assert api.count() == 3
    assert ids(api.get("/v1/events")) == {e["event_id"] for e in valid}
    for e in valid:
        assert api.get(f"/v1/events/{e['event_id']}").status_code == 200
    for index in (1, 4, 6):
        assert api.get(f"/v1/events/{batch[index]['event_id']}").status_code == 404

    letters = api.dead_letters()
    assert len(letters) == 5
    assert sorted(x["reason"] for x in letters) == sorted(x["reason"] for x in rejected.values())
    payloads = "\n".join(x["payload"] for x in letters)
    for index in (1, 4, 6):
        assert batch[index]["event_id"] in payloads
    assert "not an object" in payloads


def test_future_schema_version_has_a_clear_reason(api: Api) -> None:
    r = api.post([event(0, schema_version=2), event(1, schema_version=0), event(2, schema_version=True)])
    assert r.status_code == 207, r.text
    reasons = [x["reason"] for x in r.json()["rejected"]]
    assert len(reasons) == 3
    assert "unsupported schema_version 2" in reasons[0] and "accepts 1" in reasons[0]
    for reason in reasons:
        assert "schema_version" in reason
    assert api.count() == 0 and len(api.dead_letters()) == 3


def test_unknown_entity_kinds(api: Api) -> None:
    r = api.post(
        [
            event(0, target={"kind": "widget", "id": "w1"}),
            event(1, related=[{"kind": "application", "id": "a0"}, {"kind": "gadget", "id": "g"}]),
            event(2, target={"kind": "app", "id": "a0"}),
        ]
    )
    assert r.status_code == 207, r.text
    fields = [[e["field"] for e in x["errors"]] for x in r.json()["rejected"]]
    assert fields == [["target.kind"], ["related.1.kind"], ["target.kind"]]
    assert api.count() == 0

    r = api.get("/v1/entities/widget/w1/changes")
    assert r.status_code == 422 and "widget" in detail(r) and "kind" in detail(r)
    r = api.get("/v1/events", params=[("entity_kind", "widget")])
    assert r.status_code == 422 and "entity_kind" in detail(r)
    r = api.get("/v1/events", params=[("entity", "widget/w1")])
    assert r.status_code == 422 and "entity" in detail(r) and "widget" in detail(r)


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


def test_oversized_body_is_413(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=False, max_body_bytes=2048, max_batch_events=3))
    small = orjson.dumps([event(0)])
    assert len(small) < 2048
    assert api.post(content=small).status_code == 200

    big = orjson.dumps([event(1, details={"blob": "x" * 3000})])
    r = api.post(content=big)
    assert r.status_code == 413, r.text
    assert "2048" in r.json()["detail"]

    # No Content-Length (chunked): the limit holds while reading.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    r = api.client.post(
        "/v1/events",
        content=chunks(),
        headers={"Authorization": f"Bearer {api.ingester}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text

    # Too many events, each small.
    r = api.post([event(i) for i in range(2, 6)])
    assert r.status_code == 413 and "3" in r.json()["detail"]
    assert api.count() == 1


def test_max_body_bytes_from_the_environment(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITLOG_API_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("AUDITLOG_API_AUDIT_READS", "false")
    api = make_api(store, ApiSettings())
    r = api.post([event(0, details={"blob": "x" * 5000})])
    assert r.status_code == 413, r.text
    assert api.count() == 0


# --------------------------------------------------------------------------------------
# Query parameters
# --------------------------------------------------------------------------------------

BAD_PARAMS: list[tuple[list[tuple[str, str]], tuple[str, ...]]] = [
    ([("limit", "0")], ("limit",)),
    ([("limit", "-1")], ("limit",)),
    ([("limit", "5000")], ("limit",)),
    ([("limit", "abc")], ("limit",)),
    ([("limit", "1.5")], ("limit",)),
    ([("since", "2026-02-04T00:00:00Z"), ("until", "2026-02-03T00:00:00Z")], ("since", "until")),
    ([("since", "2026-02-03T00:00:00Z"), ("until", "2026-02-03T00:00:00Z")], ("since", "until")),
    ([("since", "yesterday")], ("since",)),
    ([("until", "2026-13-45")], ("until",)),
    ([("cursor", "not-a-cursor")], ("cursor",)),
    ([("cursor", "!!!")], ("cursor",)),
    ([("cursor", base64.urlsafe_b64encode(b'[1, "x", "y"]').decode())], ("cursor",)),
    (
        [
            (
                "cursor",
                base64.urlsafe_b64encode(b'["1", "00000000-0000-0000-0000-000000000000", "y"]').decode(),
            )
        ],
        ("cursor",),
    ),
    ([("cursor", "x" * 3000)], ("cursor",)),
    ([("entity", "bad")], ("entity",)),
    ([("entity", "application/")], ("entity",)),
    ([("entity", "/a0")], ("entity",)),
    ([("entity", "widget/a0")], ("entity",)),
    ([("entity_kind", "widget")], ("entity_kind",)),
    ([("outcome", "maybe")], ("outcome",)),
    ([("action", "")], ("action",)),
    ([("action", "*")], ("action",)),
    ([("include_total", "perhaps")], ("include_total",)),
]


def _unanswerable(params: list[tuple[str, str]]) -> bool:
    """Values the schema allows that cannot be used: 400, where what the schema forbids is 422."""
    given = dict(params)
    if "cursor" in given:
        return len(given["cursor"]) <= 2048
    return "since" in given and "until" in given


def test_bad_query_parameter_is_422_naming_it(api: Api) -> None:
    for path in ("/v1/events", "/v1/users/u-plain/activity", "/v1/entities/application/a0/changes"):
        for params, names in BAD_PARAMS:
            r = api.get(path, params=params)
            assert r.status_code == (400 if _unanswerable(params) else 422), (path, params, r.text)
            text = detail(r)
            for name in names:
                assert name in text, (path, params, text)


def test_overlong_path_parameters_are_422_naming_them(api: Api) -> None:
    long = "x" * 257
    r = api.get(f"/v1/users/{long}/activity")
    assert r.status_code == 422 and "user_id" in detail(r), r.text
    r = api.get(f"/v1/entities/application/{long}/changes")
    assert r.status_code == 422 and "entity_id" in detail(r), r.text
    r = api.get("/v1/events", params=[("entity", f"application/{long}")])
    assert r.status_code == 422 and "entity" in detail(r), r.text


def test_json_values_that_are_not_events_are_rejected_one_by_one(api: Api) -> None:
    for body, kind in [
        (b"5", "int"),
        (b"null", "NoneType"),
        (b'"x"', "str"),
        (b"[[]]", "list"),
        (b"true", "bool"),
    ]:
        r = api.post(content=body)
        assert r.status_code == 207, (body, r.text)
        [rejection] = r.json()["rejected"]
        assert (
            rejection["index"] == 0 and "JSON object" in rejection["reason"] and kind in rejection["reason"]
        )
    r = api.post(content=b"{}")
    assert r.status_code == 207 and "schema_version" in r.json()["rejected"][0]["reason"]
    r = api.post(content=b"[]")
    assert r.status_code == 200 and r.json()["received"] == 0
    assert api.count() == 0 and len(api.dead_letters()) == 6


def test_bad_event_id_in_path_is_422(api: Api) -> None:
    for bad in ("not-a-uuid", "1", "' OR 1=1 --", "{e_id:String}"):
        r = api.get(f"/v1/events/{segment(bad)}")
        assert r.status_code == 422, r.text
        assert "event_id" in detail(r)


def test_cursor_belongs_to_its_query(api: Api) -> None:
    batch = [event(i, actor={"id": "u-a" if i % 2 else "u-b"}) for i in range(6)]
    assert api.post(batch).status_code == 200
    first = api.get("/v1/events", params=[("actor", "u-a"), ("limit", "1")]).json()
    cursor = first["next_cursor"]
    assert cursor
    # The same query pages on.
    r = api.get("/v1/events", params=[("actor", "u-a"), ("limit", "1"), ("cursor", cursor)])
    assert r.status_code == 200
    # Other filters, another view, or a tampered cursor: refused, naming the cursor.
    for path, params in [
        ("/v1/events", [("actor", "u-b"), ("limit", "1")]),
        ("/v1/events", [("limit", "1")]),
        ("/v1/events", [("actor", "u-a"), ("outcome", "success"), ("limit", "1")]),
        ("/v1/users/u-a/activity", [("limit", "1")]),
        ("/v1/entities/application/a0/changes", [("actor", "u-a"), ("limit", "1")]),
    ]:
        r = api.get(path, params=[*params, ("cursor", cursor)])
        assert r.status_code == 400, (path, params, r.text)
        assert "cursor" in detail(r)
    raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for forged in ([raw[0], "' OR 1=1 --", raw[2]], [raw[0], raw[1], "0" * 16], [raw[0], raw[1]], {"a": 1}):
        token = base64.urlsafe_b64encode(orjson.dumps(forged)).decode().rstrip("=")
        r = api.get("/v1/events", params=[("actor", "u-a"), ("limit", "1"), ("cursor", token)])
        assert r.status_code == 400, (forged, r.text)
        assert "cursor" in detail(r)


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------

READ_PATHS = ["/v1/events", "/v1/users/u-plain/activity", "/v1/entities/application/a0/changes", "/v1/me"]


def test_missing_or_invalid_key_is_401(api: Api) -> None:
    one = event(0)
    assert api.post([one]).status_code == 200
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer alk_not-a-real-key"},
        {"Authorization": f"Bearer {api.admin}x"},
        {"Authorization": f"Basic {api.admin}"},
        {"Authorization": api.admin},
        {"X-Api-Key": api.admin},
    ]
    for headers in bad_headers:
        for path in [*READ_PATHS, f"/v1/events/{one['event_id']}"]:
            r = api.client.get(path, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
        r = api.client.post("/v1/events", content=orjson.dumps([event(1)]), headers=headers)
        assert r.status_code == 401, (headers, r.text)
    assert api.count() == 1


def test_key_without_ingest_right_may_not_post(api: Api) -> None:
    for key in (api.admin, api.viewer):
        r = api.client.post("/v1/events", content=orjson.dumps([event(0)]), headers=auth(key))
        assert r.status_code == 403, r.text
        assert "ingest" in r.json()["detail"]
    # The viewer's session never carries the ingest right, even one opened with an ingest key.
    signed_in = api.client.post(
        "/ui/login", data={"api_key": api.ingester, "next": ""}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    session = signed_in.cookies["auditlog_session"]
    assert api.ingester not in signed_in.headers["set-cookie"]
    r = api.client.post(
        "/v1/events", content=orjson.dumps([event(0)]), headers={"Cookie": f"auditlog_session={session}"}
    )
    assert r.status_code == 403, r.text
    assert api.count() == 0
    assert api.dead_letters() == []


def test_key_of_a_user_the_directory_does_not_know_reads_nothing(api: Api) -> None:
    assert api.post([event(0), event(1, target={"kind": "role", "id": "r"})]).status_code == 200
    stranger = make_key(api.store, "nobody", infrastructure="infra-1")
    assert ids(api.get("/v1/events", stranger)) == set()
    assert api.get("/v1/users/u-plain/activity", stranger).status_code == 403
    assert api.get("/v1/entities/application/a0/changes", stranger).status_code == 403


# --------------------------------------------------------------------------------------
# Hostile strings in every filter
# --------------------------------------------------------------------------------------

HOSTILE = [
    "' OR 1=1 --",
    "\\'); DROP TABLE x; --",
    "'; DROP TABLE audit_events; SELECT '",
    "{x:String}",
    "{f_actors:Array(String)}",
    "back\\slash",
    "trailing\\",
    "\\",
    "ünïcødé ☃ 日本語 🚀",
    "nul\x00byte",
    "tab\tand\nnewline",
    "\"double\" 'single' `back`",
    "%27%20OR%201%3D1",
    "50%_off",
    "a/b",
    "*",
    "x" * 256,
]


@dataclass(frozen=True)
class Stored:
    event_id: str
    actor: str
    environment: str
    infrastructure: str
    kind: str
    target: str
    related: tuple[tuple[str, str], ...]


def hostile_events() -> tuple[list[dict[str, Any]], list[Stored]]:
    wire, stored = [], []
    # Every hostile value as actor, environment, target and related user id (an infrastructure
    # must be one this installation serves: see the test below); plus two plain events, one of
    # them on a0 (the only application the viewer may list).
    plain_targets = {"u-plain": "a0", "u-other": "a1"}
    for n, value in enumerate([*HOSTILE, *plain_targets]):
        target = plain_targets.get(value, value)
        related = (("user", value), ("team", "t0"))
        ev = event(
            n,
            actor={"id": value},
            environment=value,
            target={"kind": "application", "id": target},
            related=[{"kind": k, "id": i} for k, i in related],
        )
        wire.append(ev)
        stored.append(Stored(ev["event_id"], value, value, "infra-1", "application", target, related))
    return wire, stored


def test_events_of_an_infrastructure_not_served_are_dead_lettered_with_the_reason(api: Api) -> None:
    wire = [event(n, infrastructure=value) for n, value in enumerate(HOSTILE)] + [event(99)]
    r = api.post(wire)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["stored"] == 1 and len(body["rejected"]) == len(HOSTILE)
    # A key writes its own infrastructure's events only.
    assert all("ingests for infrastructure 'infra-1' only" in x["reason"] for x in body["rejected"])
    # With a key of an infrastructure this installation does not serve: refused for that.
    other = make_key(api.store, "bot", infrastructure="globex-other-tenant", can_ingest=True)
    r = api.client.post(
        "/v1/events",
        content=orjson.dumps([event(0, infrastructure="globex-other-tenant")]),
        headers={**auth(other), "Content-Type": "application/json"},
    )
    assert r.status_code == 207 and "is not served by this installation (served: infra-1)" in r.text
    kept = api.dead_letters()[: len(HOSTILE)]
    assert len(api.dead_letters()) == len(HOSTILE) + 1
    assert {orjson.loads(k["payload"])["infrastructure"] for k in kept} == set(HOSTILE)


def test_hostile_strings_in_every_filter_are_plain_values(api: Api) -> None:
    wire, stored = hostile_events()
    r = api.post(wire)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(wire)
    before = (api.count(), api.count("dead_letters"), api.tables())

    def visible(key: str) -> set[str]:
        if key == api.admin:
            return {s.event_id for s in stored}
        return {s.event_id for s in stored if s.target == "a0"}

    # Values round-trip byte for byte.
    for s in stored:
        body = api.get(f"/v1/events/{s.event_id}").json()
        assert (body["actor"]["id"], body["environment"]) == (s.actor,) * 2
        assert body["target"]["id"] == s.target

    for value in HOSTILE:
        for key in (api.admin, api.viewer):
            allowed = visible(key)

            def exactly(
                params: list[tuple[str, str]], want: set[str], key: str = key, allowed: set[str] = allowed
            ) -> None:
                r = api.get("/v1/events", key, [*params, ("limit", "1000")])
                assert r.status_code == 200, (params, r.text)
                assert ids(r) == want & allowed, params

            exactly([("actor", value)], {s.event_id for s in stored if s.actor == value})
            exactly([("environment", value)], {s.event_id for s in stored if s.environment == value})
            exactly([("infrastructure", value)], {s.event_id for s in stored if s.infrastructure == value})
            hits = {s.event_id for s in stored if ("application", value) in {(s.kind, s.target)}}
            exactly([("entity", f"application/{value}")], hits)
            exactly(
                [("entity", f"user/{value}")], {s.event_id for s in stored if ("user", value) in s.related}
            )
            if value != "*":
                exactly([("action", value)], set())
                exactly([("action", f"{value}*")], set())
            else:
                assert api.get("/v1/events", key, [("action", value)]).status_code == 422

            # Path parameters: percent-encoded; a '/' cannot be inside one segment.
            r = api.get(f"/v1/users/{segment(value)}/activity", key)
            if "/" in value:
                assert r.status_code == 404, r.text
            elif key == api.admin:
                assert ids(r) == {s.event_id for s in stored if s.actor == value}
            else:
                assert r.status_code == 403, r.text
            r = api.get(f"/v1/entities/application/{segment(value)}/changes", key)
            if "/" in value:
                assert r.status_code == 404, r.text
            elif key == api.admin:
                assert ids(r) == {s.event_id for s in stored if s.target == value}
            else:
                assert r.status_code == 403, r.text
            r = api.get(f"/v1/entities/user/{segment(value)}/changes", key)
            if "/" in value:
                assert r.status_code == 404, r.text
            elif key == api.admin:
                assert ids(r) == {s.event_id for s in stored if ("user", value) in s.related}
            else:
                assert r.status_code == 403, r.text
            r = api.get(f"/v1/events/{segment(value)}", key)
            assert r.status_code in (404, 422), r.text

            # Parameters with a fixed vocabulary or shape refuse such values.
            for name in ("cursor", "since", "until", "entity_kind", "outcome", "limit"):
                r = api.get("/v1/events", key, [(name, value)])
                assert r.status_code == (400 if _unanswerable([(name, value)]) else 422), (
                    name,
                    value,
                    r.text,
                )
                assert name in detail(r)

            # The search box: a syntax error or a result inside the caller's scope.
            r = api.get("/v1/events", key, [("q", value), ("limit", "1000")])
            assert r.status_code in (200, 422), r.text
            if r.status_code == 200:
                assert ids(r) <= allowed

    assert (api.count(), api.count("dead_letters"), api.tables()) == before


def test_hostile_reads_are_audited_intact(store: Store) -> None:
    """Reads are recorded as events: hostile query values must not break that record."""
    api = make_api(store, ApiSettings(audit_reads=True))
    auditor = api.embedded.services.auditor
    assert auditor is not None
    assert api.post([event(0)]).status_code == 200
    for value in HOSTILE:
        assert api.get("/v1/events", params=[("actor", value)]).status_code == 200
    assert auditor.not_recorded == 0
    assert api.dead_letters() == []
    r = api.get("/v1/events", params=[("action", "audit_log.read"), ("limit", "1000"), ("fields", "full")])
    recorded = sorted(item["details"]["query"]["actor"] for item in r.json()["items"])
    assert recorded == sorted(HOSTILE)


# --------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------


def test_reingesting_the_same_batch_stores_each_event_once(api: Api) -> None:
    batch = [event(i, target={"kind": "application", "id": f"a{i % 3}"}) for i in range(12)]
    first = api.post(batch).json()
    assert (first["stored"], first["duplicates"]) == (12, 0)
    again = api.post(batch).json()
    assert (again["stored"], again["duplicates"]) == (0, 12)
    # The same events as NDJSON, with the ids in upper case: still the same events.
    shouted = [{**e, "event_id": e["event_id"].upper()} for e in batch]
    body = b"\n".join(orjson.dumps(e) for e in shouted)
    third = api.post(content=body, content_type="application/x-ndjson").json()
    assert (third["stored"], third["duplicates"]) == (0, 12)
    # One event twice in one batch.
    twin = event(40)
    fourth = api.post([twin, twin]).json()
    assert (fourth["stored"], fourth["duplicates"]) == (1, 1)

    assert api.count() == 13
    listed = api.get("/v1/events", params=[("limit", "1000")]).json()["items"]
    assert sorted(i["event_id"] for i in listed) == sorted(
        [e["event_id"] for e in batch] + [twin["event_id"]]
    )


# --------------------------------------------------------------------------------------
# Found by these tests: product bugs, fixed; kept as regression tests
# --------------------------------------------------------------------------------------


def test_occurred_at_before_year_1000_is_rejected_alone_or_stored_faithfully(api: Api) -> None:
    for n, year in enumerate((1, 10, 99, 999)):
        good = event(2 * n)
        odd = event(2 * n + 1, occurred_at=f"{year:04d}-06-15T12:34:56.789Z")
        r = api.post([good, odd])
        assert r.status_code in (200, 207), (year, r.text)
        assert api.get(f"/v1/events/{good['event_id']}").status_code == 200, year
        if r.status_code == 207:
            [rejection] = r.json()["rejected"]
            assert rejection["index"] == 1 and "occurred_at" in rejection["reason"]
        else:
            stored = api.get(f"/v1/events/{odd['event_id']}").json()
            assert stored["occurred_at"] == odd["occurred_at"], (year, stored["occurred_at"])


def test_cursor_with_an_unusual_uuid_spelling_is_422_not_5xx(api: Api) -> None:
    assert api.post([event(i) for i in range(3)]).status_code == 200
    cursor = api.get("/v1/events", params=[("limit", "1")]).json()["next_cursor"]
    ts, event_id, fingerprint = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for spelling in ("{" + event_id + "}", "urn:uuid:" + event_id):
        forged = base64.urlsafe_b64encode(orjson.dumps([ts, spelling, fingerprint])).decode().rstrip("=")
        r = api.get("/v1/events", params=[("limit", "1"), ("cursor", forged)])
        assert r.status_code < 500, (spelling, r.status_code, r.text)


def test_cursor_holding_a_list_or_an_object_is_422_naming_the_cursor(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=False))
    api.client = TestClient(api.embedded.app, raise_server_exceptions=False)
    assert api.post([event(i) for i in range(3)]).status_code == 200
    cursor = api.get("/v1/events", params=[("limit", "1")]).json()["next_cursor"]
    ts, event_id, fingerprint = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for forged_parts in ([ts, [event_id], fingerprint], [ts, {"id": event_id}, fingerprint],
                         [ts, event_id, [fingerprint]], [ts, event_id, {"q": fingerprint}]):  # fmt: skip
        forged = base64.urlsafe_b64encode(orjson.dumps(forged_parts)).decode().rstrip("=")
        r = api.get("/v1/events", params=[("limit", "1"), ("cursor", forged)])
        assert r.status_code == 400 and "cursor" in r.json()["detail"], (forged_parts, r.text)


def test_the_viewer_clock_out_of_range_is_ignored_not_500(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=False))
    api.client = TestClient(api.embedded.app, raise_server_exceptions=False)
    r = api.client.post("/ui/login", data={"api_key": api.admin, "next": ""}, follow_redirects=False)
    session = r.cookies["auditlog_session"]
    api.client.cookies.clear()
    for at in ("253402300800000", "999999999999999", "0", "-1", "abc"):
        page = api.client.get(f"/ui/?at={at}&q=after:-7d", headers={"Cookie": f"auditlog_session={session}"})
        assert page.status_code == 200, (at, page.status_code)


def test_deeply_nested_details_are_rejected_alone(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=False))
    api.client = TestClient(api.embedded.app, raise_server_exceptions=False)
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    good = event(0)
    for n, bad in enumerate(
        [event(1, details={"d": deep}), event(2, changes=[{"field": "f", "old": deep, "new": None}])]
    ):
        # The standard library encodes what orjson would refuse to (orjson stops at 254 levels).
        r = api.post(content=json.dumps([good, bad]).encode())
        assert r.status_code == 207, (n, r.status_code, r.text[:200])
        [rejection] = r.json()["rejected"]
        assert rejection["index"] == 1
    assert api.get(f"/v1/events/{good['event_id']}").status_code == 200
    assert len(api.dead_letters()) == 2


# --------------------------------------------------------------------------------------
# Evidence is stored as it was sent, or refused with the reason
# --------------------------------------------------------------------------------------


def test_duplicate_keys_are_refused_not_resolved_to_the_last(api: Api) -> None:
    body = (
        b'[{"schema_version":1,"event_id":"0192f3a0-0000-7000-8000-0000000000d1",'
        b'"occurred_at":"2026-02-03T10:00:00Z","infrastructure":"infra-1",'
        b'"actor":{"id":"priya.raman"},"actor":{"id":"mallory"},'
        b'"action":"application.deploy","target":{"kind":"application","id":"a0"}}]'
    )
    for content_type, data in (("application/json", body), ("application/x-ndjson", body[1:-1] + b"\n")):
        r = api.client.post(
            "/v1/events", content=data, headers={**auth(api.ingester), "Content-Type": content_type}
        )
        assert r.status_code == 422, r.text
        assert "duplicate key 'actor'" in r.json()["detail"]
    assert api.count() == 0


def test_a_lone_surrogate_escape_is_refused_and_a_pair_is_kept(api: Api) -> None:
    # Found by schemathesis: "\\ud800" alone decodes to no character, and broke the details'
    # size check with a 500. A pair is one character (U+1F600) and is stored as sent.
    template = (
        '{"schema_version":1,"event_id":"0192f3a0-0000-7000-8000-0000000000d%d",'
        '"occurred_at":"2026-02-03T10:00:00Z","infrastructure":"infra-1","actor":{"id":"priya.raman"},'
        '"action":"application.deploy","target":{"kind":"application","id":"a0"},"details":{"note":"%s"}}'
    )
    headers = {**auth(api.ingester), "Content-Type": "application/json"}
    for n, text in enumerate(("\\ud800", "x\\uDC00y", "\\ude00\\ud83d")):
        r = api.client.post("/v1/events", content=(template % (n, text)).encode(), headers=headers)
        assert r.status_code == 422 and "lone surrogate" in r.json()["detail"], r.text
    # The same half of a pair, encoded as UTF-8 bytes rather than escaped: not UTF-8 either.
    raw = (template % (8, "@")).encode().replace(b"@", b"\xed\xa0\x80")
    r = api.client.post("/v1/events", content=raw, headers=headers)
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"], r.text
    r = api.client.post("/v1/events", content=(template % (9, "\\ud83d\\ude00")).encode(), headers=headers)
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    [row] = api.get("/v1/events", params=[("fields", "full")]).json()["items"]
    assert row["details"] == {"note": "\U0001f600"}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"details": {"n": 2**64}}, "beyond what JSON readers keep exactly"),
        ({"details": {"n": [1, {"m": -(2**53)}]}}, "beyond what JSON readers keep exactly"),
        ({"changes": [{"field": "f", "old": 0, "new": 2**60}]}, "beyond what JSON readers keep exactly"),
        ({"changes": [{"field": f"f{i}", "old": "", "new": "x" * 100_000} for i in range(9)]}, "larger than"),
    ],
)
def test_numbers_and_sizes_that_would_change_are_rejected_with_the_reason(
    api: Api, overrides: dict[str, Any], problem: str
) -> None:
    # The standard library writes integers of any size, as a careless producer would.
    r = api.post(content=json.dumps([event(0, **overrides), event(1)]).encode())
    assert r.status_code == 207, r.text
    [rejected] = r.json()["rejected"]
    assert problem in rejected["reason"]
    assert api.count() == 1 and len(api.dead_letters()) == 1


def test_nan_in_a_body_is_not_json(api: Api) -> None:
    data = orjson.dumps([event(0)]).replace(
        b'"outcome":"success"', b'"outcome":"success","details":{"x":NaN}'
    )
    r = api.client.post(
        "/v1/events", content=data, headers={**auth(api.ingester), "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "NaN is not JSON" in r.text


def test_an_event_dated_after_its_receipt_plus_the_skew_is_rejected(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=False, max_future_skew_s=60))
    now = datetime.now(UTC)
    soon = (now + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    later = (now + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    r = api.post(
        [
            event(0, occurred_at=soon),
            event(1, occurred_at=later),
            event(2, occurred_at="2199-12-31T23:59:59Z"),
        ]
    )
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["stored"] == 1
    assert [x["index"] for x in body["rejected"]] == [1, 2]
    assert all(
        "after the event was received" in x["reason"] and "60 s" in x["reason"] for x in body["rejected"]
    )
    assert len(api.dead_letters()) == 2


def test_a_posted_audit_log_event_is_refused_as_forged(store: Store) -> None:
    api = make_api(store, ApiSettings(audit_reads=True))
    forged = event(
        0,
        action="audit_log.export",
        actor={"id": "priya.raman", "type": "user"},
        target={"kind": "infrastructure", "id": "infra-1"},
        source={"service": "auditlog-query-api", "host": "api-1", "version": "1"},
    )
    spelled = event(1, action="Audit_Log.Read", target={"kind": "infrastructure", "id": "infra-1"})
    r = api.post([forged, spelled, event(2)])
    assert r.status_code == 207, r.text
    rejected = r.json()["rejected"]
    assert [x["index"] for x in rejected] == [0, 1]
    assert all("reserved" in x["reason"] and "forged" in x["reason"] for x in rejected)
    # The service's own record of reads is stored, and says where it came from.
    assert api.get("/v1/events", api.admin).status_code == 200
    reads = api.get("/v1/events", api.admin, [("q", "action:audit_log.read"), ("fields", "full")]).json()[
        "items"
    ]
    assert reads and {r["provenance"]["ingest_source"] for r in reads} == {"read-audit"}


def test_every_posted_row_records_the_key_it_came_with(api: Api) -> None:
    assert api.post([event(0)]).status_code == 200
    [row] = api.get("/v1/events", api.admin, [("fields", "full")]).json()["items"]
    key_id = next(k.key_id for k in api.store.keys.list() if k.user_id == "ingest-bot")
    assert row["provenance"] == {"ingest_source": "api", "ingest_key_id": key_id}
    csv_text = api.get("/v1/events/export", api.admin, [("format", "csv")]).text
    assert "provenance.ingest_key_id" in csv_text.splitlines()[0] and key_id in csv_text
