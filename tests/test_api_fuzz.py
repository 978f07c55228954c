"""A bounded fuzz run of the whole API: any method, path and parameters the OpenAPI document
names, with hostile values, must answer below 500."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.store import Store
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [{"id": "admin", "name": "A", "app_level": "full_control", "manage_infrastructure": True}],
        "users": [{"id": "ada", "name": "Ada", "default_role": "admin"}],
    }
)

ODD = ["", "-1", "0", "1", "1001", "99999999999999999999", "2026-13-45", "null", "[]", "{}", "after:-7d"]
ODD += ["\x00", "%", "' OR 1=1", str(uuid.uuid4()), "application/app-1", "a" * 3000]
values = st.one_of(
    st.text(max_size=40), st.sampled_from(ODD), st.integers(min_value=-(2**70), max_value=2**70).map(str)
)
PARAMS = ["since", "until", "actor", "action", "entity_kind", "entity", "environment", "outcome"]
PARAMS += ["infrastructure", "q", "limit", "cursor", "include_total", "format", "size", "next", "at"]
SEGMENTS = ["application", "user", "x", str(uuid.uuid4()), "0123456789abcdef"]
BODIES = [b'{"user_id":"ada","expires_at":"2999-01-01T00:00:00Z"}', b'[{"schema_version":1}]']


def _client(store: Store) -> tuple[TestClient, dict[str, str], list[tuple[str, str]]]:
    embedded = build_embedded(store, api_settings=ApiSettings(audit_reads=True), directory=DIRECTORY)
    client = TestClient(embedded.app, raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {make_key(store, 'ada', can_ingest=True)}"}
    paths = []
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        for method in ops:
            paths.append((method.upper(), path))
    paths += [("GET", "/ui/"), ("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout")]
    return client, headers, paths


def _fill(path: str, segment: str) -> str:
    out = []
    for part in path.split("/"):
        out.append(segment if part.startswith("{") else part)
    return "/".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_request_the_api_names_answers_5xx(store: Store, data: st.DataObject) -> None:
    if not hasattr(store, "_fuzz"):
        store._fuzz = _client(store)  # type: ignore[attr-defined]
    client, headers, paths = store._fuzz  # type: ignore[attr-defined]
    method, path = data.draw(st.sampled_from(paths), label="operation")
    segment = data.draw(
        st.one_of(st.sampled_from(SEGMENTS), st.text(min_size=1, max_size=20)), label="segment"
    )
    url = _fill(path, quote(segment, safe=""))
    params = data.draw(st.lists(st.tuples(st.sampled_from(PARAMS), values), max_size=5), label="params")
    body: Any = data.draw(
        st.one_of(st.none(), st.binary(max_size=200), st.sampled_from(BODIES)), label="body"
    )
    auth = headers if data.draw(st.booleans(), label="authenticated") else {}
    r = client.request(method, url, params=params, content=body, headers=auth)
    assert r.status_code < 500, (method, url, params, body, r.status_code, r.text[:300])
