"""Enforcement cases: the states, the inputs (case-input/1), the action events (case-event/1) with the
task orders they carry, the case record a stream keeps, and the ids of a case's tasks."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident, Outcome, TaskKind


class CaseState(StrEnum):
    OBJECTION_WINDOW = "objection-window"  # stop sale; notice served; the enterprise may object
    RETEST = "retest"  # objection filed; the retained sample is re-tested elsewhere
    RECTIFICATION = "rectification"  # final unqualified; correcting until the deadline
    FOLLOW_UP = "follow-up"  # a follow-up (复查) task is out; waiting for its verdict
    ANNOUNCED = "announced"  # first follow-up failed; announced; second follow-up later
    SUSPENDED = "suspended"  # second follow-up failed; suspension for rectification (停业整顿)
    CLOSED = "closed"  # passed (retest or follow-up) or the result was corrected
    REVOCATION_PROPOSED = "revocation-proposed"  # failed after suspension; licence revocation proposed


C = CaseState
TERMINAL = frozenset({C.CLOSED, C.REVOCATION_PROPOSED})


class ActionKind(StrEnum):
    OPENED = "case-opened"
    STOP_SALE = "stop-sale"
    NOTICE_ISSUED = "notice-issued"
    NOTICE_RECEIVED = "notice-received"
    OBJECTION_FILED = "objection-filed"
    RETEST_ORDERED = "retest-ordered"
    RETEST_RESULT = "retest-result"
    RESULT_FINAL = "result-final"
    RECTIFICATION_ORDERED = "rectification-ordered"
    FOLLOW_UP_ORDERED = "follow-up-ordered"
    FOLLOW_UP_RESULT = "follow-up-result"
    ANNOUNCED = "announced"
    SUSPENSION_ORDERED = "suspension-ordered"
    REVOCATION_PROPOSED = "revocation-proposed"
    REFERRAL = "referral"
    UPSTREAM_FOLLOW_UP_ORDERED = "upstream-follow-up-ordered"
    BACK_ON_SALE = "back-on-sale"
    VERDICT_CORRECTED = "verdict-corrected"
    CLOSED = "case-closed"


class Cause(StrEnum):
    UNQUALIFIED = "unqualified"
    REFUSED = "refused"  # the enterprise refused to be sampled: treated as unqualified


class TaskOrder(BaseModel):
    """A task a case asks for; the stream processor turns it into a sampling task with this id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: Ident
    sample_id: Ident
    kind: TaskKind
    enterprise_id: Ident
    product: str
    spec: str
    items: tuple[str, ...]
    from_task_id: Ident  # the failed task: its inspectors are not sent again, its lab not for a retest
    other_lab: bool = False  # a retest goes to a different accredited lab
    sampling_due: AwareDatetime | None = None
    free_of_charge: bool = True  # follow-up samples are given free by the enterprise


class CaseEvent(Event):
    """One state change of a case, as published on the actions topic (keyed by enterprise_id)."""

    SCHEMA: ClassVar[str] = "case-event/1"

    event_id: str  # "<case_id>#<seq>"
    case_id: Ident
    seq: int = Field(ge=1)
    enterprise_id: Ident
    product: str
    spec: str
    kind: ActionKind
    state: CaseState  # the case's state after this event
    at: AwareDatetime
    deadline: AwareDatetime | None = None
    task_id: Ident  # the task whose failure opened the case
    related_task_id: Ident | None = None  # the retest / follow-up task this event is about
    verdict_id: str | None = None
    outcome: Outcome | None = None
    failing_items: tuple[str, ...] = ()
    order: TaskOrder | None = None
    reasons: tuple[str, ...] = ()
    detail: str = ""


class InputKind(StrEnum):
    VERDICT = "verdict"
    REFUSAL = "refusal"
    OBJECTION = "objection"
    NOTICE_RECEIVED = "notice-received"
    CHECK = "check"  # the timer asks for the deadlines that passed


class CaseInput(Event):
    """An input for the cases of one enterprise, carried on the case-inputs topic keyed by enterprise_id."""

    SCHEMA: ClassVar[str] = "case-input/1"

    input_id: str = Field(min_length=1, max_length=200)
    kind: InputKind
    enterprise_id: Ident
    case_id: Ident | None = None  # objection, notice received
    task_id: Ident | None = None  # verdict, refusal
    verdict_id: str | None = None
    version: int | None = Field(default=None, ge=1)
    outcome: Outcome | None = None
    failing_items: tuple[str, ...] = ()
    product: str | None = None
    spec: str | None = None
    items: tuple[str, ...] = ()
    lab_id: Ident | None = None
    at: AwareDatetime  # when it happened (a notice: the day it was received)
    by: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=500)


class Case(BaseModel):
    """What the platform knows of one case. JSON-serialisable for a faust table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: Ident
    enterprise_id: Ident
    product: str
    spec: str
    items: tuple[str, ...]
    task_id: Ident
    verdict_id: str | None = None
    verdict_version: int = 0
    lab_id: Ident | None = None
    cause: Cause
    failing_items: tuple[str, ...] = ()
    state: CaseState
    seq: int = 0
    opened_at: AwareDatetime
    notice_received_at: AwareDatetime | None = None
    objection_due: AwareDatetime | None = None
    objected_at: AwareDatetime | None = None
    retest_task_id: str | None = None
    final_at: AwareDatetime | None = None  # T0: the day the result became final
    final_outcome: Outcome | None = None
    publish_by: AwareDatetime | None = None
    rectification_due: AwareDatetime | None = None
    follow_up_round: int = 0
    follow_up_task_id: str | None = None
    follow_up_due: AwareDatetime | None = None
    next_follow_up_at: AwareDatetime | None = None  # announced / suspended: when the next one is ordered
    announced_at: AwareDatetime | None = None
    suspended_at: AwareDatetime | None = None
    closed_at: AwareDatetime | None = None
    referral: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()  # ids of the inputs taken (a re-delivery changes nothing)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json_dict(cls, value: dict[str, Any]) -> Case:
        return cls.model_validate(value)

    @property
    def awaited_task(self) -> str | None:
        """The task whose verdict the case waits for, if any."""
        if self.state is C.RETEST:
            return self.retest_task_id
        if self.state is C.FOLLOW_UP:
            return self.follow_up_task_id
        return None


class IllegalCaseInput(InvalidInput):
    """An input the case's current state does not allow; names the state."""

    def __init__(self, case: Case, message: str, field: str | None = None) -> None:
        super().__init__(f"case {case.case_id} is {case.state.value}: {message}", field=field)
        self.current = case.state
        self.case_id = case.case_id


# ---- ids

_CASE_TASK = re.compile(r"\.(R|F\d)$")


def case_id_for(task_id: str) -> str:
    """One case per failed task."""
    return f"C-{task_id}"


def retest_task_id(task_id: str) -> str:
    return f"{task_id}.R"


def follow_up_task_id(task_id: str, round_: int) -> str:
    return f"{task_id}.F{round_}"


def upstream_task_id(task_id: str, n: int) -> str:
    return f"{task_id}.U{n}"


def is_case_task(task_id: str) -> bool:
    """A retest or follow-up task of a case: its verdict belongs to that case and opens none."""
    return _CASE_TASK.search(task_id) is not None


def start_of_day_after(start: datetime, days: int, zone: ZoneInfo) -> datetime:
    """00:00 local of the calendar day `days` days after the local day of `start`."""
    day = start.astimezone(zone).date() + timedelta(days=days)
    return datetime.combine(day, time(0, 0), tzinfo=zone)
