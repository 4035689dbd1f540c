"""HTTP routes for planners: double-random draws (run, read, inputs to verify, cancel, redraw) and
special campaigns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.api import openapi
from adapters.api.app import API, _int_param, audit_note, error, read_json
from producers.scheduler import DrawConflict, Scheduler
from spotcheck.errors import InvalidInput, NotFound
from spotcheck.scheduling import Campaign, DrawRecord, DrawRequest

SCHEDULER = web.AppKey("scheduler", Scheduler)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)
    seed: str | None = Field(default=None, description="redraw only: a seed to use instead of a fresh one")


class DrawList(BaseModel):
    draws: list[DrawRecord]


class DrawInputs(BaseModel):
    """Everything needed to re-run a draw, as published."""

    draw_id: str
    seed: str
    plan: dict[str, Any]
    snapshot: dict[str, Any]
    history: dict[str, list[str]]
    result: dict[str, Any]
    record: DrawRecord


class CampaignList(BaseModel):
    campaigns: list[Campaign]


def _actor(request: web.Request) -> str:
    return request.headers.get("X-Spotcheck-Actor", "admin")[:128] or "admin"


async def _conflict_as_409(request: web.Request, call: Any) -> web.Response:
    try:
        record: DrawRecord = await call
    except DrawConflict as exc:
        return error(409, str(exc))
    audit_note(request, target_id=record.draw_id, after=record.to_dict())
    return web.json_response(
        record.to_dict(), status=201, headers={"Location": f"/api/v1/draws/{record.draw_id}"}
    )


async def run_draw(request: web.Request) -> web.Response:
    body = DrawRequest.model_validate(await read_json(request))
    return await _conflict_as_409(request, request.app[SCHEDULER].run(body, _actor(request)))


async def list_draws(request: web.Request) -> web.Response:
    records = await request.app[SCHEDULER].draws.records(
        campaign_id=request.query.get("campaign_id"), limit=_int_param(request.query, "limit", 100, 1, 1000)
    )
    return web.json_response({"draws": [r.to_dict() for r in records]})


async def get_draw(request: web.Request) -> web.Response:
    draws = request.app[SCHEDULER].draws
    draw_id = request.match_info["draw_id"]
    record = await draws.record(draw_id)
    result = await draws.result(draw_id)
    return web.json_response({**record.to_dict(), "result": result.to_dict()})


async def draw_inputs(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SCHEDULER].draws.inputs(request.match_info["draw_id"]))


async def cancel_draw(request: web.Request) -> web.Response:
    body = CancelRequest.model_validate(await read_json(request))
    if body.seed is not None:
        raise InvalidInput("a cancellation takes no seed", field="seed")
    scheduler = request.app[SCHEDULER]
    before = await scheduler.draws.record(request.match_info["draw_id"])
    audit_note(request, before=before.to_dict())
    try:
        record = await scheduler.cancel(request.match_info["draw_id"], body.reason, _actor(request))
    except DrawConflict as exc:
        return error(409, str(exc))
    audit_note(request, after=record.to_dict())
    return web.json_response(record.to_dict())


async def redraw(request: web.Request) -> web.Response:
    body = CancelRequest.model_validate(await read_json(request))
    scheduler = request.app[SCHEDULER]
    before = await scheduler.draws.record(request.match_info["draw_id"])
    audit_note(request, before=before.to_dict())
    answer = await _conflict_as_409(
        request, scheduler.redraw(request.match_info["draw_id"], body.reason, _actor(request), body.seed)
    )
    audit_note(request, target_id=request.match_info["draw_id"])  # the draw redrawn; `after` the new one
    return answer


async def save_campaign(request: web.Request) -> web.Response:
    campaign = Campaign.model_validate(await read_json(request))
    draws = request.app[SCHEDULER].draws
    try:
        before: dict[str, Any] | None = (await draws.campaign(campaign.campaign_id)).model_dump(mode="json")
    except NotFound:
        before = None
    await draws.save_campaign(campaign)
    audit_note(request, target_id=campaign.campaign_id, before=before, after=campaign.model_dump(mode="json"))
    return web.json_response(campaign.model_dump(mode="json"), status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    campaigns = await request.app[SCHEDULER].draws.campaigns()
    return web.json_response({"campaigns": [c.model_dump(mode="json") for c in campaigns]})


async def run_due_rounds(request: web.Request) -> web.Response:
    records = await request.app[SCHEDULER].run_due_campaigns()
    audit_note(request, after={r.draw_id: r.to_dict() for r in records})
    return web.json_response({"draws": [r.to_dict() for r in records]})


async def _campaign_rounds(app: web.Application) -> AsyncIterator[None]:
    """Draw due campaign rounds in the background while the API runs (one process at a time draws)."""
    task = asyncio.create_task(app[SCHEDULER].run_campaigns_forever(app[API].settings.campaign_check_seconds))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def register(app: web.Application) -> None:
    api = app[API]
    app[SCHEDULER] = Scheduler(api.settings, api.store, api.now)
    app.cleanup_ctx.append(_campaign_rounds)
    r = app.router
    r.add_post("/api/v1/draws", run_draw, name="draws:run")
    r.add_get("/api/v1/draws", list_draws, name="draws:list")
    r.add_get("/api/v1/draws/{draw_id}", get_draw, name="draws:get")
    r.add_get("/api/v1/draws/{draw_id}/inputs", draw_inputs, name="draws:inputs")
    r.add_post("/api/v1/draws/{draw_id}/cancel", cancel_draw, name="draws:cancel")
    r.add_post("/api/v1/draws/{draw_id}/redraw", redraw, name="draws:redraw")
    r.add_post("/api/v1/campaigns", save_campaign, name="campaigns:save")
    r.add_get("/api/v1/campaigns", list_campaigns, name="campaigns:list")
    r.add_post("/api/v1/campaigns/run-due", run_due_rounds, name="campaigns:run_due")


openapi.DOCS.update(
    {
        "draws:run": openapi.RouteDoc(
            "Run a double-random draw: select, assign inspectors and labs, create the tasks, publish",
            DrawRequest,
            DrawRecord,
            201,
            errors=(409,),
        ),
        "draws:list": openapi.RouteDoc(
            "Draws, newest first",
            response=DrawList,
            query=(("campaign_id", "a campaign's rounds only"), openapi.LIMIT),
        ),
        "draws:get": openapi.RouteDoc("A draw with its selections, unfilled places and exclusions"),
        "draws:inputs": openapi.RouteDoc(
            "The published inputs of a draw (plan, directory snapshot, seed, history) to re-run it",
            response=DrawInputs,
        ),
        "draws:cancel": openapi.RouteDoc(
            "Cancel a draw whose samples are not taken yet, with the reason",
            CancelRequest,
            DrawRecord,
            errors=(409,),
        ),
        "draws:redraw": openapi.RouteDoc(
            "Cancel a draw (if not yet) and draw its plan again with a new seed",
            CancelRequest,
            DrawRecord,
            201,
            errors=(409,),
        ),
        "campaigns:save": openapi.RouteDoc("Add or update a special campaign", Campaign, Campaign, 201),
        "campaigns:list": openapi.RouteDoc("Special campaigns", response=CampaignList),
        "campaigns:run_due": openapi.RouteDoc("Draw every campaign round due today", response=DrawList),
    }
)
