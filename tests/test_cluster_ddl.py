"""deploy/: the cluster DDL, the compose file, the Kubernetes manifests and the worker probe.

What cannot run here (no Docker engine, no ClickHouse cluster, no Kubernetes) is
validated instead:

* every generated statement parses as ClickHouse SQL (chDB's `formatQuery`), the
  single-node script creates exactly what `migrate()` creates (SHOW CREATE TABLE),
  and the cluster's local tables, stripped of replication, are the single-node
  tables (every column of `storage.record.COLUMNS`, same indexes, projection and
  keys), with the materialized view filling the entity log shard by shard;
* deploy/clickhouse/cluster.sql is the output of `auditlog schema --cluster audit`;
* environment variable names in the compose file and the manifests are fields of
  the services' pydantic-settings classes (derived from the classes, so a typo
  fails), and their values validate against those classes;
* container commands parse with the real `auditlog` argument parser.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from auditlog.cli import build_parser, main
from auditlog.retention_job import RetentionSettings
from producers.publisher import ProducerSettings
from query_api.settings import ApiSettings
from storage import cluster_ddl
from storage.cluster_ddl import Statement, parse_script, render, statements
from storage.engine import Engine, StoreError
from storage.migrations import MIGRATIONS, Migration, migrate
from storage.record import COLUMNS, KEY_COLUMNS
from storage.store import StoreSettings
from stream.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CLUSTER = "audit"
TABLES = ("audit_events", "audit_entity_index", "dead_letters", "directory_entities", "api_keys")
SHARDED = ("audit_events", "audit_entity_index", "dead_letters")
EVERY_NODE = ("directory_entities", "api_keys", "schema_migrations")


def _db() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def _fmt(engine: Engine, sql: str) -> str:
    return str(engine.query("SELECT formatQuery({q:String}) AS f", params={"q": sql})[0]["f"])


def _show(engine: Engine, db: str, table: str) -> str:
    row = engine.query(f"SHOW CREATE TABLE {db}.{table}")[0]
    return str(next(iter(row.values())))


def _columns(engine: Engine, db: str, table: str) -> list[tuple[str, str]]:
    rows = engine.query(
        "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = {t:String} "
        "ORDER BY position",
        params={"d": db, "t": table},
    )
    return [(r["name"], r["type"]) for r in rows]


def _tables(engine: Engine, db: str) -> dict[str, str]:
    rows = engine.query(
        "SELECT name, engine FROM system.tables WHERE database = {d:String}", params={"d": db}
    )
    return {r["name"]: r["engine"] for r in rows}


# ------------------------------------------------------------------ the DDL parses


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"retention_days": 400},
        {"cluster": CLUSTER},
        {"cluster": CLUSTER, "retention_days": 90},
        {"cluster": "prod_eu", "database": "audit2", "shard_key": "cityHash64(infrastructure, event_id)"},
    ],
    ids=["single", "single-ttl", "cluster", "cluster-ttl", "cluster-custom"],
)
def test_every_generated_statement_parses_as_clickhouse_sql(chdb_engine: Engine, options: Any) -> None:
    stmts = statements(**options)
    assert stmts
    for s in stmts:
        formatted = _fmt(chdb_engine, s.sql)
        # The formatter's output parses again to itself: nothing was dropped or misread.
        assert _fmt(chdb_engine, formatted) == formatted
        if "cluster" in options and s.kind != "insert":  # the insert replicates to every node
            assert f"ON CLUSTER {options['cluster']}" in formatted, s.sql
    # A script round-trips through render/parse_script statement for statement.
    assert parse_script(render(stmts, header=["a comment"])) == [s.sql.strip() for s in stmts]


def test_cluster_ddl_has_replicated_local_tables_distributed_tables_and_a_local_view(
    chdb_engine: Engine,
) -> None:
    stmts = statements(cluster=CLUSTER)
    by_table = {s.table: s for s in stmts if s.kind != "insert"}
    formatted = {s.table: _fmt(chdb_engine, s.sql) for s in by_table.values()}
    for table in SHARDED:
        local = by_table[f"{table}_local"]
        assert local.engine == "ReplicatedMergeTree"
        assert (
            "ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')"
            in (formatted[local.table])
        )
        dist = by_table[table]
        assert dist.kind == "distributed" and dist.engine == "Distributed"
        key = "rand()" if table == "dead_letters" else "cityHash64(event_id)"
        assert f"ENGINE = Distributed('{CLUSTER}', 'auditlog', '{table}_local', {key})" in formatted[table]
    for table in EVERY_NODE:
        s = by_table[table]
        assert s.kind == "table" and s.engine == "ReplicatedReplacingMergeTree"
        assert "'/clickhouse/tables/all/{database}/{table}', '{replica}'" in formatted[table]
        assert f"{table}_local" not in by_table
    # ReplacingMergeTree(version) keeps its version column once replicated.
    assert "'{replica}', version)" in formatted["directory_entities"]
    view = by_table["audit_entity_index_mv"]
    assert view.kind == "view"
    assert "TO auditlog.audit_entity_index_local" in formatted[view.table]
    assert "FROM auditlog.audit_events_local" in formatted[view.table]
    assert "audit_events\n" not in formatted[view.table]
    # Distributed tables come right after their local table, the view after its target.
    names = [s.table for s in stmts]
    for table in SHARDED:
        assert names.index(table) == names.index(f"{table}_local") + 1
    assert names.index("audit_entity_index_mv") > names.index("audit_entity_index_local")
    assert stmts[-1].kind == "insert"


def test_every_cluster_table_carries_every_stored_column(chdb_engine: Engine) -> None:
    """Create the cluster's tables in chDB, replication and sharding stripped; compare columns."""
    db = _db()
    for s in statements(cluster=CLUSTER, database=db):
        chdb_engine.command(_declustered(s))
    expected = list(COLUMNS)
    for table in ("audit_events", "audit_events_local"):
        assert _columns(chdb_engine, db, table) == expected, table
    narrow = [(name, dict(COLUMNS)[name]) for name in KEY_COLUMNS]
    for table in ("audit_entity_index", "audit_entity_index_local"):
        assert _columns(chdb_engine, db, table) == [("entity_key", "String"), *narrow], table
    for table in ("dead_letters",):
        assert _columns(chdb_engine, db, table) == _columns(chdb_engine, db, f"{table}_local")


def _declustered(s: Statement) -> str:
    """`s` runnable on one chDB: no ON CLUSTER, no Keeper path, Distributed -> Memory."""
    sql = s.sql.replace(f" ON CLUSTER {CLUSTER}", "")
    sql = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(?:, )?", r"\1(", sql)
    return re.sub(r"ENGINE = Distributed\(.*\)$", "ENGINE = Memory", sql)


def test_cluster_local_tables_are_the_single_node_tables_and_the_view_fills_each_shard(
    chdb_engine: Engine,
) -> None:
    single, clustered = _db(), _db()
    migrate(chdb_engine, single)
    for s in statements(cluster=CLUSTER, database=clustered):
        chdb_engine.command(_declustered(s))
    for table in TABLES:
        name = f"{table}_local" if table in SHARDED else table
        got = _show(chdb_engine, clustered, name).replace(clustered + ".", single + ".")
        got = got.replace(f"{single}.{name}", f"{single}.{table}")
        want = _show(chdb_engine, single, table)
        # Same columns, indexes, projection, partitioning, key and settings; only the engine
        # was replicated (stripped again here), so the text is identical.
        assert got.replace("MergeTree()", "MergeTree") == want, table
    # The view reads the shard's local table and writes the shard's local entity log.
    chdb_engine.command(
        f"INSERT INTO {clustered}.audit_events_local (event_id, occurred_at, entity_keys) "
        "VALUES (generateUUIDv4(), now64(3), ['application/a-1', 'team/t-1'])"
    )
    rows = chdb_engine.query(
        f"SELECT entity_key FROM {clustered}.audit_entity_index_local ORDER BY entity_key"
    )
    assert [r["entity_key"] for r in rows] == ["application/a-1", "team/t-1"]
    assert migrate(chdb_engine, clustered) == []  # versions recorded: the app's migrate() does nothing


def test_single_node_script_creates_exactly_what_migrate_creates(chdb_engine: Engine) -> None:
    scripted, migrated = _db(), _db()
    migrate(chdb_engine, migrated)
    for sql in parse_script(render(statements(database=scripted))):
        chdb_engine.command(sql)
    assert _tables(chdb_engine, scripted) == _tables(chdb_engine, migrated)
    for table in _tables(chdb_engine, migrated):
        if table.endswith("_mv"):
            want = _show(chdb_engine, migrated, table).replace(migrated + ".", scripted + ".")
            assert _show(chdb_engine, scripted, table) == want
        else:
            got = _show(chdb_engine, scripted, table).replace(scripted + ".", migrated + ".")
            assert got == _show(chdb_engine, migrated, table), table
    versions = "SELECT version, name FROM {d}.schema_migrations ORDER BY version"
    assert chdb_engine.query(versions.format(d=scripted)) == chdb_engine.query(versions.format(d=migrated))
    assert migrate(chdb_engine, scripted) == []
    # The script is idempotent: run again, nothing is recorded twice.
    for s in statements(database=scripted):
        chdb_engine.command(s.sql)
    assert len(chdb_engine.query(versions.format(d=scripted))) == len(MIGRATIONS)


def test_retention_applies_to_an_existing_store_and_drops_whole_parts(chdb_engine: Engine) -> None:
    db = _db()
    migrate(chdb_engine, db)
    ttl = [s for s in statements(database=db, retention_days=30) if s.kind == "alter"]
    assert {s.table for s in ttl} == set(cluster_ddl.TTL_COLUMNS)
    for s in ttl:
        chdb_engine.command(s.sql)
    for table, column in cluster_ddl.TTL_COLUMNS.items():
        ddl = _show(chdb_engine, db, table)
        assert f"TTL toDateTime({column}) + toIntervalDay(30)" in ddl
        assert "ttl_only_drop_parts = 1" in ddl
    clustered = [s for s in statements(cluster=CLUSTER, retention_days=30) if s.kind == "alter"]
    assert {s.table for s in clustered} == {f"{t}_local" for t in cluster_ddl.TTL_COLUMNS}
    assert all(f"ON CLUSTER {CLUSTER}" in s.sql for s in clustered)
    # The setting comes first, so materializing the TTL drops parts instead of rewriting them.
    assert "MODIFY SETTING ttl_only_drop_parts" in clustered[0].sql and "MODIFY TTL" in clustered[1].sql
    with pytest.raises(ValueError):
        statements(retention_days=0)


@pytest.mark.parametrize("key", ["rand()", "cityHash64(event_id, now())", "generateUUIDv4()", "x; DROP"])
def test_a_sharding_key_that_could_move_a_redelivered_event_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        statements(cluster=CLUSTER, shard_key=key)


def test_a_custom_sharding_key_shards_the_events_and_their_entity_index_alike() -> None:
    stmts = {s.table: s.sql for s in statements(cluster=CLUSTER, shard_key="cityHash64(infrastructure)")}
    assert stmts["audit_events"].endswith("cityHash64(infrastructure))")
    assert stmts["audit_entity_index"].endswith("cityHash64(infrastructure))")
    assert stmts["dead_letters"].endswith("rand())")


def test_a_new_migration_must_be_placed_and_translatable() -> None:
    new_table = Migration(
        9, "new", ("CREATE TABLE IF NOT EXISTS {db}.mystery (x UInt8)\nENGINE = MergeTree\nORDER BY x",)
    )
    assert statements(migrations=(*MIGRATIONS, new_table))  # a single node takes it as is
    with pytest.raises(ValueError, match="PLACEMENT"):
        statements(cluster=CLUSTER, migrations=(*MIGRATIONS, new_table))
    alter = Migration(10, "alter", ("ALTER TABLE {db}.audit_events ADD COLUMN y UInt8",))
    with pytest.raises(ValueError, match="cannot translate"):
        statements(cluster=CLUSTER, migrations=(*MIGRATIONS, alter))


def test_committed_cluster_sql_is_the_generated_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDITLOG_STORE_DATABASE", raising=False)
    assert main(["schema", "--cluster", CLUSTER]) == 0
    generated = capsys.readouterr().out
    committed = (DEPLOY / "clickhouse" / "cluster.sql").read_text()
    assert committed == generated, (
        "deploy/clickhouse/cluster.sql is stale: regenerate it with "
        "`auditlog schema --cluster audit > deploy/clickhouse/cluster.sql`"
    )
    assert (
        "ENGINE = Distributed('audit', 'auditlog', 'audit_events_local', cityHash64(event_id))" in committed
    )


def test_cli_apply_then_check_on_the_embedded_store(
    chdb_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db()
    monkeypatch.setenv("AUDITLOG_STORE_ENGINE", "chdb")
    monkeypatch.setenv("AUDITLOG_STORE_PATH", str(chdb_engine._path))  # type: ignore[attr-defined]
    assert main(["schema", "--database", db, "--check"]) == 1
    assert "audit_events is missing" in capsys.readouterr().err
    assert main(["schema", "--database", db, "--apply", "--retention-days", "365"]) == 0
    assert main(["schema", "--database", db, "--check"]) == 0
    assert "TTL" in _show(chdb_engine, db, "audit_events")
    # A cluster schema is not there: the single-node tables have other engines.
    assert main(["schema", "--database", db, "--cluster", CLUSTER, "--check"]) == 1
    assert "audit_events is MergeTree, expected Distributed" in capsys.readouterr().err
    assert main(["schema", "--cluster", CLUSTER, "--shard-key", "rand()"]) == 2


def test_check_waits_for_an_unreachable_store_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITLOG_STORE_ENGINE", "clickhouse")
    monkeypatch.setenv("AUDITLOG_STORE_URL", "clickhouse://u:p@127.0.0.1:9/")
    started = time.monotonic()
    assert main(["schema", "--check", "--wait", "1"]) == 1
    assert time.monotonic() - started >= 1
    assert main(["schema", "--apply"]) == 1  # reported, not a traceback


# ------------------------------------------------------------ settings-derived env names

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    StoreSettings,
    ApiSettings,
    WorkerSettings,
    ProducerSettings,
    RetentionSettings,
)
# Variables the manifests use to assemble AUDITLOG_STORE_URL and CLI arguments; nothing
# reads them but Kubernetes' $(VAR) expansion.
HELPER_VARS = {
    "CLICKHOUSE_HOST",
    "CLICKHOUSE_PORT",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_CLUSTER",
}


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in cls.model_fields}


ALLOWED_ENV = set().union(*(_env_names(c) for c in SETTINGS_CLASSES))


def test_the_allowed_names_come_from_the_settings_classes() -> None:
    assert {"AUDITLOG_STORE_URL", "AUDITLOG_WORKER_BOOTSTRAP_SERVERS", "AUDITLOG_API_PORT"} <= ALLOWED_ENV
    assert "AUDITLOG_STORE_URI" not in ALLOWED_ENV


def _validate_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every AUDITLOG_* name is a settings field, and each settings class accepts the values."""
    unknown = sorted(k for k in env if k.startswith("AUDITLOG_") and k not in ALLOWED_ENV)
    assert not unknown, f"not a field of any settings class: {unknown}"
    strays = sorted(k for k in env if not k.startswith("AUDITLOG_") and k not in HELPER_VARS)
    assert not strays, f"unexpected variables: {strays}"
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if name.startswith("AUDITLOG_"):
                m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        for cls in SETTINGS_CLASSES:
            cls()  # raises on a value of the wrong type or out of range


# ------------------------------------------------------------------------ compose

COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _interpolated(value: object) -> str:
    return _INTERPOLATION.sub(lambda m: "secret0" if "PASSWORD" in m[1] else "x", str(value))


def test_compose_file_has_the_services_and_a_two_worker_group() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "clickhouse", "migrate", "worker", "api"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "AUDITLOG_WORKER_INSTANCE_ID" not in services["worker"]["environment"]  # same env for both
    assert services["worker"]["environment"]["AUDITLOG_WORKER_GROUP_ID"]
    for name, command in (("migrate", ["migrate"]), ("worker", ["worker"]), ("api", ["serve"])):
        svc = services[name]
        assert svc["command"] == command
        assert svc["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
        assert svc["environment"]["AUDITLOG_STORE_ENGINE"] == "clickhouse"
        build_parser().parse_args(command)
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "api"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"]["clickhouse"] == {"condition": "service_healthy"}
    # Credentials are interpolated from .env, never written in the file.
    url = services["api"]["environment"]["AUDITLOG_STORE_URL"]
    assert "${AUDITLOG_CLICKHOUSE_PASSWORD:?" in url
    assert "${AUDITLOG_CLICKHOUSE_PASSWORD:?" in services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]
    assert (DEPLOY / "compose" / ".env.example").exists()


def test_compose_env_names_and_values_match_the_settings_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    for name in ("migrate", "worker", "api"):
        env = {k: _interpolated(v) for k, v in services[name]["environment"].items()}
        _validate_env(env, monkeypatch)
    monkeypatch.setenv(
        "AUDITLOG_STORE_URL", _interpolated(services["api"]["environment"]["AUDITLOG_STORE_URL"])
    )
    assert StoreSettings().url == "clickhouse://auditlog:secret0@clickhouse:8123/"


def test_a_typo_in_an_env_name_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssertionError, match="AUDITLOG_WORKER_BOOTSTRAP_SERVER"):
        _validate_env({"AUDITLOG_WORKER_BOOTSTRAP_SERVER": "kafka:9092"}, monkeypatch)
    with pytest.raises(ValueError):
        _validate_env({"AUDITLOG_WORKER_BATCH_SIZE": "0"}, monkeypatch)


# ---------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_the_cli_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert 'pip install ".[all]"' in text
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["auditlog"\]$', final, re.MULTILINE)
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (REPO / src).exists(), src
    # Only the files it copies are sent as build context.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!deploy/probes/" in ignore and "!pyproject.toml" in ignore


# ----------------------------------------------------------------------- Kubernetes

K8S = DEPLOY / "kubernetes"


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _documents() if d["kind"] == kind}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("Deployment", "Job"):
        for name, doc in _by_kind(kind).items():
            yield name, doc["spec"]["template"]["spec"]
    for name, doc in _by_kind("CronJob").items():
        yield name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in _pod_specs():
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name}/{c['name']}", c


def test_every_manifest_parses_and_is_named() -> None:
    docs = list(_documents())
    assert len(docs) >= 10
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc["metadata"].get("name"), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "auditlog", path
    kinds = {d["kind"] for _, d in docs}
    required = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job", "PodDisruptionBudget"}
    assert required <= kinds


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kust["resources"]) == files
    images = {c["image"].split(":")[0] for _, c in _containers()}
    assert images == {i["name"] for i in kust["images"]}


def test_the_password_comes_from_a_secret_and_never_from_a_configmap() -> None:
    secrets = _by_kind("Secret")
    for name, cm in _by_kind("ConfigMap").items():
        for key, value in cm["data"].items():
            assert "PASSWORD" not in key.upper() and "SECRET" not in key.upper(), (name, key)
            assert not re.search(r"://[^/\s]*:[^/\s]*@", str(value)), (name, key)  # no user:pass@ URL
    for where, c in _containers():
        env = {e["name"]: e for e in c.get("env", [])}
        if "AUDITLOG_STORE_URL" not in env and not any(
            f["configMapRef"]["name"] == "auditlog-store" for f in c.get("envFrom", [])
        ):
            continue
        ref = env["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["stringData"], where
        url = env["AUDITLOG_STORE_URL"]["value"]
        assert "$(CLICKHOUSE_PASSWORD)" in url, where
        names = list(env)
        assert names.index("CLICKHOUSE_PASSWORD") < names.index("AUDITLOG_STORE_URL"), where  # $(…) order


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (a variable defined earlier in the container)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], text)


def _container_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it (envFrom, then env, $(VAR) expanded)."""
    configmaps = _by_kind("ConfigMap")
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update({k: str(v) for k, v in configmaps[source["configMapRef"]["name"]]["data"].items()})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(e["value"], env)
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = "0123456789abcdef"
        else:
            env[e["name"]] = "auditlog-worker-7d9f8b6c5-x2x9q"  # fieldRef: the pod name
    return env


def test_manifest_env_names_and_values_match_the_settings_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    for where, c in _containers():
        env = _container_env(c)
        _validate_env(env, monkeypatch)
        assert env["AUDITLOG_STORE_ENGINE"] == "clickhouse", where
        assert env["AUDITLOG_STORE_URL"].startswith("clickhouse://auditlog:0123456789abcdef@"), where


def test_container_arguments_are_valid_auditlog_commands() -> None:
    seen = set()
    for where, c in _containers():
        env = _container_env(c)
        args = [_expand(a, env) for a in c["args"]]
        parsed = build_parser().parse_args(args)
        seen.add(parsed.command)
        if parsed.command == "schema":
            assert parsed.cluster == "audit" and (parsed.apply or parsed.check), where
    assert seen == {"schema", "worker", "serve", "retention"}


def test_worker_and_api_deployments_are_probed_and_disruption_budgeted() -> None:
    deployments = _by_kind("Deployment")
    worker = deployments["auditlog-worker"]["spec"]
    partitions = int(_by_kind("ConfigMap")["auditlog-worker"]["data"]["AUDITLOG_WORKER_TOPIC_PARTITIONS"])
    assert 1 <= worker["replicas"] <= partitions
    wc = worker["template"]["spec"]["containers"][0]
    # The worker's own endpoints (stream.metrics), on the port its settings serve them on.
    ops = {p["name"]: p["containerPort"] for p in wc["ports"]}["ops"]
    assert ops == WorkerSettings().ops_port
    assert _container_env(wc)["AUDITLOG_WORKER_OPS_HOST"] == "0.0.0.0"
    for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert wc[kind]["httpGet"] == {"path": path, "port": "ops"}, wc[kind]
    assert worker["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ops)
    assert (
        "COPY deploy/probes/worker_probe.py /opt/auditlog/worker_probe.py"
        in (DEPLOY / "Dockerfile").read_text()
    )
    assert _container_env(wc)["AUDITLOG_WORKER_INSTANCE_ID"]
    api = deployments["auditlog-api"]["spec"]
    ac = api["template"]["spec"]["containers"][0]
    assert ac["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ac["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = int(_container_env(ac)["AUDITLOG_API_PORT"])
    assert ac["ports"][0]["containerPort"] == port
    service = _by_kind("Service")["auditlog-api"]["spec"]
    assert service["selector"].items() <= api["template"]["metadata"]["labels"].items()
    pdbs = _by_kind("PodDisruptionBudget")
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs.values()), (
            name
        )
    for name, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name


def test_the_api_serves_the_probed_path(store: Any) -> None:
    from auditlog.embedded import build_embedded

    paths = {getattr(r, "path", None) for r in build_embedded(store).app.routes}
    assert {"/healthz", "/readyz", "/metrics"} <= paths


# --------------------------------------------------------------------- the probe


def _probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worker_probe", DEPLOY / "probes" / "worker_probe.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["worker_probe"] = module
    spec.loader.exec_module(module)
    return module


def test_probe_decisions() -> None:
    probe = _probe()
    view = probe.GroupView
    assert probe.decide_ready(None)[0] is False
    assert probe.decide_ready(view(False, "STABLE", {}))[0] is False
    assert probe.decide_ready(view(True, "STABLE", {}))[0] is True

    def unreachable() -> None:
        return None

    def lagging() -> Any:
        return view(True, "STABLE", {("audit.raw", 0): 5})

    def idle() -> Any:
        return view(True, "STABLE", {("audit.raw", 0): 0})

    def boom() -> Any:
        raise AssertionError("Kafka is not asked while the stats are fresh")

    assert probe.decide_live(None, 300, boom)[0] is True  # starting: no batch yet
    assert probe.decide_live(10, 300, boom)[0] is True
    assert probe.decide_live(900, 300, idle)[0] is True
    assert probe.decide_live(900, 300, unreachable)[0] is True  # Kafka down: restarting would not help
    ok, why = probe.decide_live(900, 300, lagging)
    assert ok is False and "lag" in why


@pytest.mark.kafka
def test_probe_finds_a_static_member_and_its_lag_on_a_real_broker(
    kafka_bootstrap: str, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    from confluent_kafka import Consumer, Producer

    probe = _probe()
    topic, group = f"{kafka_topic_prefix}-raw", f"{kafka_topic_prefix}-workers"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, value=b"x%d" % i, partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "group.instance.id": "pod-a",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.5)
        assert consumer.assignment()
        stats = tmp_path / "stats.json"
        settings = WorkerSettings(
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            raw_topic=topic,
            instance_id="pod-a",
            stats_path=stats,
        )
        found = probe.group_view(settings, 10.0)
        assert found is not None and found.member_found
        assert sum(found.lag.values()) == 5  # nothing committed yet
        other = probe.group_view(settings.model_copy(update={"instance_id": "pod-b"}), 10.0)
        assert other is not None and not other.member_found
        # Stale stats with lag: wedged. Then commit everything: idle, alive.
        stats.write_text("{}")
        old = time.time() - 3600
        os.utime(stats, (old, old))
        assert (
            probe.decide_live(probe.stats_age(settings), 300, lambda: probe.group_view(settings, 10.0))[0]
            is False
        )
        msgs = consumer.consume(5, timeout=10)
        consumer.commit(message=msgs[-1], asynchronous=False)
        assert (
            probe.decide_live(probe.stats_age(settings), 300, lambda: probe.group_view(settings, 10.0))[0]
            is True
        )
    finally:
        consumer.close()
    gone = WorkerSettings(bootstrap_servers="127.0.0.1:9", group_id=group, instance_id="pod-a")
    assert probe.group_view(gone, 2.0) is None


def test_store_error_is_what_an_unreachable_server_raises() -> None:
    from auditlog.cli_schema import _engine

    with pytest.raises(StoreError):
        _engine(StoreSettings(engine="clickhouse", url=""))
