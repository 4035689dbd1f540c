"""The task lifecycle and the chain of custody of its sample: states, who may move them, gaps, deadlines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, ClassVar, Self
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident, SamplingTask


class TaskState(StrEnum):
    PLANNED = "planned"
    ASSIGNED = "assigned"
    SAMPLING = "sampling"
    SAMPLED = "sampled"
    IN_TRANSIT = "in-transit"
    RECEIVED = "received"
    TESTING = "testing"
    REPORTED = "reported"
    JUDGED = "judged"
    CLOSED = "closed"
    REFUSED = "refused"
    NOT_FOUND = "not-found"
    NOT_SAMPLEABLE = "not-sampleable"
    CANCELLED = "cancelled"


S = TaskState

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    S.PLANNED: frozenset({S.ASSIGNED, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.SAMPLING, S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED}),
    S.SAMPLING: frozenset({S.SAMPLED, S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED}),
    S.SAMPLED: frozenset({S.IN_TRANSIT}),
    S.IN_TRANSIT: frozenset({S.RECEIVED}),
    S.RECEIVED: frozenset({S.TESTING, S.REPORTED}),
    S.TESTING: frozenset({S.REPORTED}),
    S.REPORTED: frozenset({S.JUDGED}),
    S.JUDGED: frozenset({S.CLOSED}),
    S.REFUSED: frozenset({S.CLOSED}),
    S.NOT_FOUND: frozenset({S.CLOSED}),
    S.NOT_SAMPLEABLE: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.CANCELLED: frozenset(),
}
"""Each state and the states a step may move it to. No step goes back: a re-test (复检) is a new task
on the retained sample, a lab correction amends a result, a verdict correction is a new version.
A received sample may be reported without a testing step (the lab's results came in, a verdict was
reached, and nobody marked the start of testing)."""

MAIN_LINE: tuple[TaskState, ...] = (
    S.PLANNED, S.ASSIGNED, S.SAMPLING, S.SAMPLED, S.IN_TRANSIT,
    S.RECEIVED, S.TESTING, S.REPORTED, S.JUDGED, S.CLOSED,
)  # fmt: skip
"""The path of a task whose sample is taken and tested, in order."""


class Role(StrEnum):
    INSPECTOR = "inspector"
    LAB = "lab"
    PLANNER = "planner"
    SYSTEM = "system"


_OFFICE = frozenset({Role.PLANNER, Role.SYSTEM})
_FIELD = frozenset({Role.INSPECTOR})
_LAB = frozenset({Role.LAB})

ROLES: dict[TaskState, frozenset[Role]] = {
    S.ASSIGNED: _OFFICE,
    S.SAMPLING: _FIELD,
    S.SAMPLED: _FIELD,
    S.IN_TRANSIT: _FIELD,
    S.REFUSED: _FIELD,
    S.NOT_FOUND: _FIELD,
    S.NOT_SAMPLEABLE: _FIELD,
    S.RECEIVED: _LAB,
    S.TESTING: _LAB,
    S.REPORTED: _LAB | {Role.SYSTEM},  # the verdict processor records it when a verdict is reached
    S.JUDGED: _OFFICE,
    S.CLOSED: _OFFICE,
    S.CANCELLED: _OFFICE,
}
"""Who may take a task to each state: inspectors must be assigned to it, a lab must be its lab."""

NEEDS_REASON = frozenset({S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED})


class SealState(StrEnum):
    INTACT = "intact"
    BROKEN = "broken"


class Place(BaseModel):
    """Where a step was done: coordinates (WGS-84, optional) and/or a place as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    text: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _coordinates_in_pairs(self) -> Self:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        if self.lat is None and self.text is None:
            raise ValueError("a place needs coordinates or a text")
        return self


class Seals(BaseModel):
    """The seal numbers of the two portions of a sample: the test portion and the retained one (备样)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test: Ident | None = None
    retained: Ident | None = None


class Signatures(BaseModel):
    """Who signed the sampling form: the inspectors and the enterprise's representative."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inspectors: tuple[Ident, ...] = ()
    enterprise: str | None = Field(default=None, max_length=200)


Reason = Annotated[str, Field(max_length=500)]


class CustodyStep(Event):
    """One step of a task's lifecycle, as carried on the custody topic; `step_id` makes it idempotent."""

    SCHEMA: ClassVar[str] = "custody/1"

    step_id: Ident
    task_id: Ident
    step: TaskState
    actor: Ident
    actor_role: Role
    at: AwareDatetime
    where: Place | None = None
    seals: Seals | None = None
    seal_state: SealState | None = None  # at receipt: the seal as the lab found it
    signatures: Signatures | None = None
    inspectors: tuple[Ident, ...] = ()  # an assigned step: the inspectors assigned
    reason: Reason | None = None
    lab_id: Ident | None = None  # a lab step: the lab of the actor

    @model_validator(mode="after")
    def _complete_for_its_step(self) -> Self:
        step = self.step
        if step in NEEDS_REASON and not (self.reason and self.reason.strip()):
            raise ValueError(f"a {step} step must give a reason")
        if step is S.ASSIGNED:
            if len(set(self.inspectors)) < 2 or len(set(self.inspectors)) != len(self.inspectors):
                raise ValueError("an assigned step names at least two distinct inspectors")
        elif self.inspectors:
            raise ValueError("inspectors are named on an assigned step only")
        if step is S.SAMPLED:
            _check_sampling_form(self.signatures, self.seals)
        if step is S.RECEIVED:
            if self.seal_state is None:
                raise ValueError("a received step records the seal state (intact or broken)")
            if self.seals is None or self.seals.test is None:
                raise ValueError("a received step records the seal number observed (seals.test)")
        elif self.seal_state is not None:
            raise ValueError("the seal state is recorded on a received step only")
        if self.actor_role is Role.LAB and self.lab_id is None:
            raise ValueError(f"a {step} step names the lab (lab_id)")
        return self


def _check_sampling_form(signatures: Signatures | None, seals: Seals | None) -> None:
    signed = signatures.inspectors if signatures else ()
    if len(set(signed)) < 2:
        raise ValueError("a sampled step needs the signatures of two distinct inspectors")
    if signatures is None or not (signatures.enterprise and signatures.enterprise.strip()):
        raise ValueError("a sampled step needs the signature of the enterprise's representative")
    if seals is None or seals.test is None or seals.retained is None:
        raise ValueError("a sampled step records both seal numbers (test and retained)")
    if seals.test == seals.retained:
        raise ValueError(f"the test and retained portions carry the same seal number {seals.test}")


class IllegalTransition(InvalidInput):
    """A step the task's current state does not allow."""

    def __init__(self, current: TaskState, attempted: TaskState, task_id: str = "") -> None:
        allowed = sorted(TRANSITIONS[current])
        nxt = ", ".join(allowed) if allowed else f"nothing: {current} is final"
        who = f"task {task_id} is" if task_id else "the task is"
        super().__init__(f"{who} {current}; {attempted} may not follow (allowed: {nxt})", field="step")
        self.current = current
        self.attempted = attempted
        self.allowed = frozenset(allowed)


class NotPermitted(InvalidInput):
    """A step done by someone who may not do it (wrong role, not assigned, another lab)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="actor")


def apply(state: TaskState, step: CustodyStep, assigned: frozenset[str], lab_id: str) -> TaskState:
    """The state after `step`; IllegalTransition if the state does not allow it, NotPermitted if its
    actor may not do it. Idempotency (a step_id seen before) is the caller's: see TaskCustody."""
    if step.step not in TRANSITIONS[state]:
        raise IllegalTransition(state, step.step, step.task_id)
    problem = permission_problem(step, assigned, lab_id)
    if problem:
        raise NotPermitted(problem)
    return step.step


def permission_problem(step: CustodyStep, assigned: frozenset[str], lab_id: str) -> str | None:
    """Why the actor of `step` may not do it, or None."""
    roles = ROLES[step.step]
    if step.actor_role not in roles:
        may = " or ".join(sorted(roles))
        return f"a {step.step} step is done by {may}, not by {step.actor_role} {step.actor}"
    if step.actor_role is Role.INSPECTOR:
        named = ", ".join(sorted(assigned)) or "nobody"
        if step.actor not in assigned:
            return f"inspector {step.actor} is not assigned to task {step.task_id} (assigned: {named})"
        signers = step.signatures.inspectors if step.signatures else ()
        strangers = sorted(set(signers) - assigned)
        if strangers:
            return f"the form is signed by {', '.join(strangers)}, not assigned (assigned: {named})"
    if step.actor_role is Role.LAB and step.lab_id != lab_id:
        return f"task {step.task_id} is assigned to lab {lab_id}, not {step.lab_id}"
    return None


SYSTEM_ACTOR = "system"


def verdict_steps(state: TaskState, task_id: str, verdict_id: str, at: datetime) -> list[CustodyStep]:
    """The system steps a verdict records for a task in `state`: reported (unless the lab did) and
    judged, once its sample is at the lab; nothing for a task whose trail has not reached the lab or
    is past it. Their step ids derive from the verdict's, so a re-delivered verdict adds nothing."""
    if state in (S.RECEIVED, S.TESTING):
        targets: tuple[TaskState, ...] = (S.REPORTED, S.JUDGED)
    elif state is S.REPORTED:
        targets = (S.JUDGED,)
    else:
        return []
    return [
        CustodyStep(
            step_id=f"{verdict_id}/{target}",
            task_id=task_id,
            step=target,
            actor=SYSTEM_ACTOR,
            actor_role=Role.SYSTEM,
            at=at,
            reason=f"verdict {verdict_id}",
        )
        for target in targets
    ]


def initial_state(task: SamplingTask) -> TaskState:
    """A task created with its inspectors is born assigned; otherwise planned."""
    return S.ASSIGNED if task.inspectors else S.PLANNED


def assigned_after(step: CustodyStep, assigned: frozenset[str]) -> frozenset[str]:
    """The inspectors assigned once `step` is taken (an assigned step names them)."""
    return frozenset(step.inspectors) if step.step is S.ASSIGNED else assigned


@dataclass
class TaskCustody:
    """What a custody processor knows of one task: its state, its inspectors, the steps taken."""

    task: SamplingTask
    state: TaskState
    assigned: frozenset[str]
    by_id: dict[str, CustodyStep] = field(default_factory=dict)

    @classmethod
    def start(cls, task: SamplingTask) -> TaskCustody:
        return cls(task=task, state=initial_state(task), assigned=frozenset(task.inspectors))

    def apply(self, step: CustodyStep) -> bool:
        """Take one step: True if taken, False for a resend of a step already taken; IllegalTransition,
        NotPermitted or InvalidInput (a reused step_id, another task's step) otherwise."""
        known = self.by_id.get(step.step_id)
        if known is not None:
            if known == step:
                return False
            raise InvalidInput(f"step_id {step.step_id} was already used for another step", field="step_id")
        if step.task_id != self.task.task_id:
            raise InvalidInput(
                f"step of task {step.task_id} sent to task {self.task.task_id}", field="task_id"
            )
        self.state = apply(self.state, step, self.assigned, self.task.lab_id)
        self.assigned = assigned_after(step, self.assigned)
        self.by_id[step.step_id] = step
        return True


# ---- the trail of a sample and its gaps


class GapKind(StrEnum):
    SEAL_CHANGED = "seal-changed"
    SEAL_BROKEN = "seal-broken"
    SLOW_TRANSIT = "slow-transit"
    NOT_PERMITTED = "not-permitted"
    MISSING_STEP = "missing-step"
    OUT_OF_ORDER = "out-of-order"
    REUSED_STEP_ID = "reused-step-id"


class Gap(BaseModel):
    """A break in the chain of custody, found at one step."""

    model_config = ConfigDict(frozen=True)

    kind: GapKind
    step_id: str
    detail: str


class Trail(BaseModel):
    """The steps of one task's sample in time order, the state they lead to and every gap."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    sample_id: str
    state: TaskState
    steps: tuple[CustodyStep, ...]
    gaps: tuple[Gap, ...]


def build_trail(
    task: SamplingTask, steps: Iterable[CustodyStep], zone: ZoneInfo, max_transit: timedelta
) -> Trail:
    """The trail of `task` from its steps as recorded (any order, resends included)."""
    ordered, gaps, state = _walk(task, steps, zone, max_transit)
    return Trail(
        task_id=task.task_id, sample_id=task.sample_id, state=state, steps=tuple(ordered), gaps=tuple(gaps)
    )


def trail_gaps(
    task: SamplingTask, steps: Iterable[CustodyStep], zone: ZoneInfo, max_transit: timedelta
) -> list[Gap]:
    """Every gap in the trail of `task` (see build_trail)."""
    return _walk(task, steps, zone, max_transit)[1]


def _walk(
    task: SamplingTask, steps: Iterable[CustodyStep], zone: ZoneInfo, max_transit: timedelta
) -> tuple[list[CustodyStep], list[Gap], TaskState]:
    """Replay the steps without raising: a step the table does not allow is a gap, and the state moves
    on when the step lies ahead on the main line (steps may be recorded late, e.g. from a device that
    was offline), so one missing step does not hide the rest of the trail."""
    gaps: list[Gap] = []
    unique: dict[str, CustodyStep] = {}
    for step in steps:
        if step.task_id != task.task_id:
            raise InvalidInput(f"step {step.step_id} belongs to task {step.task_id}, not {task.task_id}")
        known = unique.get(step.step_id)
        if known is None:
            unique[step.step_id] = step
        elif known != step:
            gaps.append(Gap(kind=GapKind.REUSED_STEP_ID, step_id=step.step_id, detail="step_id used twice"))
    ordered = sorted(unique.values(), key=lambda s: s.at)  # stable: ties keep their recorded order

    state, assigned = initial_state(task), frozenset(task.inspectors)
    sampled: CustodyStep | None = None
    left: CustodyStep | None = None  # the step the sample left the site with
    for step in ordered:
        sid = step.step_id
        if step.step in TRANSITIONS[state]:
            state = step.step
        elif _ahead(state, step.step):
            skipped = MAIN_LINE[MAIN_LINE.index(state) + 1 : MAIN_LINE.index(step.step)]
            detail = f"{step.step} at {_local(step.at, zone)} without {', '.join(skipped)} before it"
            gaps.append(Gap(kind=GapKind.MISSING_STEP, step_id=sid, detail=detail))
            state = step.step
        else:
            detail = f"{step.step} at {_local(step.at, zone)} while the task was {state}"
            gaps.append(Gap(kind=GapKind.OUT_OF_ORDER, step_id=sid, detail=detail))
            continue
        problem = permission_problem(step, assigned, task.lab_id)
        if problem:
            gaps.append(Gap(kind=GapKind.NOT_PERMITTED, step_id=sid, detail=problem))
        assigned = assigned_after(step, assigned)
        if step.step is S.SAMPLED:
            sampled = left = step
        elif step.step is S.IN_TRANSIT:
            left = step
        if sampled is not None and step is not sampled and step.seals is not None:
            gaps.extend(_seal_changes(sampled, step))
        if step.seal_state is SealState.BROKEN:
            detail = f"seal {step.seals.test if step.seals else '?'} found broken at receipt"
            gaps.append(Gap(kind=GapKind.SEAL_BROKEN, step_id=sid, detail=detail))
        if step.step is S.RECEIVED and left is not None and step.at - left.at > max_transit:
            detail = (
                f"transit took {step.at - left.at} (from {_local(left.at, zone)} to "
                f"{_local(step.at, zone)}), more than {max_transit}"
            )
            gaps.append(Gap(kind=GapKind.SLOW_TRANSIT, step_id=sid, detail=detail))
    return ordered, gaps, state


def _ahead(state: TaskState, target: TaskState) -> bool:
    return state in MAIN_LINE and target in MAIN_LINE and MAIN_LINE.index(target) > MAIN_LINE.index(state)


def _seal_changes(sampled: CustodyStep, later: CustodyStep) -> list[Gap]:
    assert sampled.seals is not None and later.seals is not None
    gaps = []
    for portion in ("test", "retained"):
        was, now = getattr(sampled.seals, portion), getattr(later.seals, portion)
        if now is not None and now != was:
            detail = f"{portion} portion sealed {was} at sampling, {now} at {later.step}"
            gaps.append(Gap(kind=GapKind.SEAL_CHANGED, step_id=later.step_id, detail=detail))
    return gaps


def _local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


# ---- deadlines

END_OF_DAY = time(23, 59, 59)


def due_after(start: datetime, days: int, zone: ZoneInfo) -> datetime:
    """The end (23:59:59 local) of the calendar day `days` days after the local day of `start`; the
    starting day is not counted (1 March + 10 days is due 11 March 23:59:59)."""
    if start.tzinfo is None:
        raise InvalidInput("a deadline starts from an aware datetime", field="start")
    if days < 0:
        raise InvalidInput(f"a deadline is a number of days >= 0, not {days}", field="days")
    day = start.astimezone(zone).date() + timedelta(days=days)
    return datetime.combine(day, END_OF_DAY, tzinfo=zone)


def sampling_due(created_at: datetime, days: int, zone: ZoneInfo) -> datetime:
    """When a task must be sampled: `days` calendar days after its creation, in the bureau's zone."""
    return due_after(created_at, days, zone)


def report_due(received_at: datetime, spec_days: int, zone: ZoneInfo) -> datetime:
    """When the lab must report: the spec's days after the sample was received, in the bureau's zone."""
    return due_after(received_at, spec_days, zone)


def overdue(state: TaskState, due: datetime | None, now: datetime, met_at: TaskState) -> bool:
    """True when `now` is past `due` and the task has not yet reached `met_at` on the main line. A task
    that left the main line (refused, not found, not sampleable, cancelled) is never overdue."""
    if due is None or state not in MAIN_LINE:
        return False
    return MAIN_LINE.index(state) < MAIN_LINE.index(met_at) and now > due


def sampling_overdue(state: TaskState, due: datetime | None, now: datetime) -> bool:
    return overdue(state, due, now, S.SAMPLED)


def report_overdue(state: TaskState, due: datetime | None, now: datetime) -> bool:
    return overdue(state, due, now, S.REPORTED)
