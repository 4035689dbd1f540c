"""HTTP routes: overdue alerts (sampling and report deadlines missed), as the stream processor found them."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from adapters.alerts import AlertStore
from adapters.api import openapi
from adapters.api.app import API, _int_param, _time_param
from spotcheck.deadlines import AlertKind, OverdueAlert
from spotcheck.errors import InvalidInput

ALERTS = web.AppKey("alerts", AlertStore)
FILTERS = frozenset({"kind", "task_id", "since", "limit"})


class AlertList(BaseModel):
    alerts: list[OverdueAlert]
    count: int


async def list_alerts(request: web.Request) -> web.Response:
    q = request.query
    unknown = sorted(set(q) - FILTERS)
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}", field=unknown[0])
    raw_kind = q.get("kind")
    kinds = {k.value: k for k in AlertKind}
    if raw_kind is not None and raw_kind not in kinds:
        raise InvalidInput(f"kind must be one of {', '.join(kinds)}", field="kind")
    alerts = await request.app[ALERTS].list(
        kind=kinds[raw_kind] if raw_kind is not None else None,
        task_id=q.get("task_id") or None,
        since=_time_param(q, "since"),
        limit=_int_param(q, "limit", 100, 1, 1000),
    )
    return web.json_response({"alerts": alerts, "count": len(alerts)})


def register(app: web.Application) -> None:
    """Adds this module's routes to `app`."""
    app[ALERTS] = AlertStore(app[API].store)
    app.router.add_get("/api/v1/alerts", list_alerts, name="alerts:list")


openapi.DOCS.update(
    {
        "alerts:list": openapi.RouteDoc(
            "Overdue alerts, newest first: tasks not sampled or not reported by their due time",
            response=AlertList,
            query=(
                openapi.Param(
                    "kind",
                    "sampling-overdue or report-overdue",
                    openapi.one_of(*(k.value for k in AlertKind)),
                ),
                ("task_id", "one task"),
                openapi.Param("since", "detected at or after this ISO time with offset", openapi.TIME),
                openapi.LIMIT,
            ),
        ),
    }
)
