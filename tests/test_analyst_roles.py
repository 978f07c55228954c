"""Analysts' ClickHouse roles: the generated DDL parses in ClickHouse's parser, each role's row
policy condition selects exactly the rows the API's reader gives its user, and a change of
grants applies at the next query. Offline in chDB (which has no access control: the
policies are evaluated as WHERE conditions over the dictionary they read); applied on a
server only where AUDITLOG_TEST_CLICKHOUSE_URL names one."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from producers.contract.directory import Directory
from producers.contract.permissions import Caller, scope_for
from storage.analyst_roles import AnalystScopes, ddl, directory_condition, policy_condition, role_name
from storage.engine import Engine
from storage.reader import EventFilter, View
from storage.store import Store
from stream.batch_ingest import BatchIngestor

ROLES = [
    {
        "id": "admin",
        "name": "Admin",
        "app_level": "full_control",
        "manage_infrastructure": True,
        "manage_teams": True,
    },
    {"id": "viewer", "name": "Viewer", "app_level": "list"},
]


def _directory(dev_apps: list[str], *, with_dev: bool = True, infra: str = "acme") -> Directory:
    users: list[dict[str, Any]] = [{"id": "ada", "name": "Ada", "default_role": "admin"}]
    if with_dev:
        users.append({"id": "o'brien`dev", "name": "Dev", "app_roles": {a: "viewer" for a in dev_apps}})
    return Directory.model_validate(
        {
            "infrastructure": infra,
            "roles": ROLES,
            "users": users,
            "teams": [{"id": "team-1", "name": "Team"}],
            "applications": [{"id": f"app-{i}", "name": f"App {i}", "team": "team-1"} for i in (1, 2, 3)],
            "deployment_plans": [{"id": "plan-1", "name": "Plan", "applications": ["app-1", "app-2"]}],
            "environments": [{"id": "env-prod", "name": "Production"}],
        }
    )


def _events(infra: str = "acme") -> list[dict[str, Any]]:
    targets = [("application", f"app-{i}") for i in (1, 2, 3)] + [
        ("deployment_plan", "plan-1"),
        ("team", "team-1"),
        ("user", "ada"),
        ("role", "viewer"),
        ("infrastructure", infra),
    ]
    return [
        {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "occurred_at": f"2026-10-0{1 + n % 8}T10:00:00Z",
            "infrastructure": infra,
            "actor": {"id": "ada"},
            "action": f"{kind}.update",
            "target": {"kind": kind, "id": ident},
            "environment": "env-prod",
        }
        for n, (kind, ident) in enumerate(targets * 3)
    ]


def _dictionary(store: Store) -> None:
    # chDB has no users: the dictionary's source reads as the process does.
    [sql] = [
        s
        for s in ddl(store.directory.load(), database=store.database, service_user="auditlog")
        if "DICTIONARY" in s
    ]
    store.engine.command(sql.replace(" USER 'auditlog_dictionary'", ""))


def _policy_rows(store: Store, infra: str, user: str) -> set[str]:
    rows = store.engine.query(
        f"SELECT toString(event_id) AS id FROM {store.database}.audit_events "
        f"WHERE {policy_condition(store.database, role_name(infra, user))}"
    )
    return {r["id"] for r in rows}


def _reader_rows(store: Store, infra: str, user: str) -> set[str]:
    scope = scope_for(Caller(user_id=user, infrastructure=infra), store.directory.load())
    page = store.reader.page(scope=scope, view=View(), filters=EventFilter(), limit=1000)
    return {str(e["event_id"]) for e in page.items}


@pytest.fixture
def roles_store(chdb_engine: Engine) -> Store:
    store = Store(chdb_engine, database="t_" + uuid.uuid4().hex[:12], analyst_roles=True)
    for infra in ("acme", "globex"):
        store.directory.replace(_directory(["app-1"], infra=infra))
    directories = store.directory.load()
    for infra in ("acme", "globex"):
        report = BatchIngestor(store, lambda: directories, source="api").ingest(
            _events(infra), received_at_ms=1_796_000_000_000
        )
        assert report.stored == 24 and not report.rejected
    _dictionary(store)
    return store


def test_every_statement_parses_in_clickhouse(roles_store: Store) -> None:
    directories = roles_store.directory.load()
    for cluster in (None, "audit"):
        stmts = ddl(directories, database=roles_store.database, service_user="auditlog", cluster=cluster)
        assert len(stmts) == 3 + (3 if cluster else 2) + 4 * (1 + 4 + (3 if cluster else 2))
        for sql in stmts:
            roles_store.engine.query_raw(f"EXPLAIN AST {sql}", fmt="TSV")
        # A quote in a user id is escaped, not an injection.
        assert any("`auditlog:acme/o'brien\\`dev`" in s for s in stmts)
        assert any("tuple('auditlog:acme/o\\'brien`dev')" in s for s in stmts)


def test_each_roles_policy_is_its_users_scope_and_a_grant_applies_at_once(roles_store: Store) -> None:
    store, dev = roles_store, "o'brien`dev"
    for infra in ("acme", "globex"):
        for user in ("ada", dev):
            assert _policy_rows(store, infra, user) == _reader_rows(store, infra, user), (infra, user)
    ada, only_app1 = _policy_rows(store, "acme", "ada"), _policy_rows(store, "acme", dev)
    assert len(ada) == 24 and 0 < len(only_app1) < len(ada)
    # Neither infrastructure's roles see the other's rows; a role nobody defined sees nothing.
    assert not _policy_rows(store, "acme", "ada") & _policy_rows(store, "globex", "ada")
    assert _policy_rows(store, "acme", "nobody") == set()

    # A grant given: the next query sees it (the dictionary is reloaded by the directory's write).
    store.directory.replace(_directory(["app-1", "app-2"]))
    wider = _policy_rows(store, "acme", dev)
    assert wider == _reader_rows(store, "acme", dev) and wider > only_app1
    # The user removed from the directory: its role keeps a scope of nothing.
    store.directory.replace(_directory([], with_dev=False))
    assert _policy_rows(store, "acme", dev) == set()
    assert AnalystScopes(store.engine, database=store.database).sync(store.directory.load()) == 0


def test_the_environment_names_are_the_roles_infrastructures_only(roles_store: Store) -> None:
    db = roles_store.database
    rows = roles_store.engine.query(
        f"SELECT infrastructure, kind, id FROM {db}.directory_entities "
        f"WHERE {directory_condition(db, role_name('acme', 'ada'))}"
    )
    assert {(r["infrastructure"], r["kind"], r["id"]) for r in rows} == {("acme", "environment", "env-prod")}


@pytest.mark.skipif(
    not os.environ.get("AUDITLOG_TEST_CLICKHOUSE_URL"),
    reason="no ClickHouse server here (AUDITLOG_TEST_CLICKHOUSE_URL): the roles are applied on a server only",
)
def test_roles_on_a_server() -> None:  # pragma: no cover - needs a server
    import clickhouse_connect

    from storage.engine import ServerEngine

    url = os.environ["AUDITLOG_TEST_CLICKHOUSE_URL"]
    engine = ServerEngine(url)
    store = Store(engine, database="t_" + uuid.uuid4().hex[:12], analyst_roles=True)
    store.directory.replace(_directory(["app-1"]))
    directories = store.directory.load()
    BatchIngestor(store, lambda: directories, source="api").ingest(
        _events(), received_at_ms=1_796_000_000_000
    )
    service = engine.query("SELECT currentUser() AS u")[0]["u"]
    for sql in ddl(directories, database=store.database, service_user=service):
        engine.command(sql)
    user, password = f"analyst_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    engine.command(f"CREATE USER {user} IDENTIFIED BY '{password}'")
    engine.command(f"GRANT `{role_name('acme', 'ada')}` TO {user}")
    engine.command(f"SET DEFAULT ROLE ALL TO {user}")
    host = url.split("@")[-1].split("/")[0]
    client = clickhouse_connect.get_client(dsn=f"clickhouse://{user}:{password}@{host}/")
    seen = {
        str(r[0]) for r in client.query(f"SELECT event_id FROM {store.database}.analyst_events").result_rows
    }
    assert seen == _reader_rows(store, "acme", "ada") - {
        r["id"]
        for r in engine.query(
            f"SELECT toString(event_id) AS id FROM {store.database}.audit_events "
            "WHERE startsWith(action, 'audit_log.')"
        )
    }
