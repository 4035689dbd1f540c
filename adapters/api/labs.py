"""HTTP routes for labs: the registry, API keys, result ingest and per-lab statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.api import openapi, schemas
from adapters.api.app import (
    API,
    LAB_ROUTES,
    Principal,
    audit_in,
    audit_note,
    error,
    principal_of,
    read_json,
)
from adapters.labs import UPDATABLE, LabExists, LabStore
from producers.gateway import LabGateway
from spotcheck.errors import Forbidden, InvalidInput, NotFound
from spotcheck.labs import Lab, ScopeEntry, unknown_scope_items
from spotcheck.specs import load_catalog

LABS = web.AppKey("labs", LabStore)
GATEWAY = web.AppKey("gateway", LabGateway)
ON_BEHALF = "X-Spotcheck-Lab"  # the admin submits for a lab (LIMS file imports)


def _lab_json(lab: Lab) -> dict[str, Any]:
    return lab.model_dump(mode="json", exclude_none=True)


class LabUpdate(BaseModel):
    """A lab's new description (PUT: all of it; PATCH: the fields given). The id stays; enabling
    and disabling have their own routes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scope: tuple[ScopeEntry, ...] = Field(min_length=1)
    daily_capacity: int = Field(default=50, ge=0, strict=True, description="samples the lab can take a day")
    contact: str | None = Field(default=None, max_length=200)


class LabPatch(BaseModel):
    """The fields of a lab to change; the others stay as they are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    scope: tuple[ScopeEntry, ...] | None = Field(default=None, min_length=1)
    daily_capacity: int | None = Field(default=None, ge=0, strict=True)
    contact: str | None = Field(default=None, max_length=200)


def _check_scope(lab: Lab) -> None:
    unknown = unknown_scope_items(lab, {code for spec in load_catalog().specs() for code in spec.codes})
    if unknown:
        raise InvalidInput(f"scope names unknown item(s): {', '.join(unknown)}", field="scope")


async def add_lab(request: web.Request) -> web.Response:
    """A new lab; 409 when the id is taken (a change is a PUT or a PATCH)."""
    api = request.app[API]
    lab = Lab.model_validate(await read_json(request))
    _check_scope(lab)
    audit_note(request, target_id=lab.lab_id)
    try:
        async with api.store.transaction() as conn:
            await request.app[LABS].add(lab, conn)
            await audit_in(conn, request, 201, after=_lab_json(lab))
    except LabExists as exc:
        return error(409, str(exc), "lab_id")
    return web.json_response(_lab_json(lab), status=201, headers={"Location": f"/api/v1/labs/{lab.lab_id}"})


async def _update(request: web.Request, change: dict[str, Any]) -> web.Response:
    api = request.app[API]
    lab_id = request.match_info["lab_id"]
    labs = request.app[LABS]
    async with api.store.transaction() as conn:
        before = await labs.get(lab_id, conn, lock=True)
        lab = Lab.model_validate({**before.model_dump(), **change})
        _check_scope(lab)
        after = await labs.update(lab, conn)
        await audit_in(conn, request, 200, before=_lab_json(before), after=_lab_json(after))
    return web.json_response(_lab_json(after))


async def replace_lab(request: web.Request) -> web.Response:
    """PUT: the lab's name, scope, capacity and contact, all of them."""
    body = LabUpdate.model_validate(await read_json(request))
    return await _update(request, body.model_dump())


async def patch_lab(request: web.Request) -> web.Response:
    """PATCH: only the fields given change."""
    body = LabPatch.model_validate(await read_json(request))
    change = body.model_dump(exclude_unset=True)
    if not change:
        raise InvalidInput(f"name at least one field to change: {', '.join(UPDATABLE)}", field="body")
    nulls = sorted(k for k, v in change.items() if v is None and k != "contact")
    if nulls:
        raise InvalidInput(f"{nulls[0]} cannot be null", field=nulls[0])
    return await _update(request, change)


async def list_labs(request: web.Request) -> web.Response:
    labs = await request.app[LABS].all()
    return web.json_response({"labs": [_lab_json(lab) for lab in labs]})


def _own_lab(request: web.Request) -> str:
    lab_id = request.match_info["lab_id"]
    who = principal_of(request)
    if who.kind == "lab" and who.lab_id != lab_id:
        raise Forbidden(f"a key of lab {who.lab_id} may not read lab {lab_id}")
    return lab_id


async def get_lab(request: web.Request) -> web.Response:
    lab = await request.app[LABS].get(_own_lab(request))
    return web.json_response(_lab_json(lab))


async def _set_enabled(request: web.Request, enabled: bool) -> web.Response:
    lab_id = request.match_info["lab_id"]
    labs = request.app[LABS]
    async with request.app[API].store.transaction() as conn:
        before = await labs.get(lab_id, conn, lock=True)
        lab = await labs.set_enabled(lab_id, enabled, conn)
        await audit_in(conn, request, 200, before=_lab_json(before), after=_lab_json(lab))
    return web.json_response(_lab_json(lab))


async def disable_lab(request: web.Request) -> web.Response:
    return await _set_enabled(request, False)


async def enable_lab(request: web.Request) -> web.Response:
    return await _set_enabled(request, True)


def _key_info(made: dict[str, Any]) -> dict[str, Any]:
    """A new key as the audit log keeps it: never the key itself."""
    return {"lab_id": made["lab_id"], "prefix": made["prefix"], "created_at": made["created_at"]}


async def create_key(request: web.Request) -> web.Response:
    async with request.app[API].store.transaction() as conn:
        made = await request.app[LABS].create_key(request.match_info["lab_id"], conn)
        await audit_in(conn, request, 201, after=_key_info(made))
    return web.json_response(made, status=201)


async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[LABS].keys(request.match_info["lab_id"])
    return web.json_response({"keys": keys})


async def revoke_key(request: web.Request) -> web.Response:
    lab_id, prefix = request.match_info["lab_id"], request.match_info["prefix"]
    async with request.app[API].store.transaction() as conn:
        revoked = await request.app[LABS].revoke_key(lab_id, prefix, conn)
        await audit_in(
            conn, request, 200, before={**revoked, "revoked_at": None, "active": True}, after=revoked
        )
    return web.json_response({"revoked": prefix})


async def rotate_key(request: web.Request) -> web.Response:
    lab_id, prefix = request.match_info["lab_id"], request.match_info["prefix"]
    labs = request.app[LABS]
    async with request.app[API].store.transaction() as conn:
        revoked = await labs.revoke_key(lab_id, prefix, conn)
        made = await labs.create_key(lab_id, conn)
        await audit_in(
            conn,
            request,
            201,
            before={**revoked, "revoked_at": None, "active": True},
            after={"revoked": revoked, "new": _key_info(made)},
        )
    return web.json_response(made, status=201)


def _submitter(request: web.Request, who: Principal) -> str:
    if who.kind == "lab":
        assert who.lab_id is not None
        return who.lab_id
    lab_id = request.headers.get(ON_BEHALF)
    if not lab_id:
        raise InvalidInput(
            f"the admin token submits for a lab named in the {ON_BEHALF} header", field=ON_BEHALF
        )
    return lab_id


async def submit_results(request: web.Request) -> web.Response:
    """One result (a JSON object) or a batch ({"results": [...]}); 202 with each one's outcome."""
    api = request.app[API]
    lab_id = _submitter(request, principal_of(request))
    body = await read_json(request)
    single = isinstance(body, dict) and "results" not in body
    if single:
        items = [body]
    elif isinstance(body, dict) and isinstance(body.get("results"), list):
        items = body["results"]
        if set(body) != {"results"}:
            raise InvalidInput('a batch is {"results": [...]} and nothing else', field="body")
    else:
        raise InvalidInput('send one result object or {"results": [...]}', field="body")
    if not items:
        raise InvalidInput("the batch is empty", field="results")
    limit = api.settings.ingest_max_batch
    if len(items) > limit:
        return error(413, f"a batch holds at most {limit} results, this one {len(items)}", "results")
    outcomes = await request.app[GATEWAY].submit(lab_id, list(enumerate(items)), "http:/api/v1/lab-results")
    audit_note(
        request,
        target_id=outcomes[0].result_id if single else None,
        detail={"lab_id": lab_id, "outcomes": {o.result_id or f"#{o.where}": o.status for o in outcomes}},
    )
    if single:
        only = outcomes[0]
        if only.status in ("invalid", "forbidden"):
            return error(422 if only.status == "invalid" else 403, only.reason or only.status, only.field)
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("accepted", "duplicate")}
    rejected = len(outcomes) - counts["accepted"] - counts["duplicate"]
    return web.json_response(
        {
            "outcomes": [o.to_dict() for o in outcomes],
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": rejected,
        },
        status=202,
    )


async def stored_result(request: web.Request) -> web.Response:
    """What was stored of a result, by its id: a lab sees only its own (another's is not found)."""
    result_id = request.match_info["result_id"]
    found = await request.app[LABS].result(result_id)
    who = principal_of(request)
    if who.kind == "lab" and found["lab_id"] != who.lab_id:
        raise NotFound(f"no result {result_id} is stored")
    return web.json_response(found)


async def lab_stats(request: web.Request) -> web.Response:
    lab_id = _own_lab(request)
    days = request.query.get("days", "30")
    if not days.isdigit() or not 1 <= int(days) <= 366:
        raise InvalidInput("days must be a whole number from 1 to 366", field="days")
    since = request.app[API].now() - timedelta(days=int(days))
    return web.json_response(await request.app[LABS].stats(lab_id, since))


def register(app: web.Application) -> None:
    api = app[API]
    labs = api.labs or LabStore(api.store, api.settings.lab_key_cache_seconds)
    app[LABS] = labs
    app[GATEWAY] = LabGateway(api.settings, api.store, labs, api.now)
    r = app.router
    r.add_post("/api/v1/labs", add_lab, name="labs:create")
    r.add_get("/api/v1/labs", list_labs, name="labs:list")
    r.add_get("/api/v1/labs/{lab_id}", get_lab, name="labs:get")
    r.add_put("/api/v1/labs/{lab_id}", replace_lab, name="labs:replace")
    r.add_patch("/api/v1/labs/{lab_id}", patch_lab, name="labs:update")
    r.add_post("/api/v1/labs/{lab_id}/disable", disable_lab, name="labs:disable")
    r.add_post("/api/v1/labs/{lab_id}/enable", enable_lab, name="labs:enable")
    r.add_post("/api/v1/labs/{lab_id}/keys", create_key, name="labs:keys_create")
    r.add_get("/api/v1/labs/{lab_id}/keys", list_keys, name="labs:keys_list")
    r.add_post("/api/v1/labs/{lab_id}/keys/{prefix}/revoke", revoke_key, name="labs:keys_revoke")
    r.add_post("/api/v1/labs/{lab_id}/keys/{prefix}/rotate", rotate_key, name="labs:keys_rotate")
    r.add_post("/api/v1/lab-results", submit_results, name="lab_results:submit")
    r.add_get("/api/v1/lab-results/{result_id}", stored_result, name="lab_results:get")
    r.add_get("/api/v1/labs/{lab_id}/stats", lab_stats, name="labs:stats")
    LAB_ROUTES.update({"lab_results:submit", "lab_results:get", "labs:get", "labs:stats"})


openapi.DOCS.update(
    {
        "labs:create": openapi.RouteDoc(
            "Add a lab with its accreditation scope; 409 if the id is taken (update it with PUT or PATCH)",
            Lab,
            Lab,
            201,
            errors=(409,),
        ),
        "labs:replace": openapi.RouteDoc(
            "Replace a lab's name, scope, capacity and contact (enabled stays as it is)", LabUpdate, Lab
        ),
        "labs:update": openapi.RouteDoc("Change the fields of a lab that are given", LabPatch, Lab),
        "labs:list": openapi.RouteDoc("Every lab of the registry", response=schemas.LabList),
        "labs:get": openapi.RouteDoc("One lab", response=Lab, labs=True),
        "labs:disable": openapi.RouteDoc("Disable a lab (keys stop working)", response=Lab),
        "labs:enable": openapi.RouteDoc("Enable a lab again", response=Lab),
        "labs:keys_create": openapi.RouteDoc(
            "A new API key, shown once", response=schemas.LabKey, status=201
        ),
        "labs:keys_list": openapi.RouteDoc("The lab's keys by prefix", response=schemas.LabKeys),
        "labs:keys_revoke": openapi.RouteDoc("Revoke a key", response=schemas.Revoked),
        "labs:keys_rotate": openapi.RouteDoc(
            "Revoke a key and make its replacement", response=schemas.LabKey, status=201
        ),
        "lab_results:submit": openapi.RouteDoc(
            'Report results: one result object, or a batch {"results": [...]}. The admin token submits '
            f"for the lab named in the {ON_BEHALF} header.",
            schemas.ResultBatch,
            schemas.IngestAnswer,
            202,
            labs=True,
            headers=(openapi.Param(ON_BEHALF, "the admin token only: the lab the results are for"),),
        ),
        "lab_results:get": openapi.RouteDoc(
            "What the platform stored of a result (received, accepted, pending or rejected); 404 if "
            "nothing: a result sent to the broker directly may still be on its way, or was refused",
            response=schemas.ResultRecord,
            labs=True,
        ),
        "labs:stats": openapi.RouteDoc(
            "Turnaround and backlog of a lab",
            response=schemas.LabStats,
            labs=True,
            query=(openapi.Param("days", "window in days, default 30", openapi.integer(1, 366, 30)),),
        ),
    }
)
