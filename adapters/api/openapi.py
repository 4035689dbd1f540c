"""The OpenAPI document of the HTTP API, generated from the routes and their pydantic models."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

import spotcheck


@dataclass(frozen=True)
class Param:
    """A query or header parameter: its name, what it means, its JSON schema, whether required."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


def integer(low: int, high: int, default: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return schema


def one_of(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


TIME = {"type": "string", "format": "date-time"}  # ISO 8601 with an offset
BOOLEAN = {"type": "boolean"}
LIMIT = Param("limit", "1-1000, default 100", integer(1, 1000, 100))

Query = tuple[str, str] | Param


@dataclass(frozen=True)
class RouteDoc:
    """What the document says of one route (keyed by the route's name)."""

    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    labs: bool = False  # a lab's API key may call it (the admin token always may)
    query: tuple[Query, ...] = ()
    inspectors: bool = False  # an inspector's token may call it
    public: bool = False  # no token needed
    errors: tuple[int, ...] = ()  # error statuses beyond those the route's shape implies
    error_response: type[BaseModel] | None = None  # the body of its error answers, if not ErrorAnswer
    path: tuple[tuple[str, dict[str, Any]], ...] = ()  # schemas of path parameters (default: a string)
    headers: tuple[Param, ...] = ()


class ErrorAnswer(BaseModel):
    """Every error answer: the message, the field at fault when there is one, the request id of a
    500 or 503 (the log names it); some add more (a 409 its `state`, a batch its `outcomes`)."""

    model_config = ConfigDict(extra="allow")

    error: str
    field: str | None = None
    request_id: str | None = Field(default=None, description="for 500 and 503: the log's request id")


DOCS: dict[str, RouteDoc] = {}
ERRORS = {
    401: "missing or unknown bearer token",
    403: "the token may not do this (a lab key on an admin route, a task or lab not the caller's)",
    404: "no such thing",
    409: "the thing is not in a state that allows this (the answer says which state it is in)",
    413: "body too large (1 MiB) or batch too long",
    422: 'invalid input: `{"error": "…", "field": "…"}`',
    500: "a fault of the platform: the answer's request_id names it in the log",
    503: "a service the platform needs (database, broker) is unavailable: try again after Retry-After",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel] | None) -> dict[str, Any]:
    schema: dict[str, Any] = _ref(model) if model is not None else {"type": "object"}
    return {"application/json": {"schema": schema}}


def _param(where: str, p: Query) -> dict[str, Any]:
    param = p if isinstance(p, Param) else Param(p[0], p[1])
    return {
        "name": param.name,
        "in": where,
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }


def _errors(doc: RouteDoc, path_params: list[str]) -> list[int]:
    codes = {500, 503, *doc.errors}
    if not doc.public:
        codes |= {401, 403}
    if path_params:
        codes |= {404, 422}
    if doc.query or doc.body is not None or doc.headers:
        codes.add(422)
    if doc.body is not None:
        codes |= {413, 422}
    return sorted(codes)


def _responses(doc: RouteDoc, path_params: list[str]) -> dict[str, Any]:
    answers: dict[str, Any] = {str(doc.status): {"description": "success", "content": _content(doc.response)}}
    for code in _errors(doc, path_params):
        answer: dict[str, Any] = {
            "description": ERRORS.get(code, "refused"),
            "content": _content(doc.error_response or ErrorAnswer),
        }
        if code == 503:
            answer["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before trying again",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            }
        answers[str(code)] = answer
    return answers


def document(app: web.Application) -> dict[str, Any]:
    """OpenAPI 3.1 for every documented route of `app` (schemas from the pydantic models)."""
    models = {m for d in DOCS.values() for m in (d.body, d.response, d.error_response) if m is not None} | {
        ErrorAnswer
    }
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
        path_params = re.findall(r"{(\w+)}", path)
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": doc.summary,
            "security": [] if doc.public else [{"bearer": []}],
            "responses": _responses(doc, path_params),
        }
        who = ["the admin token"] + ["a lab's API key"] * doc.labs + ["an inspector's token"] * doc.inspectors
        operation["description"] = (
            "No token needed." if doc.public else "Who may call it: " + ", ".join(who) + "."
        )
        shapes = dict(doc.path)
        params = [
            {"name": n, "in": "path", "required": True, "schema": shapes.get(n, {"type": "string"})}
            for n in path_params
        ]
        params += [_param("query", q) for q in doc.query]
        params += [_param("header", h) for h in doc.headers]
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


DOCS["openapi"] = RouteDoc("This document", public=True)
