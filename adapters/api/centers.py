"""The HTTP API of quality-testing centers: subscribe, list, disable, deliveries and redelivery."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.api import openapi
from adapters.api.app import API, audit_note, principal_of, read_json
from adapters.centers import CenterStore
from spotcheck.centers import CenterRequest, DeliveryState, EventKind, Filters, new_secret
from spotcheck.errors import Forbidden, InvalidInput

log = structlog.get_logger(__name__)


class RedeliverRequest(BaseModel):
    """Which failed deliveries go back to pending: the ones named, or all of the center's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delivery_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    all_failed: bool = False


class DeliveryCounts(BaseModel):
    pending: int
    delivered: int
    failed: int


class CenterView(BaseModel):
    center_id: str
    name: str
    url: str
    filters: Filters
    include_results: bool
    enabled: bool
    created_at: str
    disabled_at: str | None
    deliveries: DeliveryCounts


class CenterCreated(CenterView):
    secret: str = Field(description="signs every push; shown only in this answer")


class CenterList(BaseModel):
    centers: list[CenterView]
    count: int


class DeliveryRow(BaseModel):
    delivery_id: str = Field(description="also the Idempotency-Key header of every attempt")
    task_id: str
    event: EventKind
    event_id: str = Field(description="verdict_id or result_id")
    state: DeliveryState
    round: int = Field(description="1, plus one per redelivery")
    attempts: int = Field(description="attempts in this round")
    next_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    failed_at: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryRow]
    count: int


class AttemptRow(BaseModel):
    attempt_id: str
    round: int
    attempt: int
    outcome: str
    status: int | None
    error: str | None
    duration_ms: float
    attempted_at: str


class DeliveryView(DeliveryRow):
    data: dict[str, Any] = Field(description="the verdict or lab result pushed")
    attempt_log: list[AttemptRow]


class RedeliverAnswer(BaseModel):
    redelivered: list[str]
    count: int


def _centers(request: web.Request) -> CenterStore:
    if principal_of(request).kind != "admin":
        raise Forbidden("centers are managed by the admin")
    return CenterStore(request.app[API].store)


async def create_center(request: web.Request) -> web.Response:
    centers = _centers(request)
    body = CenterRequest.model_validate(await read_json(request))
    secret = body.secret or new_secret()
    audit_note(request, target_id=body.center_id)
    view = await centers.add(body, secret)
    audit_note(request, after=view)  # never the secret
    log.info("center added", center_id=body.center_id, url=body.url)
    return web.json_response(
        {**view, "secret": secret},
        status=201,
        headers={"Location": f"/api/v1/centers/{body.center_id}"},
    )


async def list_centers(request: web.Request) -> web.Response:
    found = await _centers(request).centers()
    return web.json_response({"centers": found, "count": len(found)})


async def get_center(request: web.Request) -> web.Response:
    return web.json_response(await _centers(request).center(request.match_info["center_id"]))


async def disable_center(request: web.Request) -> web.Response:
    centers = _centers(request)
    before = await centers.center(request.match_info["center_id"])
    view = await centers.disable(request.match_info["center_id"])
    audit_note(request, before=before, after=view)
    log.info("center disabled", center_id=view["center_id"])
    return web.json_response(view)


def _limit(query: Any) -> int:
    raw = query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidInput("limit must be a whole number between 1 and 1000", field="limit")
    return int(raw)


async def list_deliveries(request: web.Request) -> web.Response:
    q = request.query
    unknown = sorted(set(q) - {"state", "limit"})
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}", field=unknown[0])
    state = q.get("state")
    if state is not None and state not in {s.value for s in DeliveryState}:
        raise InvalidInput(f"state must be one of {', '.join(s.value for s in DeliveryState)}", field="state")
    found = await _centers(request).deliveries(
        request.match_info["center_id"], DeliveryState(state) if state else None, _limit(q)
    )
    return web.json_response({"deliveries": found, "count": len(found)})


async def get_delivery(request: web.Request) -> web.Response:
    view = await _centers(request).delivery(
        request.match_info["center_id"], request.match_info["delivery_id"]
    )
    return web.json_response(view)


async def redeliver(request: web.Request) -> web.Response:
    centers = _centers(request)
    body = RedeliverRequest.model_validate(await read_json(request))
    if (body.delivery_ids is None) == (not body.all_failed):
        raise InvalidInput('give either "delivery_ids" or "all_failed": true', field="delivery_ids")
    center_id = request.match_info["center_id"]
    again = await centers.redeliver(center_id, body.delivery_ids)
    audit_note(request, detail={"redelivered": again})
    log.info("deliveries put back", center_id=center_id, count=len(again))
    return web.json_response({"redelivered": again, "count": len(again)})


def register(app: web.Application) -> None:
    add = app.router
    add.add_post("/api/v1/centers", create_center, name="centers:create")
    add.add_get("/api/v1/centers", list_centers, name="centers:list")
    add.add_get("/api/v1/centers/{center_id}", get_center, name="centers:get")
    add.add_post("/api/v1/centers/{center_id}/disable", disable_center, name="centers:disable")
    add.add_get("/api/v1/centers/{center_id}/deliveries", list_deliveries, name="centers:deliveries")
    add.add_get("/api/v1/centers/{center_id}/deliveries/{delivery_id}", get_delivery, name="centers:delivery")
    add.add_post("/api/v1/centers/{center_id}/redeliver", redeliver, name="centers:redeliver")


openapi.DOCS.update(
    {
        "centers:create": openapi.RouteDoc(
            "Subscribe a quality-testing center (its signing secret is answered once)",
            CenterRequest,
            CenterCreated,
            201,
        ),
        "centers:list": openapi.RouteDoc(
            "Every center with its filters and delivery counts", response=CenterList
        ),
        "centers:get": openapi.RouteDoc("One center", response=CenterView),
        "centers:disable": openapi.RouteDoc(
            "Match no new events for the center (queued deliveries are still sent)", response=CenterView
        ),
        "centers:deliveries": openapi.RouteDoc(
            "The center's deliveries, newest first",
            response=DeliveryList,
            query=(
                openapi.Param(
                    "state", "pending, delivered or failed", openapi.one_of(*(s.value for s in DeliveryState))
                ),
                openapi.LIMIT,
            ),
        ),
        "centers:delivery": openapi.RouteDoc("One delivery with every attempt", response=DeliveryView),
        "centers:redeliver": openapi.RouteDoc(
            "Send failed deliveries again, from a fresh retry budget", RedeliverRequest, RedeliverAnswer
        ),
    }
)
