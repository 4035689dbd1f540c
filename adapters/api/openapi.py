"""The OpenAPI document of the HTTP API, generated from the routes and their pydantic models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import spotcheck


@dataclass(frozen=True)
class RouteDoc:
    """What the document says of one route (keyed by the route's name)."""

    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    labs: bool = False  # a lab's API key may call it (the admin token always may)
    query: tuple[tuple[str, str], ...] = ()


DOCS: dict[str, RouteDoc] = {}
ERRORS = {
    "401": "missing or unknown bearer token",
    "403": "the token may not do this (a lab key on an admin route, a foreign task or lab)",
    "404": "no such thing",
    "409": "the thing is not in a state that allows this (the answer says which state it is in)",
    "413": "body too large (1 MiB) or batch too long",
    "422": 'invalid input: `{"error": "…", "field": "…"}`',
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel] | None) -> dict[str, Any]:
    schema: dict[str, Any] = _ref(model) if model is not None else {"type": "object"}
    return {"application/json": {"schema": schema}}


def document(app: web.Application) -> dict[str, Any]:
    """OpenAPI 3.1 for every documented route of `app` (schemas from the pydantic models)."""
    models = {m for d in DOCS.values() for m in (d.body, d.response) if m is not None}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        doc = DOCS.get(route.name or "")
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if doc is None or path is None or route.method == "HEAD":
            continue
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": doc.summary,
            "security": [{"bearer": []}],
            "responses": {str(doc.status): {"description": "success", "content": _content(doc.response)}}
            | {code: {"description": text} for code, text in ERRORS.items()},
        }
        if doc.labs:
            operation["description"] = "The admin token, or a lab's API key."
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", path)
        ]
        params += [
            {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
            for n, d in doc.query
        ]
        if params:
            operation["parameters"] = params
        if doc.body is not None:
            operation["requestBody"] = {"required": True, "content": _content(doc.body)}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spotcheck",
            "version": spotcheck.__version__,
            "description": "Supervisory spot checks: tasks, lab results, verdicts.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))
