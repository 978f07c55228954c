"""Shared fixtures. One chDB store per test session (chDB opens one data folder per
process); each test that needs isolation gets its own database inside it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import ChdbEngine, Engine
from storage.store import Store

pytest_plugins = ["tests.kafka_fixture"]


@pytest.fixture(autouse=True)
def _checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Signing keys and anchor files of whatever a test runs (worker processes included) go to a
    temporary folder, never into the working directory."""
    path = tmp_path_factory.mktemp("tlog")
    monkeypatch.setenv("AUDITLOG_CHECKPOINT_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("chdb")
    engine = ChdbEngine(str(path))
    yield engine


@pytest.fixture
def store(chdb_engine: Engine) -> Store:
    """A freshly migrated, empty database in the session's chDB."""
    return Store(chdb_engine, database="t_" + uuid.uuid4().hex[:12])
