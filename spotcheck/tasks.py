"""Sampling tasks created by hand: the request, its checks against the catalog, and the ids."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from spotcheck.custody import due_after
from spotcheck.errors import InvalidInput
from spotcheck.events import Ident, SamplingTask, TaskKind
from spotcheck.labs import Lab, check_assignment
from spotcheck.specs import load_catalog
from spotcheck.verdict import validate_plan


class TaskRequest(BaseModel):
    """What a planner sends to create a task (POST /api/v1/tasks, `spotcheck task create`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprise_id: Ident
    product: str = Field(min_length=1, max_length=200)
    spec: str = Field(min_length=1, max_length=64)
    items: list[str] | None = Field(
        default=None, description="test items to run; all items of the spec when omitted"
    )
    lab_id: Ident
    kind: TaskKind = TaskKind.RANDOM
    campaign_id: str | None = Field(default=None, max_length=64)
    inspectors: list[Ident] = Field(default_factory=list)
    sampled_at: AwareDatetime | None = None
    sampling_due: AwareDatetime | None = Field(
        default=None, description="when the sample must be taken; the settings' sampling days when omitted"
    )


def task_id_for(number: int, created_at: datetime, zone: ZoneInfo) -> str:
    return f"T-{created_at.astimezone(zone).year}-{number:06d}"


def build_task(
    request: TaskRequest,
    number: int,
    now: datetime,
    zone: ZoneInfo,
    lab: Lab | None,
    *,
    sampling_days: int = 30,
) -> SamplingTask:
    """The task for a request; an unknown spec or item raises UnknownSpec / UnknownItem, a lab that
    is unknown, disabled or not accredited for the items InvalidInput (field lab_id). It must be
    sampled by the request's sampling_due, else by the end of the day `sampling_days` after `now`."""
    spec = load_catalog().get(request.spec)
    items = tuple(request.items) if request.items else tuple(i.code for i in spec.items)
    validate_plan(spec, items)
    check_assignment(lab, request.lab_id, spec.id, spec.product, items)
    if len(set(items)) != len(items):
        raise InvalidInput("items are listed more than once", field="items")
    task_id = task_id_for(number, now, zone)
    return SamplingTask(
        task_id=task_id,
        sample_id=f"{task_id}-A",
        enterprise_id=request.enterprise_id,
        product=request.product,
        spec=spec.id,
        items=items,
        lab_id=request.lab_id,
        kind=request.kind,
        campaign_id=request.campaign_id,
        inspectors=tuple(request.inspectors),
        created_at=now,
        sampled_at=request.sampled_at,
        sampling_due=request.sampling_due or due_after(now, sampling_days, zone),
    )
