"""HTTP routes of the chain of custody: steps of a task, its trail, an inspector's tasks and tokens."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from adapters import outbox
from adapters.api import openapi, schemas
from adapters.api.app import (
    API,
    INSPECTOR_ROUTES,
    LAB_ROUTES,
    Principal,
    audit_in,
    audit_note,
    dead_letter_request,
    principal_of,
    read_json,
)
from adapters.custody import CustodyStore
from spotcheck.custody import (
    CustodyStep,
    NotPermitted,
    Place,
    Reason,
    Role,
    Seals,
    SealState,
    Signatures,
    TaskCustody,
    TaskState,
    Trail,
    build_trail,
    report_due,
)
from spotcheck.errors import Forbidden, InvalidInput, NotFound, SpotcheckError
from spotcheck.events import Ident, SamplingTask, describe_validation_error
from spotcheck.specs import load_catalog
from spotcheck.topics import CUSTODY

CUSTODY_STORE = web.AppKey("custody_store", CustodyStore)
SOURCE = "http:/api/v1/tasks/{task_id}/custody"  # the source of a refused step's dead letter


class StepRequest(BaseModel):
    """A custody step as a caller sends it: who did it comes from the token (the admin may name
    the actor); `at` defaults to now, `step_id` to a new id (send one to make a resend harmless)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: TaskState
    at: AwareDatetime | None = None
    where: Place | None = None
    seals: Seals | None = None
    seal_state: SealState | None = None
    signatures: Signatures | None = None
    inspectors: tuple[Ident, ...] = ()
    reason: Reason | None = None
    step_id: Ident | None = None
    actor: Ident | None = Field(default=None, description="the admin token only: who did it (default admin)")


class StepAnswer(BaseModel):
    step: CustodyStep
    state: TaskState = Field(description="the state the step leads to")
    duplicate: bool = Field(description="true for a resend of a step already taken")


class InspectorTask(BaseModel):
    task: SamplingTask
    state: TaskState
    sampling_due: datetime | None
    received_at: datetime | None
    report_due: datetime | None


class InspectorTasks(BaseModel):
    inspector_id: str
    tasks: list[InspectorTask]


class InspectorToken(BaseModel):
    inspector_id: str
    prefix: str
    token: str = Field(description="shown this once; only a hash is kept")
    created_at: str


class InspectorTokens(BaseModel):
    tokens: list[schemas.LabKeyInfo]


def _may_see(who: Principal, custody: TaskCustody) -> None:
    """Inspectors see the tasks they are assigned to, labs the tasks sent to them, the admin all.
    Checked before anything else of the request, and the refusal tells nothing of the task."""
    task = custody.task
    if who.kind == "inspector" and who.inspector_id not in custody.assigned:
        raise Forbidden(f"task {task.task_id} is not assigned to inspector {who.inspector_id}")
    if who.kind == "lab" and who.lab_id != task.lab_id:
        raise Forbidden(f"task {task.task_id} is not assigned to lab {who.lab_id}")


def _actor(who: Principal, named: str | None) -> tuple[str, Role]:
    if who.kind != "admin" and named is not None:
        raise InvalidInput(
            "only the admin token names the actor; yours is taken from the token", field="actor"
        )
    if who.kind == "inspector":
        assert who.inspector_id is not None
        return who.inspector_id, Role.INSPECTOR
    if who.kind == "lab":
        assert who.lab_id is not None
        return who.lab_id, Role.LAB
    return named or "admin", Role.PLANNER


async def record_step(request: web.Request) -> web.Response:
    """Validate a step against the stored state and publish it; a refusal is a dead letter too."""
    task_id = request.match_info["task_id"]
    try:
        return await _record(request, task_id)
    except (InvalidInput, Forbidden, NotFound, ValidationError) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        await dead_letter_request(request, task_id, reason)
        raise


async def _record(request: web.Request, task_id: str) -> web.Response:
    api = request.app[API]
    who = principal_of(request)
    custody = await request.app[CUSTODY_STORE].custody(task_id)
    _may_see(who, custody)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("send one step as a JSON object", field="body")
    asked = StepRequest.model_validate(body)
    actor, role = _actor(who, asked.actor)
    known = custody.by_id.get(asked.step_id) if asked.step_id else None
    fields: dict[str, Any] = asked.model_dump(exclude={"actor"}, exclude_none=True)
    fields.update(
        step_id=asked.step_id or f"{task_id}/{asked.step.value}/{uuid.uuid4().hex[:12]}",
        task_id=task_id,
        actor=actor,
        actor_role=role,
        at=asked.at or (known.at if known is not None else api.now()),  # a resend keeps its time
        lab_id=who.lab_id if role is Role.LAB else None,
    )
    step = CustodyStep.model_validate(fields)
    try:
        taken = custody.apply(step)  # IllegalTransition: 409 with the current state
    except NotPermitted as exc:
        raise Forbidden(str(exc)) from None
    answer = {"step": step.to_dict(), "state": custody.state.value, "duplicate": not taken}
    async with api.store.transaction() as conn:
        if taken:
            await outbox.add(conn, [(CUSTODY.full_name(api.settings), task_id, step.to_json())])
        await audit_in(conn, request, 202, target_id=task_id, after=answer)
    return web.json_response(answer, status=202)


async def trail(request: web.Request) -> web.Response:
    api = request.app[API]
    custody = await request.app[CUSTODY_STORE].custody(request.match_info["task_id"])
    _may_see(principal_of(request), custody)
    found = build_trail(
        custody.task,
        custody.by_id.values(),
        ZoneInfo(api.settings.timezone),
        timedelta(hours=api.settings.max_transit_hours),
    )
    return web.json_response(found.model_dump(mode="json", by_alias=True))


def _report_due(task: SamplingTask, received_at: datetime | None, zone: ZoneInfo) -> datetime | None:
    if task.report_due is not None or received_at is None:
        return task.report_due
    try:
        days = load_catalog().get(task.spec).report_days
    except SpotcheckError:
        return None
    return report_due(received_at, days, zone)


async def my_tasks(request: web.Request) -> web.Response:
    who = principal_of(request)
    if who.kind != "inspector" or who.inspector_id is None:
        raise Forbidden("this endpoint answers an inspector's token: it lists that inspector's tasks")
    zone = ZoneInfo(request.app[API].settings.timezone)
    rows = await request.app[CUSTODY_STORE].inspector_tasks(who.inspector_id)
    tasks = [
        InspectorTask(
            task=task,
            state=state,
            sampling_due=task.sampling_due,
            received_at=received_at,
            report_due=_report_due(task, received_at, zone),
        )
        for task, state, received_at in rows
    ]
    answer = InspectorTasks(inspector_id=who.inspector_id, tasks=tasks)
    return web.json_response(answer.model_dump(mode="json", by_alias=True))


async def create_token(request: web.Request) -> web.Response:
    made = await request.app[CUSTODY_STORE].create_token(request.match_info["inspector_id"])
    audit_note(request, after={k: made[k] for k in ("inspector_id", "prefix", "created_at")})
    return web.json_response(made, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[CUSTODY_STORE].tokens(request.match_info["inspector_id"])
    return web.json_response({"tokens": tokens})


async def revoke_token(request: web.Request) -> web.Response:
    prefix = request.match_info["prefix"]
    inspector_id = request.match_info["inspector_id"]
    store = request.app[CUSTODY_STORE]
    before = next((t for t in await store.tokens(inspector_id) if t["prefix"] == prefix), None)
    await store.revoke_token(inspector_id, prefix)
    after = next((t for t in await store.tokens(inspector_id) if t["prefix"] == prefix), None)
    audit_note(request, before=before, after=after)
    return web.json_response({"revoked": prefix})


def register(app: web.Application) -> None:
    """Adds this module's routes to `app`; the API verifies inspectors' tokens with the same store."""
    api = app[API]
    if api.custody is None:
        api.custody = CustodyStore(api.store, api.settings.inspector_token_cache_seconds)
    app[CUSTODY_STORE] = api.custody
    r = app.router
    r.add_post("/api/v1/tasks/{task_id}/custody", record_step, name="custody:step")
    r.add_get("/api/v1/tasks/{task_id}/trail", trail, name="custody:trail")
    r.add_get("/api/v1/inspectors/me/tasks", my_tasks, name="inspectors:my_tasks")
    r.add_post("/api/v1/inspectors/{inspector_id}/tokens", create_token, name="inspectors:tokens_create")
    r.add_get("/api/v1/inspectors/{inspector_id}/tokens", list_tokens, name="inspectors:tokens_list")
    r.add_delete(
        "/api/v1/inspectors/{inspector_id}/tokens/{prefix}", revoke_token, name="inspectors:tokens_revoke"
    )
    LAB_ROUTES.update({"custody:step", "custody:trail"})
    INSPECTOR_ROUTES.update({"custody:step", "custody:trail", "inspectors:my_tasks"})


openapi.DOCS.update(
    {
        "custody:step": openapi.RouteDoc(
            "Record a custody step of a task (admin, a lab's key, or an inspector's token: an inspector "
            "for the tasks assigned to them, a lab for its tasks). Checked against the stored state: "
            "409 with `state` and `allowed` for an illegal transition, 403 when the caller may not take "
            "it. Accepted steps are published on the custody topic; the custody processor stores them.",
            StepRequest,
            StepAnswer,
            202,
            labs=True,
            inspectors=True,
            errors=(409,),
        ),
        "custody:trail": openapi.RouteDoc(
            "The trail of a task's sample: its steps in time order and every gap (a changed or broken "
            "seal, a slow transit, a step by someone not assigned, a missing or out-of-order step)",
            response=Trail,
            labs=True,
            inspectors=True,
        ),
        "inspectors:my_tasks": openapi.RouteDoc(
            "An inspector's token: the tasks assigned to that inspector, with state and due dates",
            response=InspectorTasks,
            inspectors=True,
        ),
        "inspectors:tokens_create": openapi.RouteDoc(
            "A new API token for an inspector of the directory, shown once",
            response=InspectorToken,
            status=201,
        ),
        "inspectors:tokens_list": openapi.RouteDoc(
            "An inspector's tokens by prefix", response=InspectorTokens
        ),
        "inspectors:tokens_revoke": openapi.RouteDoc("Revoke an inspector's token", response=schemas.Revoked),
    }
)
