"""Request bodies that a handler reads itself (NDJSON, YAML, a batch of mixed validity), documented
in the OpenAPI document with the contract's own pydantic models, so that a generated client
sends what the server takes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, Any] = {}


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """`model` as a reference into the document's components (added by `install`)."""
    schema = model.model_json_schema(ref_template=_REF)
    _COMPONENTS.update(schema.pop("$defs", {}))
    _COMPONENTS[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def request_body(content: dict[str, dict[str, Any]], *, description: str) -> dict[str, Any]:
    """An operation's `openapi_extra`: a required body of these media types and schemas."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {media: {"schema": schema} for media, schema in content.items()},
        }
    }


def install(app: FastAPI) -> None:
    """The app's OpenAPI document, with the components the documented bodies refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in _COMPONENTS.items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
