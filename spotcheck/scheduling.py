"""Scheduling around the pure draw: the request, the platform's facts folded into a plan, the published
draw record, and special campaigns (专项抽查) that recur on a schedule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from spotcheck.draws import MIN_SEED_BYTES, Plan, RiskFactors, Snapshot
from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident, describe_validation_error

SeedHex = Annotated[str, Field(pattern=rf"^([0-9a-f]{{2}}){{{MIN_SEED_BYTES},}}$")]
"""A seed written as lower-case hex, at least MIN_SEED_BYTES bytes."""


class DrawRequest(BaseModel):
    """What a planner sends to run a draw (POST /api/v1/draws, `spotcheck draw run PLAN`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: Plan
    seed: SeedHex | None = Field(default=None, description="hex; drawn from the OS's secure source if absent")
    platform_facts: bool = Field(
        default=True,
        description="fill risk weights and last checks from the platform's records where the plan gives none",
    )
    redraw_of: Ident | None = Field(default=None, description="the cancelled draw this one replaces")
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _redraw_has_reason(self) -> Self:
        if self.redraw_of is not None and not (self.reason and self.reason.strip()):
            raise ValueError("a redraw gives the reason (reason)")
        return self


class DrawStatus(StrEnum):
    PUBLISHED = "published"
    CANCELLED = "cancelled"


class DrawRecord(Event):
    """A draw as published on the draws topic: what it selected, the digests to check it by, and its
    fate. A draw is never edited: cancelling publishes the same record with status cancelled."""

    SCHEMA: ClassVar[str] = "draw-record/1"

    draw_id: Ident
    status: DrawStatus
    plan_id: Ident
    draw_date: date
    campaign_id: Ident | None = None
    seed: str
    snapshot_digest: str
    plan_digest: str
    history_digest: str
    result_digest: str
    task_ids: tuple[str, ...]
    selected: int = Field(ge=0)
    unfilled: int = Field(ge=0)
    excluded: int = Field(ge=0)
    drawn_at: AwareDatetime
    drawn_by: str
    redraw_of: Ident | None = None
    redraw_reason: str | None = None
    cancelled_at: AwareDatetime | None = None
    cancel_reason: str | None = None


def draw_id_for(number: int, drawn_at: datetime) -> str:
    return f"D-{drawn_at.year}-{number:06d}"


# ---- the platform's facts about enterprises


class EnterpriseFacts(BaseModel):
    """What the platform's own records say of an enterprise: unqualified verdicts in the lookback
    period and the day of its last check."""

    model_config = ConfigDict(frozen=True)

    failures: int = Field(default=0, ge=0)
    last_check: date | None = None


def months_between(earlier: date, later: date) -> int:
    """Whole months from `earlier` to `later` (0 when later is earlier)."""
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    if later.day < earlier.day:
        months -= 1
    return max(months, 0)


def with_facts(plan: Plan, snapshot: Snapshot, facts: Mapping[str, EnterpriseFacts]) -> Plan:
    """The plan with the platform's facts for every enterprise of the snapshot that makes or sells one of
    its products: risk factors (failures, months since the last check; never checked counts as such) and
    last-check days. What the plan states itself wins. The result is the plan that is drawn and published."""
    products = {c.product for c in plan.categories}
    risk: dict[str, RiskFactors] = {}
    recent: dict[str, date] = {}
    for enterprise in snapshot.enterprises:
        eid = enterprise.enterprise_id
        if not products.intersection(enterprise.products):
            continue
        known = facts.get(eid, EnterpriseFacts())
        last = known.last_check
        if last is not None and last > plan.draw_date:
            last = None  # a check after the draw date is not history for this draw
        months = months_between(last, plan.draw_date) if last is not None else None
        risk[eid] = RiskFactors(failures=known.failures, months_since_check=months)
        if last is not None:
            recent[eid] = last
    risk.update(plan.risk)
    recent.update(plan.recent_checks)
    return plan.model_copy(update={"risk": risk, "recent_checks": recent})


# ---- special campaigns


class Recurrence(BaseModel):
    """When a campaign draws: every week on a weekday (1 = Monday), every month or quarter on a day."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: Literal["week", "month", "quarter"]
    day: int = Field(ge=1, le=28, description="weekday 1-7 for weeks, day of month 1-28 otherwise")

    @model_validator(mode="after")
    def _weekday(self) -> Self:
        if self.every == "week" and self.day > 7:
            raise ValueError("a weekly campaign names a weekday 1 (Monday) to 7 (Sunday)")
        return self

    def latest_on_or_before(self, day: date) -> date:
        """The last scheduled day on or before `day`."""
        if self.every == "week":
            return day - timedelta(days=(day.isoweekday() - self.day) % 7)
        step = 1 if self.every == "month" else 3
        year, month = day.year, day.month
        if self.every == "quarter":
            month -= (month - 1) % 3
        candidate = date(year, month, self.day)
        if candidate > day:
            total = year * 12 + month - 1 - step
            candidate = date(total // 12, total % 12 + 1, self.day)
        return candidate


PLAN_TEMPLATE_FIXED = ("plan_id", "draw_date")


class Campaign(BaseModel):
    """A special campaign: a plan template (its own products, items, counts, raised frequency through a
    short `recent_months`) drawn on a schedule between two days; its tasks are of kind special."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: Ident
    name: str = Field(min_length=1, max_length=200)
    plan: dict[str, Any] = Field(description="a plan without plan_id and draw_date")
    recurrence: Recurrence
    starts: date
    ends: date | None = None
    active: bool = True

    @model_validator(mode="after")
    def _valid_template(self) -> Self:
        fixed = sorted(set(PLAN_TEMPLATE_FIXED) & set(self.plan))
        if fixed:
            raise ValueError(f"a campaign's plan leaves out {', '.join(fixed)}: the schedule sets them")
        if self.ends is not None and self.ends < self.starts:
            raise ValueError("ends is before starts")
        self.plan_for(self.starts)  # the template must make a valid plan
        return self

    def plan_for(self, day: date) -> Plan:
        """The plan of the round drawn on `day`."""
        try:
            return Plan.model_validate(
                {**self.plan, "plan_id": f"{self.campaign_id}-{day:%Y%m%d}", "draw_date": day}
            )
        except ValidationError as exc:
            raise InvalidInput(f"campaign plan: {describe_validation_error(exc)}", field="plan") from None

    def due(self, today: date, last_run: date | None) -> date | None:
        """The round to draw now: the latest scheduled day up to today within the campaign's days that
        has not been drawn yet (rounds missed while nothing ran are not drawn late, only the latest)."""
        if not self.active or today < self.starts:
            return None
        until = min(today, self.ends) if self.ends is not None else today
        day = self.recurrence.latest_on_or_before(until)
        if day < self.starts or (last_run is not None and day <= last_run):
            return None
        return day


def due_campaigns(
    campaigns: Iterable[Campaign], last_runs: Mapping[str, date], today: date
) -> list[tuple[Campaign, date]]:
    """Each campaign with a round due today, in campaign id order."""
    due = []
    for campaign in sorted(campaigns, key=lambda c: c.campaign_id):
        day = campaign.due(today, last_runs.get(campaign.campaign_id))
        if day is not None:
            due.append((campaign, day))
    return due
