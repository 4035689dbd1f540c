"""Deadlines of a task (sampling due, report due), the per-task state a stream keeps, overdue alerts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict

from spotcheck.custody import MAIN_LINE, CustodyStep, TaskState, initial_state, report_due
from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident, SamplingTask

S = TaskState

ENDS = frozenset({S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED, S.CLOSED})
"""Steps after which a task has no deadline left."""


class AlertKind(StrEnum):
    SAMPLING_OVERDUE = "sampling-overdue"
    REPORT_OVERDUE = "report-overdue"


class OverdueAlert(Event):
    """A task missed a deadline: not sampled, or not reported, by its due time (one per task, kind, due)."""

    SCHEMA: ClassVar[str] = "alert/1"

    alert_id: str
    task_id: Ident
    sample_id: Ident
    enterprise_id: Ident
    lab_id: Ident
    inspectors: tuple[str, ...] = ()
    kind: AlertKind
    due: AwareDatetime
    detected_at: AwareDatetime
    state: TaskState


def alert_id(task_id: str, kind: AlertKind, due: datetime) -> str:
    """The id of the alert for (task, kind, due): the same whenever and wherever it is detected."""
    instant = due.timestamp()
    digest = hashlib.sha256(f"{task_id}\x1f{kind.value}\x1f{instant:.6f}".encode())
    return digest.hexdigest()[:32]


class Deadlines(BaseModel):
    """What the stream knows of one task's deadlines: the task (once it came), the earliest time each
    step was reached (steps may come before their task, late or more than once) and the alerts sent.
    JSON-serialisable (`to_json_dict` / `from_json_dict`) for a faust table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    task: SamplingTask | None = None
    report_days: int | None = None  # the spec's days to report, None when the spec is not known
    reached: dict[TaskState, AwareDatetime] = {}
    assigned: tuple[str, ...] | None = None  # the inspectors an assigned step named
    report_due: AwareDatetime | None = None  # the task's own, else from receipt + report_days
    sent: tuple[str, ...] = ()  # ids of the alerts published

    @property
    def sampling_due(self) -> datetime | None:
        return self.task.sampling_due if self.task is not None else None

    @property
    def ended(self) -> bool:
        return any(s in ENDS for s in self.reached)

    @property
    def state(self) -> TaskState:
        """The task's state as far as its steps tell: an end if one was reached, else the furthest
        step on the main line, else the state it was born in."""
        if S.CLOSED in self.reached:
            return S.CLOSED
        ends = sorted((at, s) for s, at in self.reached.items() if s in ENDS)
        if ends:
            return ends[0][1]
        on_line = [s for s in self.reached if s in MAIN_LINE]
        if on_line:
            return max(on_line, key=MAIN_LINE.index)
        return initial_state(self.task) if self.task is not None else S.PLANNED

    def reached_at(self, step: TaskState) -> datetime | None:
        """The earliest time the task was at `step` or further on the main line (a later step proves
        the earlier ones were done by then, even when their own step is missing)."""
        index = MAIN_LINE.index(step)
        times = [at for s, at in self.reached.items() if s in MAIN_LINE and MAIN_LINE.index(s) >= index]
        return min(times, default=None)

    @property
    def sampled_at(self) -> datetime | None:
        stepped = self.reached_at(S.SAMPLED)
        told = self.task.sampled_at if self.task is not None else None
        return min((t for t in (stepped, told) if t is not None), default=None)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json_dict(cls, value: dict[str, Any]) -> Deadlines:
        return cls.model_validate(value)


def start(task_id: str) -> Deadlines:
    """The state of a task nothing is known of yet."""
    return Deadlines(task_id=task_id)


def with_task(state: Deadlines, task: SamplingTask, report_days: int | None, zone: ZoneInfo) -> Deadlines:
    """`state` once `task` came (a resend replaces it). `report_days`: the spec's, None if unknown."""
    _same_task(state, task.task_id)
    updated = state.model_copy(update={"task": task, "report_days": report_days})
    return _settle(updated, zone)


def with_step(state: Deadlines, step: CustodyStep, zone: ZoneInfo) -> Deadlines:
    """`state` once `step` was taken: each step keeps the earliest time it was reached."""
    _same_task(state, step.task_id)
    known = state.reached.get(step.step)
    if known is not None and known <= step.at:
        return state
    update: dict[str, Any] = {"reached": {**state.reached, step.step: step.at}}
    if step.step is S.ASSIGNED:
        update["assigned"] = step.inspectors
    return _settle(state.model_copy(update=update), zone)


def _same_task(state: Deadlines, task_id: str) -> None:
    if task_id != state.task_id:
        raise InvalidInput(f"task {task_id} is not task {state.task_id}", field="task_id")


def _settle(state: Deadlines, zone: ZoneInfo) -> Deadlines:
    """The report due time: the task's own if it carries one, else the spec's days after receipt."""
    due: datetime | None = None
    if state.task is not None and state.task.report_due is not None:
        due = state.task.report_due
    else:
        received = state.reached_at(S.RECEIVED)
        if received is not None and state.report_days is not None:
            due = report_due(received, state.report_days, zone)
    return state.model_copy(update={"report_due": due})


def _missed(due: datetime | None, met_at: datetime | None, now: datetime) -> bool:
    """Not met by `due`: still open after it, or met after it (a late step still tells of a miss)."""
    if due is None:
        return False
    return now > due if met_at is None else met_at > due


def due_alerts(state: Deadlines, now: datetime) -> list[OverdueAlert]:
    """The alerts to publish at `now`: each missed deadline not alerted yet. A task that is not known
    yet or that ended (refused, not found, not sampleable, cancelled, closed) has none."""
    task = state.task
    if task is None or state.ended:
        return []
    missed: list[tuple[AlertKind, datetime]] = []
    if state.sampling_due is not None and _missed(state.sampling_due, state.sampled_at, now):
        missed.append((AlertKind.SAMPLING_OVERDUE, state.sampling_due))
    if state.report_due is not None and _missed(state.report_due, state.reached_at(S.REPORTED), now):
        missed.append((AlertKind.REPORT_OVERDUE, state.report_due))
    alerts = []
    current = state.state
    for kind, due in missed:
        ident = alert_id(task.task_id, kind, due)
        if ident in state.sent:
            continue
        alerts.append(
            OverdueAlert(
                alert_id=ident,
                task_id=task.task_id,
                sample_id=task.sample_id,
                enterprise_id=task.enterprise_id,
                lab_id=task.lab_id,
                inspectors=state.assigned if state.assigned is not None else task.inspectors,
                kind=kind,
                due=due,
                detected_at=now,
                state=current,
            )
        )
    return alerts


def mark_sent(state: Deadlines, alerts: Iterable[OverdueAlert]) -> Deadlines:
    """`state` remembering that `alerts` were published, so they are never published again."""
    ids = set(state.sent) | {a.alert_id for a in alerts}
    return state.model_copy(update={"sent": tuple(sorted(ids))})


def merge(state: Deadlines, other: Deadlines, zone: ZoneInfo) -> Deadlines:
    """What `state` and `other` know together (the same task seen by two paths, e.g. a table and the
    record): the task, each step at its earliest time, every alert sent. Order does not matter."""
    _same_task(state, other.task_id)
    reached = dict(state.reached)
    assigned = state.assigned
    for step, at in other.reached.items():
        known = reached.get(step)
        if known is None or at < known:
            reached[step] = at
            if step is S.ASSIGNED:
                assigned = other.assigned
    source = state if state.task is not None else other
    merged = state.model_copy(
        update={
            "task": source.task,
            "report_days": source.report_days,
            "reached": reached,
            "assigned": assigned,
            "sent": tuple(sorted(set(state.sent) | set(other.sent))),
        }
    )
    return _settle(merged, zone)


def finished(state: Deadlines, now: datetime) -> bool:
    """No deadline is left to watch: the task ended, or it was reported (both deadlines settled),
    and every alert it owes was sent. A task not known yet is never finished."""
    if state.task is None:
        return False
    if not state.ended and state.reached_at(S.REPORTED) is None:
        return False
    return not due_alerts(state, now)
