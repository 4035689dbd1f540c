"""/healthz and /readyz: what is up, what is degraded or down, and why, checked within seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from adapters import kafka
from adapters.api import openapi
from adapters.api.app import API, RETRY_AFTER_SECONDS, Api

HEALTHY_WITHIN_SECONDS = 30.0  # a worker without a heartbeat for longer is down
CHECK_SECONDS = 3.0  # no check waits longer: a database that does not answer is down
OUTBOX_LAG_SECONDS = 60.0  # an unpublished message older than this: the outbox is degraded

State = Literal["up", "degraded", "down"]
Check = dict[str, Any]


class CheckState(BaseModel):
    state: State
    reason: str | None = Field(default=None, description="why, when not up")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="unavailable (503): some check is down; degraded (200): some check needs attention"
    )
    checks: dict[str, CheckState] = Field(
        description="each check with its state (and counts for the outbox and the records set aside)"
    )


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause) or type(cause).__name__
    if isinstance(exc, TimeoutError):
        text = f"no answer within {CHECK_SECONDS:.0f} s"
    return text[:300]


async def _bounded(probe: Callable[[], Awaitable[Check]]) -> Check:
    try:
        return await asyncio.wait_for(probe(), CHECK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, never an error
        return {"state": "down", "reason": _why(exc)}


async def _broker(api: Api) -> Check:
    if await kafka.broker_reachable(api.producer):
        return {"state": "up"}
    return {"state": "down", "reason": f"no broker of {api.settings.bootstrap} answered"}


async def _database(api: Api) -> Check:
    await api.store.ping()
    return {"state": "up"}


async def _platform(api: Api) -> dict[str, Check]:
    """The outbox's backlog, each worker's heartbeat and the records set aside, in one transaction."""
    checks: dict[str, Check] = {}
    async with api.store.transaction() as conn:
        backlog = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest FROM outbox"
            " WHERE published_at IS NULL AND failed_at IS NULL"
        )
        failed = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE failed_at IS NOT NULL LIMIT 10000) f"
        )
        seen = await conn.fetch(
            "SELECT component, extract(epoch FROM now() - max(seen_at)) AS ago FROM heartbeats"
            " WHERE component = ANY($1) GROUP BY component",
            list(api.components),
        )
        quarantined = await conn.fetchval(  # records a consumer could not process and set aside
            "SELECT count(*) FROM dead_letters WHERE reason LIKE 'set aside by %'"
            " AND rejected_at > now() - interval '1 hour'"
        )
    oldest = float(backlog["oldest"]) if backlog["oldest"] is not None else None
    outbox: Check = {"state": "up", "unpublished": backlog["n"], "failed": failed}
    if oldest is not None:
        outbox["oldest_unpublished_seconds"] = round(oldest, 1)
    if oldest is not None and oldest > OUTBOX_LAG_SECONDS:
        outbox.update(
            state="degraded",
            reason=f"{backlog['n']} message(s) not published, the oldest for {oldest:.0f} s",
        )
    elif failed:
        outbox.update(state="degraded", reason=f"{failed} message(s) the broker refused for good")
    checks["outbox"] = outbox
    ago = {r["component"]: float(r["ago"]) for r in seen}
    for component in api.components:
        last = ago.get(component)
        if last is None:
            checks[component] = {"state": "down", "reason": "no heartbeat seen"}
        elif last > HEALTHY_WITHIN_SECONDS:
            checks[component] = {"state": "down", "reason": f"no heartbeat for {last:.0f} s"}
        else:
            checks[component] = {"state": "up"}
    held: Check = {"state": "up", "set_aside_last_hour": quarantined}
    if quarantined:
        held.update(
            state="degraded",
            reason=f"{quarantined} record(s) set aside by a consumer in the last hour (see the dead letters)",
        )
    checks["set-aside"] = held
    return checks


def _answer(checks: dict[str, Check]) -> web.Response:
    states = {c["state"] for c in checks.values()}
    status = "unavailable" if "down" in states else "degraded" if "degraded" in states else "ok"
    down = status == "unavailable"
    return web.json_response(
        {"status": status, "checks": checks},
        status=503 if down else 200,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)} if down else None,
    )


async def health(request: web.Request) -> web.Response:
    """The whole platform: broker, database, the outbox, every worker's heartbeat, records set aside."""
    api = request.app[API]
    broker, database = await asyncio.gather(_bounded(lambda: _broker(api)), _bounded(lambda: _database(api)))
    checks = {"broker": broker, "database": database}
    if database["state"] == "up":
        try:
            checks.update(await asyncio.wait_for(_platform(api), CHECK_SECONDS))
        except Exception as exc:  # noqa: BLE001 - the database went away between two checks
            checks["database"] = {"state": "down", "reason": _why(exc)}
    return _answer(checks)  # with the database down, nothing else can be known


async def ready(request: web.Request) -> web.Response:
    """This API process can serve: broker and database reachable (load-balancer readiness)."""
    api = request.app[API]
    broker, database = await asyncio.gather(_bounded(lambda: _broker(api)), _bounded(lambda: _database(api)))
    return _answer({"broker": broker, "database": database})


def register(app: web.Application) -> None:
    app.router.add_get("/healthz", health, name="health")
    app.router.add_get("/readyz", ready, name="ready")


openapi.DOCS.update(
    {
        "health": openapi.RouteDoc(
            "The whole platform: broker, database, outbox backlog, workers' heartbeats, records set aside "
            "in the last hour. "
            "503 when some check is down, with the reason",
            response=Health,
            public=True,
            errors=(503,),
            error_response=Health,
        ),
        "ready": openapi.RouteDoc(
            "This API process reaches the broker and the database (load-balancer readiness)",
            response=Health,
            public=True,
            errors=(503,),
            error_response=Health,
        ),
    }
)
