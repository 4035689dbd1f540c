"""HTTP route of the audit log: every write through the API, newest first, for the admin."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from adapters.api import openapi
from adapters.api.app import API, WRITES, _audit_log, _bool_param, _int_param, _time_param
from adapters.audit import ACTOR_KINDS
from spotcheck.errors import InvalidInput

FILTERS = frozenset(
    {
        "actor_kind",
        "actor_id",
        "route",
        "method",
        "target_id",
        "status",
        "refused",
        "since",
        "until",
        "before",
        "limit",
    }
)


class AuditRow(BaseModel):
    seq: int = Field(description="the entry's place in the log; page with before=<seq>")
    at: str
    request_id: str
    actor_kind: str = Field(description="admin, lab, inspector or anonymous (a refused token)")
    actor_id: str | None = Field(description="the lab or the inspector")
    named_actor: str | None = Field(description="who the admin said acts (unverified)")
    method: str
    route: str
    path: str
    target_id: str | None
    status: int = Field(description="the answer's status: 4xx and 5xx are refused writes")
    before: Any = Field(
        description="the thing before the change (labs, keys, centers, directory, draws, cases)"
    )
    after: Any = Field(description="the thing after it (never a key, its hash or a secret)")
    detail: Any
    remote: str | None
    client: str | None = Field(description="the caller's User-Agent")


class AuditList(BaseModel):
    entries: list[AuditRow]
    count: int


async def list_audit(request: web.Request) -> web.Response:
    q = request.query
    unknown = sorted(set(q) - FILTERS)
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}", field=unknown[0])
    kind = q.get("actor_kind")
    if kind is not None and kind not in ACTOR_KINDS:
        raise InvalidInput(f"actor_kind must be one of {', '.join(ACTOR_KINDS)}", field="actor_kind")
    method = q.get("method")
    if method is not None and method.upper() not in WRITES:
        raise InvalidInput(f"method must be one of {', '.join(sorted(WRITES))}", field="method")
    entries = await _audit_log(request.app[API]).find(
        actor_kind=kind,
        actor_id=q.get("actor_id"),
        route=q.get("route"),
        method=method.upper() if method else None,
        target_id=q.get("target_id"),
        status=_int_param(q, "status", 0, 100, 599) if "status" in q else None,
        refused=_bool_param(q, "refused"),
        since=_time_param(q, "since"),
        until=_time_param(q, "until"),
        before_seq=_int_param(q, "before", 0, 1, 2**62) if "before" in q else None,
        limit=_int_param(q, "limit", 100, 1, 1000),
    )
    return web.json_response({"entries": entries, "count": len(entries)})


def register(app: web.Application) -> None:
    """Adds this module's routes to `app` (the admin's only)."""
    app.router.add_get("/api/v1/audit", list_audit, name="audit:list")


openapi.DOCS.update(
    {
        "audit:list": openapi.RouteDoc(
            "The audit log: every write through the API (the CLI's too), accepted or refused, newest first",
            response=AuditList,
            query=(
                openapi.Param(
                    "actor_kind", "admin, lab, inspector or anonymous", openapi.one_of(*ACTOR_KINDS)
                ),
                ("actor_id", "a lab or an inspector"),
                ("route", "a route's name, e.g. labs:create"),
                openapi.Param("method", "POST, PUT, PATCH or DELETE", openapi.one_of(*sorted(WRITES))),
                ("target_id", "the thing written, e.g. a lab, a task or a draw"),
                openapi.Param("status", "the answer's status", openapi.integer(100, 599)),
                openapi.Param("refused", "true: 4xx and 5xx only; false: accepted only", openapi.BOOLEAN),
                openapi.Param("since", "at or after this ISO time with offset", openapi.TIME),
                openapi.Param("until", "before this ISO time with offset", openapi.TIME),
                openapi.Param("before", "entries before this seq (paging)", openapi.integer(1, 2**62)),
                openapi.LIMIT,
            ),
        ),
    }
)
