"""POST /v1/sql: an analyst's SELECT sees exactly the rows the caller may read, whatever the query
does, and nothing but the analyst views; every query is on record."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from auditlog.embedded import build_embedded
from producers.contract.directory import Directories, Directory
from query_api.settings import ApiSettings
from storage.store import Store
from stream.batch_ingest import BatchIngestor
from tests.grants import make_key

DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "roles": [
            {
                "id": "admin",
                "name": "Admin",
                "app_level": "full_control",
                "manage_infrastructure": True,
                "manage_teams": True,
            },
            {"id": "lister", "name": "Lister", "app_level": "list"},
        ],
        "users": [
            {"id": "u-admin", "name": "Ada Admin", "default_role": "admin"},
            {"id": "u-dev", "name": "Dev", "app_roles": {"app-3": "lister"}},
            {"id": "u-two", "name": "Two", "app_roles": {"app-1": "lister", "app-4": "lister"}},
        ],
        "environments": [{"id": "env-prod", "name": "Production"}, {"id": "env-dev", "name": "Development"}],
        "applications": [{"id": f"app-{i}", "name": f"App {i}"} for i in range(6)],
    }
)
CALLERS = ("u-admin", "u-dev", "u-two")


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "schema_version": 1,
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "occurred_at": f"2026-10-01T08:{i // 60:02d}:{i % 60:02d}.000Z",
            "infrastructure": "acme",
            "environment": ["env-prod", "env-dev"][i % 2] if i % 5 else None,
            "actor": {"id": ["u-admin", "u-dev", "u-two"][i % 3]},
            "action": ["application.deploy", "application.update"][i % 2],
            "target": {"kind": "application", "id": f"app-{i % 6}"},
            "outcome": ["success", "failure", "denied"][i % 3],
            "changes": [{"field": "version", "old": str(i), "new": str(i + 1)}] if i % 2 else [],
        }
        for i in range(n)
    ]


@pytest.fixture
def install(store: Store) -> tuple[TestClient, dict[str, dict[str, str]]]:
    embedded = build_embedded(
        store, api_settings=ApiSettings(sql_max_rows=500, sql_enabled=True), directory=DIRECTORY
    )
    report = BatchIngestor(store, lambda: Directories([DIRECTORY]), source="api").ingest(
        _events(120), received_at_ms=1_791_000_000_000
    )
    assert report.stored == 120
    keys = {user: {"Authorization": "Bearer " + make_key(store, user)} for user in CALLERS}
    return TestClient(embedded.app), keys


def _sql(client: TestClient, key: dict[str, str], query: str, fmt: str = "json") -> Any:
    return client.post("/v1/sql", json={"query": query, "format": fmt}, headers=key)


def _ids(client: TestClient, key: dict[str, str], query: str) -> set[str]:
    r = _sql(client, key, query)
    assert r.status_code == 200, r.text
    return {row["id"] for row in r.json()["rows"]}


# Whatever the query does, it sees the caller's rows: each of these must give the ids the API's
# own listing gives that caller (the reference: the read path of the permission model).
ANALYST_QUERIES = (
    "SELECT toString(event_id) AS id FROM analyst_events",
    "SELECT id FROM (SELECT toString(event_id) AS id, outcome FROM analyst_events) WHERE outcome != ''",
    "SELECT toString(event_id) AS id FROM analyst_events WHERE outcome = 'success' "
    "UNION ALL SELECT toString(event_id) FROM analyst_events WHERE outcome != 'success'",
    "WITH mine AS (SELECT * FROM analyst_events) SELECT toString(event_id) AS id FROM mine",
    "SELECT toString(a.event_id) AS id FROM analyst_events AS a "
    "JOIN analyst_events AS b ON a.event_id = b.event_id",
    "SELECT toString(event_id) AS id FROM analyst_events "
    "WHERE event_id IN (SELECT event_id FROM analyst_events)",
    "SELECT arrayJoin(groupArray(toString(event_id))) AS id FROM analyst_events",
    "SELECT toString(event_id) AS id FROM analyst_events "
    "WHERE target_id IN (SELECT target_id FROM analyst_events) -- a comment\n",
    "SELECT id FROM (SELECT toString(event_id) AS id, format('{} did {}', actor_id, action) AS said "
    "FROM analyst_events) WHERE said != ''",
    "SELECT toString(event_id) AS id FROM analyst_events "
    "INTERSECT SELECT toString(event_id) FROM analyst_events",
)


@pytest.mark.parametrize("caller", CALLERS)
def test_every_query_shape_sees_exactly_the_callers_rows(
    install: tuple[TestClient, dict[str, dict[str, str]]], caller: str
) -> None:
    client, keys = install
    listed = client.get("/v1/events?limit=1000&q=-action:audit_log.*", headers=keys[caller]).json()["items"]
    allowed = {e["event_id"] for e in listed}
    assert 0 < len(allowed) <= 120
    for query in ANALYST_QUERIES:
        assert _ids(client, keys[caller], query) == allowed, query
    [count] = _sql(client, keys[caller], "SELECT count() AS n FROM analyst_events").json()["rows"]
    assert int(count["n"]) == len(allowed)


def test_the_friendly_columns_and_the_formats(install: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    import pyarrow.parquet as pq

    client, keys = install
    query = (
        "SELECT environment, environment_name, c.field AS field, c.new AS new FROM analyst_events "
        "ARRAY JOIN changes AS c WHERE target_id = 'app-3' ORDER BY occurred_at LIMIT 2"
    )
    rows = _sql(client, keys["u-dev"], query).json()["rows"]
    assert rows == [
        {"environment": "env-dev", "environment_name": "Development", "field": "version", "new": '"4"'},
        {"environment": "env-dev", "environment_name": "Development", "field": "version", "new": '"10"'},
    ]
    csv = _sql(client, keys["u-dev"], query, "csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == '"environment","environment_name","field","new"'
    parquet = _sql(client, keys["u-dev"], query, "parquet")
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 2


HOSTILE = (
    ("SELECT * FROM system.tables", "only the analyst views"),
    ("SELECT name FROM system.users", "only the analyst views"),
    ("SELECT * FROM auditlog.audit_events", "only the analyst views"),
    ("SELECT * FROM `auditlog`.`audit_events`", "only the analyst views"),
    ("SELECT 1 WHERE 'x' IN system.users", "only the analyst views"),
    ("SELECT * FROM audit_events", "code 60"),  # unqualified: resolved nowhere
    ("SELECT * FROM audit_events", "unknown table: only"),  # and no hint of the real tables
    (
        "SELECT * FROM analyst_events AS a JOIN auditlog.audit_events AS b ON a.event_id = b.event_id",
        "analyst",
    ),
    ("SELECT count() FROM (SELECT * FROM auditlog.event_keys)", "only the analyst views"),
    ("WITH analyst_events AS (SELECT * FROM auditlog.audit_events) SELECT * FROM analyst_events", "analyst"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table functions"),
    ("SELECT file('/etc/passwd')", "table functions"),
    ("SELECT * FROM url('http://127.0.0.1:1/x', 'CSV')", "table functions"),
    ("SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV')", "table functions"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "table functions"),
    ("SELECT * FROM numbers(10)", "table functions"),
    ("SELECT * FROM merge('auditlog', '.*')", "table functions"),
    ("SELECT * FROM view(SELECT * FROM auditlog.audit_events)", "table functions"),
    ("SELECT dictGet('auditlog.d', 'x', 1)", "reads outside"),
    # Found in review: APPLY hid its function and subqueries from the parser's printed tree.
    ("SELECT * APPLY(file) FROM (SELECT '/etc/passwd' AS p)", "ColumnsApplyTransformer is not allowed"),
    (
        "SELECT * APPLY(x -> (SELECT groupArray(tuple(*)) FROM auditlog.api_keys)) FROM (SELECT 1 AS p)",
        "is not allowed",
    ),
    (
        "SELECT * APPLY(x -> (SELECT count() FROM auditlog.audit_events)) FROM analyst_events",
        "is not allowed",
    ),
    ("SELECT COLUMNS('.*') APPLY(toString) FROM analyst_events", "is not allowed"),
    ("SELECT getServerSetting('path')", "reads outside"),
    ("SELECT getSetting('max_result_rows')", "reads outside"),
    ("SELECT hasColumnInTable('auditlog', 'api_keys', 'key_hash')", "reads outside"),
    ("SELECT * FROM tables", "only analyst_events and analyst_log_reads"),
    ("SELECT getMergeTreeSetting('max_suspicious_broken_parts')", "reads outside"),
    ("SELECT tcpPort(), hostName()", "reads outside"),
    ("SELECT 1 AS `x\r          Literal 1`", "control characters"),
    ("SELECT * FROM analyst_events_for(s_infra = 'acme', s_everything = 1)", "table functions"),
    # Found in review: a named lambda replaced _CAST, which binds the scope's typed values.
    (
        "WITH (v, t) -> multiIf(t = 'UInt8', '1', t = 'String', 'x', '[]') AS _CAST "
        "SELECT target_id, count() AS c FROM analyst_events GROUP BY 1",
        "named lambda",
    ),
    (
        "SELECT * FROM (WITH (v, t) -> if(t = 'UInt8', '1', '[]') AS _CAST SELECT * FROM analyst_events)",
        "named lambda",
    ),
    ("SELECT * FROM analyst_events SETTINGS max_execution_time = 1000", "SETTINGS"),
    ("SELECT * FROM analyst_events LIMIT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT {p:String}", "not one SELECT"),
    ("SELECT 1; DROP TABLE auditlog.audit_events", "not one SELECT"),
    ("SELECT 1) UNION ALL (SELECT * FROM auditlog.audit_events", "outside its own parentheses"),
    ("SELECT 1) UNION ALL (SELECT toString(event_id) FROM analyst_events", "outside its own parentheses"),
    ("SELECT 1) INTO OUTFILE '/tmp/x' FORMAT CSV --", "not one SELECT"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "not one SELECT"),
    ("SELECT 1 FORMAT CSV", "not one SELECT"),
    ("DROP TABLE auditlog.audit_events", "not one SELECT"),
    ("INSERT INTO auditlog.audit_events SELECT * FROM analyst_events", "not one SELECT"),
    ("SELECT 1 /* ) UNION ALL SELECT * FROM auditlog.audit_events", "not one SELECT"),
    ("", "the query is empty"),
)


@pytest.mark.parametrize(("query", "why"), HOSTILE)
def test_hostile_sql_is_refused_with_a_clear_error(
    install: tuple[TestClient, dict[str, dict[str, str]]], query: str, why: str
) -> None:
    client, keys = install
    r = _sql(client, keys["u-dev"], query)
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert why in r.text, (query, r.text)


def test_analyst_sql_is_off_unless_asked_for(store: Store) -> None:
    client = TestClient(build_embedded(store, api_settings=ApiSettings(), directory=DIRECTORY).app)
    key = {"Authorization": "Bearer " + make_key(store, "u-admin")}
    r = _sql(client, key, "SELECT count() FROM analyst_events")
    assert r.status_code == 403 and "AUDITLOG_API_SQL_ENABLED" in r.text


def test_the_scoped_views_cannot_be_called_by_name(
    install: tuple[TestClient, dict[str, dict[str, str]]], store: Store
) -> None:
    client, keys = install
    call = f"{store.database}.analyst_events_for(s_infra = 'acme', s_everything = 1)"
    r = _sql(client, keys["u-dev"], f"SELECT 1 WHERE 1 IN {call}")
    assert r.status_code == 400 and "only the analyst views" in r.text, r.text


def test_a_comment_cannot_hide_a_second_query(install: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, keys = install
    plain = _ids(client, keys["u-dev"], "SELECT toString(event_id) AS id FROM analyst_events")
    commented = _ids(
        client,
        keys["u-dev"],
        "SELECT toString(event_id) AS id FROM analyst_events -- ) UNION ALL (SELECT name FROM system.tables",
    )
    assert commented == plain  # the rest of the line is a comment: the caller's rows, no more


# Found in review: a CTE's body is resolved inside the caller's query, so a lambda named like a
# function (`in`, `and`, `equals`, `nullIf`) replaced it in the scope's own predicate. The scope
# now lives in parameterized views, and named lambdas are refused (one named _CAST rewrote the
# views' bound arguments).
OVERRIDES = (
    "WITH (x, y) -> 1 AS `in` SELECT toString(event_id) AS id FROM analyst_events",
    "SELECT id FROM (WITH (x, y) -> 1 AS `in` SELECT toString(event_id) AS id FROM analyst_events)",
    "WITH (x, y) -> 1 AS `and` SELECT toString(event_id) AS id FROM analyst_events",
    "WITH (x, y) -> 1 AS `or`, (x, y) -> 1 AS equals SELECT toString(event_id) AS id FROM analyst_events",
    "WITH x -> 1 AS startsWith, (x, y) -> 1 AS notEquals SELECT toString(event_id) AS id FROM analyst_events",
)


def test_a_lambda_named_like_a_function_does_not_reach_the_scope(
    install: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, keys = install
    for query in OVERRIDES:
        r = _sql(client, keys["u-dev"], query)
        assert r.status_code == 400 and "named lambda" in r.text, query
    # Unnamed lambdas are fine, and plain aliases named like functions or the views' columns
    # and parameters do not reach the scope's views.
    allowed = _ids(client, keys["u-dev"], "SELECT toString(event_id) AS id FROM analyst_events")
    shadowed = _ids(
        client,
        keys["u-dev"],
        "WITH 1 AS equals, 'x' AS scope_key, 'globex' AS s_infra, 1 AS s_everything "
        "SELECT toString(event_id) AS id FROM analyst_events WHERE arrayAll(x -> x != '', [id])",
    )
    assert shadowed == allowed


def test_limits_and_the_record_of_every_query(install: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, keys = install
    too_many = _sql(client, keys["u-admin"], "SELECT * FROM analyst_events AS a, analyst_events AS b")
    assert too_many.status_code == 400 and "more than 500 rows" in too_many.text
    assert _sql(client, keys["u-admin"], "SELECT no_such_column FROM analyst_events").status_code == 400
    _sql(client, keys["u-dev"], "SELECT count() FROM analyst_events WHERE outcome = 'denied'")
    _sql(client, keys["u-dev"], "SELECT * FROM system.tables")
    reads = _sql(
        client,
        keys["u-admin"],
        "SELECT actor_id, JSONExtractString(details, 'query') AS query, "
        "JSONExtractString(details, 'refused') AS why FROM analyst_log_reads "
        "WHERE JSONExtractString(details, 'view') = 'sql' ORDER BY occurred_at",
    ).json()["rows"]
    by_dev = [r for r in reads if r["actor_id"] == "u-dev"]
    assert [r["query"] for r in by_dev] == [
        "SELECT count() FROM analyst_events WHERE outcome = 'denied'",
        "SELECT * FROM system.tables",
    ]
    assert by_dev[0]["why"] == "" and "only the analyst views" in by_dev[1]["why"]
    # The developer is no infrastructure manager: the records of reads are not theirs to read.
    [none] = _sql(client, keys["u-dev"], "SELECT count() AS n FROM analyst_log_reads").json()["rows"]
    assert int(none["n"]) == 0
