"""What the read endpoints answer, as typed models: the OpenAPI document a client is generated from.

The handlers serialize rows with orjson (`query_api.serialize`) rather than through these
models, for speed on pages of a thousand rows; `tests/test_openapi.py` holds every answer
to its model, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from producers.contract.event import KindName

Outcome = Literal["success", "failure", "denied"]
ActorType = Literal["user", "service", "system"]


class ActorSummary(BaseModel):
    id: str
    name: str | None
    type: ActorType


class Actor(ActorSummary):
    ip: str | None
    user_agent: str | None
    session_id: str | None


class EntityRef(BaseModel):
    kind: KindName
    id: str
    name: str | None


class Change(BaseModel):
    field: str
    old: Any = None
    new: Any = None


class Source(BaseModel):
    service: str
    host: str
    version: str


class Enrichment(BaseModel):
    """Added at ingest from the directory as it was then."""

    plan_application_ids: list[str]
    application_team_id: str | None


class Provenance(BaseModel):
    ingest_source: str = Field(
        description="api, file, demo, kafka, or read-audit (the API's record of reads)"
    )
    ingest_key_id: str | None = Field(description="the API key it was posted with")


class Position(BaseModel):
    """The event's leaf in its Merkle log (GET /v1/events/{id}/proof)."""

    log: str
    index: int


class EventSummary(BaseModel):
    """What a listing shows of an event (`fields=summary`, the default)."""

    event_id: str
    occurred_at: str = Field(description="RFC 3339, UTC, milliseconds")
    infrastructure: str
    environment: str | None
    actor: ActorSummary
    action: str
    target: EntityRef
    outcome: Outcome
    reason: str | None


class Event(BaseModel):
    """An event, whole: what `GET /v1/events/{id}` and `fields=full` answer."""

    event_id: str
    schema_version: int
    occurred_at: str = Field(description="RFC 3339, UTC, milliseconds")
    received_at: str = Field(description="RFC 3339, UTC, milliseconds")
    infrastructure: str
    environment: str | None
    actor: Actor
    action: str
    target: EntityRef
    related: list[EntityRef]
    outcome: Outcome
    reason: str | None
    changes: list[Change]
    details: dict[str, Any]
    source: Source
    request_id: str | None
    correlation_id: str | None
    enrichment: Enrichment
    provenance: Provenance
    position: Position | None = Field(description="none for a row stored before the tree existed")


class EventPage(BaseModel):
    """A page of events, newest first. Pass `next_cursor` as `cursor` for the next page."""

    items: list[EventSummary] | list[Event] = Field(description="summaries, or whole events with fields=full")
    next_cursor: str | None
    total: int | None = Field(default=None, description="with include_total=true: every matching row")
    notes: list[str] | None = Field(
        default=None,
        description="on an empty first page: what in the search the directory does not know",
    )


class ParameterError(BaseModel):
    parameter: str = Field(description="where: `query parameter since`, `body`, …")
    problem: str


class ErrorBody(BaseModel):
    """Every error the API answers: what was wrong, in words."""

    detail: str
    errors: list[ParameterError] | None = Field(
        default=None, description="422: each parameter that does not fit its schema"
    )
    code: int | None = Field(default=None, description="503: the store's error code")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The statuses every /v1 operation may answer, in one shape (query_api.app's handlers).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "a request its schema allows that cannot be answered: a search that cannot be read, "
        "a cursor of another query"
    ),
    401: _error("no credentials, or an unknown, revoked or expired key"),
    403: _error("the caller may not do this"),
    422: _error("a parameter or body that does not fit its schema"),
    503: _error("the store did not answer, or the read could not be put on record"),
}


class FacetValue(BaseModel):
    value: str
    count: int
    label: str | None = Field(default=None, description="actor_id only: the actor's name")


class Facets(BaseModel):
    """Top values with counts in the caller's scope, and how many rows match in all."""

    total: int
    facets: dict[Literal["action", "actor_id", "target_kind", "environment", "outcome"], list[FacetValue]]


class Me(BaseModel):
    """The caller, and what the permission model lets them read."""

    user_id: str
    infrastructure: str
    key_id: str | None
    name: str | None
    can_ingest: bool
    can_publish_directory: bool
    manage_infrastructure: bool
    manage_all_teams: bool
    managed_teams: list[str]
    list_all_applications: bool
    listed_applications: list[str]
    readable_deployment_plans: list[str]


TEXT = {"type": "string"}
BINARY = {"type": "string", "format": "binary"}


class TimelineBucket(BaseModel):
    start: str = Field(description="RFC 3339, UTC: the interval's first instant")
    success: int
    failure: int
    denied: int


class Timeline(BaseModel):
    """Matching events per interval and outcome, in the caller's scope: one aggregate query."""

    since: str
    until: str
    interval_seconds: int
    total: int
    buckets: list[TimelineBucket]
