"""The OpenAPI document is the API: schemathesis sends what it allows (and what it does not) to
every operation, with every check, and holds each answer to the documented status, media type
and schema. Bounded: a few examples per operation, enough to reach every status it answers."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from query_api.settings import ApiSettings
from storage.engine import Engine
from storage.store import Store
from tests.grants import make_key

EXAMPLES = 8

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
            }
        ],
        "users": [{"id": "u-admin", "name": "Admin", "default_role": "admin"}],
        "applications": [{"id": "app-1", "name": "Billing"}],
        "environments": [{"id": "env-prod", "name": "Production"}],
    }
)


@pytest.fixture(scope="module")
def _api(chdb_engine: Engine) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    store = Store(chdb_engine, database="t_openapi_" + uuid.uuid4().hex[:8])
    embedded = build_embedded(store, api_settings=ApiSettings(), directory=DIRECTORY)
    key = make_key(store, "u-admin", can_ingest=True)
    yield embedded.app, {"Authorization": f"Bearer {key}"}


# Every check schemathesis has, but the response time (the suite runs on a shared machine).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
    checks.missing_required_header,
    checks.unsupported_method,
    checks.ignored_auth,
    checks.use_after_free,
    checks.ensure_resource_availability,
]


# 400 is the API's answer to what a schema cannot say (query_api.models.ERROR_RESPONSES): a
# search that does not parse, a cursor of another query, a time range that ends before it starts.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "409"]}
        }
    }
)


# Ingest answers each event of a batch on its own: one that breaks the contract is rejected in a
# 207 with its reason and kept as a dead letter (the log loses nothing), not refused with the batch.
EXCLUDED = {"POST /v1/events": [checks.negative_data_rejection]}


def _detectable(case: Any) -> bool:
    """Whether the request still breaks its schema once sent. A query string is text: a number,
    a string and an array of one value are the same bytes (`actor=42`); and the key this test
    sends replaces a removed or mangled Authorization header."""
    mutations = getattr(case.meta.phase.data, "mutations", ()) if case.meta is not None else ()
    left = [
        m
        for m in mutations
        if not (m.parameter_location == ParameterLocation.QUERY and m.keywords == ("type",))
        and not (m.parameter_location == ParameterLocation.HEADER and m.parameter in (None, "Authorization"))
    ]
    return bool(left) or not mutations


def test_every_operation_answers_as_documented(_api: tuple[FastAPI, dict[str, str]]) -> None:
    app, auth = _api
    services = app.state.services
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            def run(case: Any) -> None:
                excluded = list(EXCLUDED.get(case.operation.label, []))
                if not _detectable(case):
                    excluded.append(checks.negative_data_rejection)
                case.call_and_validate(headers=auth, checks=CHECKS, excluded_checks=excluded)

            try:
                run()
                # What the run did to the directory (PUT /v1/directory) is undone for the next.
                services.directory.replace(DIRECTORY)
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure is collected
                # A schemathesis failure says what it sent and got; anything else, where it arose.
                where = "" if isinstance(exc, BaseExceptionGroup) else "\n" + traceback.format_exc()[-2500:]
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000] + where)
    assert not failures, "\n\n".join(failures)
