"""A task's deadline state and its overdue alerts: dues, steps in any order, late steps, ends, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spotcheck.custody import ROLES, CustodyStep, Role, TaskState
from spotcheck.deadlines import (
    AlertKind,
    Deadlines,
    OverdueAlert,
    alert_id,
    due_alerts,
    mark_sent,
    start,
    with_step,
    with_task,
)
from spotcheck.errors import InvalidInput
from spotcheck.events import SamplingTask
from spotcheck.labs import Lab, ScopeEntry
from spotcheck.specs import load_catalog
from spotcheck.tasks import TaskRequest, build_task
from spotcheck.topics import ALERTS

S = TaskState
ZONE = ZoneInfo("Asia/Shanghai")
TASK_ID = "T-2026-000042"
LAB = "LAB-7"
CREATED = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)  # 1 March, 10:00 in Shanghai
SAMPLING_DUE = datetime(2026, 3, 11, 23, 59, 59, tzinfo=ZONE)
ACTOR = {Role.INSPECTOR: "INS-1", Role.LAB: "LU-3", Role.PLANNER: "PL-1", Role.SYSTEM: "verdicts"}
SECOND = timedelta(seconds=1)


def make_task(**kw: Any) -> SamplingTask:
    fields: dict[str, Any] = dict(
        task_id=TASK_ID,
        sample_id=f"{TASK_ID}-A",
        enterprise_id="E-1",
        product="92# gasoline",
        spec="GB17930-2016:VIB:92",
        items=("ron", "sulfur"),
        lab_id=LAB,
        inspectors=("INS-1", "INS-2"),
        created_at=CREATED,
        sampling_due=SAMPLING_DUE,
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


def step(target: TaskState, at: datetime, n: int = 0, **kw: Any) -> CustodyStep:
    """A complete step to `target` at `at`, by an actor of the first role allowed for it."""
    role = sorted(ROLES[target])[0]
    fields: dict[str, Any] = dict(
        step_id=f"S-{target}-{n}", task_id=TASK_ID, step=target, actor=ACTOR[role], actor_role=role, at=at
    )
    if target is S.ASSIGNED:
        fields["inspectors"] = ("INS-3", "INS-4")
    if target is S.SAMPLED:
        fields["signatures"] = {"inspectors": ("INS-1", "INS-2"), "enterprise": "Wang Li"}
        fields["seals"] = {"test": "SEAL-001", "retained": "SEAL-002"}
    if target is S.RECEIVED:
        fields["seal_state"] = "intact"
        fields["seals"] = {"test": "SEAL-001"}
    if Role.LAB in ROLES[target]:
        fields["lab_id"] = LAB
    if target in (S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED):
        fields["reason"] = "the station was closed for renovation"
    fields.update(kw)
    return CustodyStep.model_validate(fields)


def fed(*events: SamplingTask | CustodyStep, report_days: int | None = 10) -> Deadlines:
    state = start(TASK_ID)
    for event in events:
        if isinstance(event, SamplingTask):
            state = with_task(state, event, report_days, ZONE)
        else:
            state = with_step(state, event, ZONE)
    return state


def kinds(state: Deadlines, now: datetime) -> list[tuple[AlertKind, datetime]]:
    return [(a.kind, a.due) for a in due_alerts(state, now)]


# ---- sampling deadline


def test_a_task_is_not_overdue_up_to_the_last_second_of_its_due_day() -> None:
    state = fed(make_task())
    assert due_alerts(state, SAMPLING_DUE) == []
    assert kinds(state, SAMPLING_DUE + SECOND) == [(AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE)]


def test_the_alert_names_the_task_its_people_and_its_state() -> None:
    now = SAMPLING_DUE + timedelta(days=2)
    (alert,) = due_alerts(fed(make_task()), now)
    assert alert == OverdueAlert(
        alert_id=alert_id(TASK_ID, AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE),
        task_id=TASK_ID,
        sample_id=f"{TASK_ID}-A",
        enterprise_id="E-1",
        lab_id=LAB,
        inspectors=("INS-1", "INS-2"),
        kind=AlertKind.SAMPLING_OVERDUE,
        due=SAMPLING_DUE,
        detected_at=now,
        state=S.ASSIGNED,
    )
    assert alert.to_dict()["schema"] == "alert/1"
    assert OverdueAlert.from_json(alert.to_json()) == alert


def test_a_task_without_a_sampling_due_has_no_sampling_deadline() -> None:
    state = fed(make_task(sampling_due=None))
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=400)) == []


def test_sampled_in_time_meets_the_deadline_even_when_the_step_comes_after_it() -> None:
    sampled = step(S.SAMPLED, SAMPLING_DUE - SECOND)
    assert due_alerts(fed(make_task(), sampled), SAMPLING_DUE + timedelta(days=5)) == []


def test_sampled_one_second_late_is_a_missed_deadline() -> None:
    sampled = step(S.SAMPLED, SAMPLING_DUE + SECOND)
    state = fed(make_task(), sampled)
    assert kinds(state, SAMPLING_DUE + timedelta(days=5)) == [(AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE)]
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=5))[0].state is S.SAMPLED


def test_a_task_created_as_already_sampled_is_not_overdue() -> None:
    state = fed(make_task(sampled_at=SAMPLING_DUE - timedelta(days=1)))
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=5)) == []


def test_a_later_step_proves_the_sample_was_taken_when_the_sampled_step_is_missing() -> None:
    received = step(S.RECEIVED, SAMPLING_DUE - timedelta(hours=1))
    state = fed(make_task(), received)
    assert S.SAMPLED not in state.reached
    assert kinds(state, SAMPLING_DUE + timedelta(days=1)) == []


def test_an_assigned_step_names_the_inspectors_the_alert_goes_to() -> None:
    state = fed(make_task(inspectors=()), step(S.ASSIGNED, CREATED))
    (alert,) = due_alerts(state, SAMPLING_DUE + SECOND)
    assert alert.inspectors == ("INS-3", "INS-4")
    assert alert.state is S.ASSIGNED


# ---- report deadline: the spec's days from receipt, local days in Asia/Shanghai


def test_receipt_just_before_local_midnight_counts_from_that_day() -> None:
    received_at = datetime(2026, 3, 1, 23, 30, tzinfo=ZONE)  # 15:30 UTC
    state = fed(make_task(sampling_due=None), step(S.RECEIVED, received_at))
    due = datetime(2026, 3, 11, 23, 59, 59, tzinfo=ZONE)
    assert state.report_due == due
    assert due_alerts(state, due) == []
    assert kinds(state, due + SECOND) == [(AlertKind.REPORT_OVERDUE, due)]


def test_receipt_just_after_local_midnight_counts_from_the_next_day() -> None:
    received_at = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)  # 2 March, 00:30 in Shanghai
    state = fed(make_task(sampling_due=None), step(S.RECEIVED, received_at))
    assert state.report_due == datetime(2026, 3, 12, 23, 59, 59, tzinfo=ZONE)
    assert state.report_due == datetime(2026, 3, 12, 15, 59, 59, tzinfo=UTC)


def test_the_report_days_come_from_the_spec_catalog_as_the_stream_passes_them() -> None:
    days = load_catalog().get("GB/T3956-2008:1:2.5").report_days
    received_at = datetime(2026, 3, 1, 9, 0, tzinfo=ZONE)
    task = make_task(spec="GB/T3956-2008:1:2.5", items=("conductor_resistance",), sampling_due=None)
    state = fed(task, step(S.RECEIVED, received_at), report_days=days)
    assert state.report_due == datetime(2026, 3, 1 + days, 23, 59, 59, tzinfo=ZONE)


def test_a_task_carrying_its_report_due_keeps_it() -> None:
    own = datetime(2026, 3, 5, 18, 0, tzinfo=ZONE)
    state = fed(make_task(report_due=own), step(S.RECEIVED, datetime(2026, 3, 2, 9, 0, tzinfo=ZONE)))
    assert state.report_due == own
    assert kinds(state, own + SECOND) == [(AlertKind.REPORT_OVERDUE, own)]


def test_no_report_deadline_before_receipt_or_without_report_days() -> None:
    never = SAMPLING_DUE + timedelta(days=400)
    sampled = step(S.SAMPLED, CREATED + timedelta(days=1))
    assert kinds(fed(make_task(), sampled), never) == []
    received = step(S.RECEIVED, CREATED + timedelta(days=2))
    assert kinds(fed(make_task(), sampled, received, report_days=None), never) == []


@pytest.mark.parametrize("meets", [S.REPORTED, S.JUDGED])
def test_a_report_in_time_meets_the_report_deadline(meets: TaskState) -> None:
    received_at = datetime(2026, 3, 2, 9, 0, tzinfo=ZONE)
    due = datetime(2026, 3, 12, 23, 59, 59, tzinfo=ZONE)
    state = fed(make_task(), step(S.RECEIVED, received_at), step(meets, due - SECOND))
    assert kinds(state, due + timedelta(days=30)) == []


def test_a_report_one_second_late_is_a_missed_report_deadline() -> None:
    received_at = datetime(2026, 3, 2, 9, 0, tzinfo=ZONE)
    due = datetime(2026, 3, 12, 23, 59, 59, tzinfo=ZONE)
    state = fed(make_task(), step(S.RECEIVED, received_at), step(S.REPORTED, due + SECOND))
    assert kinds(state, due + timedelta(days=30)) == [(AlertKind.REPORT_OVERDUE, due)]


def test_both_deadlines_missed_give_two_alerts() -> None:
    received = step(S.RECEIVED, SAMPLING_DUE + timedelta(days=1))  # sampled late, too
    state = fed(make_task(), received)
    report = datetime(2026, 3, 22, 23, 59, 59, tzinfo=ZONE)
    assert kinds(state, report + SECOND) == [
        (AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE),
        (AlertKind.REPORT_OVERDUE, report),
    ]


# ---- order of arrival and resends


def test_steps_arriving_before_their_task_count_once_it_comes() -> None:
    received = step(S.RECEIVED, datetime(2026, 3, 2, 9, 0, tzinfo=ZONE))
    sampled = step(S.SAMPLED, datetime(2026, 3, 1, 15, 0, tzinfo=ZONE))
    early = fed(received, sampled)
    assert early.task is None
    assert due_alerts(early, SAMPLING_DUE + timedelta(days=100)) == []
    state = with_task(early, make_task(), 10, ZONE)
    assert state == fed(make_task(), sampled, received)
    due = datetime(2026, 3, 12, 23, 59, 59, tzinfo=ZONE)
    assert kinds(state, due + SECOND) == [(AlertKind.REPORT_OVERDUE, due)]


def test_a_resent_step_keeps_the_earliest_time() -> None:
    first = step(S.RECEIVED, datetime(2026, 3, 2, 9, 0, tzinfo=ZONE))
    again = step(S.RECEIVED, datetime(2026, 3, 5, 9, 0, tzinfo=ZONE), n=1)
    state = fed(make_task(), first)
    assert with_step(state, first, ZONE) == state
    assert with_step(state, again, ZONE) == state
    assert fed(make_task(), again, first) == state


def test_a_resent_task_changes_nothing() -> None:
    state = fed(make_task(), step(S.RECEIVED, datetime(2026, 3, 2, 9, 0, tzinfo=ZONE)))
    assert with_task(state, make_task(), 10, ZONE) == state


def test_events_of_another_task_are_refused() -> None:
    with pytest.raises(InvalidInput, match="T-9 is not"):
        with_task(start(TASK_ID), make_task(task_id="T-9", sample_id="T-9-A"), 10, ZONE)
    with pytest.raises(InvalidInput, match="T-9 is not"):
        with_step(start(TASK_ID), step(S.SAMPLED, CREATED, task_id="T-9"), ZONE)


# ---- ends


@pytest.mark.parametrize("end", [S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED])
def test_a_task_off_the_main_line_has_no_deadlines(end: TaskState) -> None:
    state = fed(make_task(), step(end, CREATED + timedelta(days=1)))
    assert state.ended and state.state is end
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=100)) == []


def test_an_end_after_the_due_time_still_silences_an_unsent_alert() -> None:
    state = fed(make_task(), step(S.CANCELLED, SAMPLING_DUE + timedelta(days=3)))
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=4)) == []


def test_a_closed_task_has_no_deadlines() -> None:
    received = step(S.RECEIVED, datetime(2026, 3, 2, 9, 0, tzinfo=ZONE))
    closed = step(S.CLOSED, datetime(2026, 3, 3, 9, 0, tzinfo=ZONE))
    state = fed(make_task(), received, closed)
    assert state.state is S.CLOSED
    assert due_alerts(state, datetime(2027, 1, 1, tzinfo=UTC)) == []


def test_an_end_arriving_before_the_task_counts_too() -> None:
    state = fed(step(S.CANCELLED, CREATED), make_task())
    assert due_alerts(state, SAMPLING_DUE + timedelta(days=1)) == []


def test_a_task_nobody_sent_has_no_alerts() -> None:
    state = fed(step(S.RECEIVED, CREATED))
    assert due_alerts(state, datetime(2030, 1, 1, tzinfo=UTC)) == []


# ---- at most once


def test_an_alert_marked_sent_is_not_due_again() -> None:
    state = fed(make_task())
    alerts = due_alerts(state, SAMPLING_DUE + SECOND)
    sent = mark_sent(state, alerts)
    assert due_alerts(sent, SAMPLING_DUE + timedelta(days=30)) == []
    assert mark_sent(sent, alerts) == sent


def test_only_the_new_kind_is_due_after_one_was_sent() -> None:
    state = mark_sent(fed(make_task()), due_alerts(fed(make_task()), SAMPLING_DUE + SECOND))
    state = with_step(state, step(S.RECEIVED, SAMPLING_DUE + timedelta(days=1)), ZONE)
    report = datetime(2026, 3, 22, 23, 59, 59, tzinfo=ZONE)
    assert kinds(state, report + SECOND) == [(AlertKind.REPORT_OVERDUE, report)]


def test_a_changed_due_time_is_a_new_alert() -> None:
    first = fed(make_task())
    first = mark_sent(first, due_alerts(first, SAMPLING_DUE + SECOND))
    later_due = SAMPLING_DUE + timedelta(days=7)
    moved = with_task(first, make_task(sampling_due=later_due), 10, ZONE)
    assert due_alerts(moved, later_due) == []
    assert kinds(moved, later_due + SECOND) == [(AlertKind.SAMPLING_OVERDUE, later_due)]


def test_the_alert_id_depends_on_task_kind_and_due_instant_only() -> None:
    ident = alert_id(TASK_ID, AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE)
    assert ident == alert_id(TASK_ID, AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE.astimezone(UTC))
    assert ident != alert_id(TASK_ID, AlertKind.REPORT_OVERDUE, SAMPLING_DUE)
    assert ident != alert_id("T-2026-000043", AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE)
    assert ident != alert_id(TASK_ID, AlertKind.SAMPLING_OVERDUE, SAMPLING_DUE + SECOND)


# ---- the state as a faust table keeps it


def test_the_state_survives_a_json_round_trip() -> None:
    state = fed(
        step(S.ASSIGNED, CREATED),
        make_task(inspectors=()),
        step(S.SAMPLED, CREATED + timedelta(days=1)),
        step(S.RECEIVED, CREATED + timedelta(days=2)),
    )
    state = mark_sent(state, due_alerts(state, datetime(2026, 6, 1, tzinfo=UTC)))
    assert state.sent
    raw = json.loads(json.dumps(state.to_json_dict()))
    assert Deadlines.from_json_dict(raw) == state


def test_the_alerts_topic_carries_alerts() -> None:
    assert ALERTS.model is OverdueAlert and ALERTS.key == "task_id"


# ---- tasks created by hand


LAB_1 = Lab(lab_id="LAB-1", name="test lab", scope=(ScopeEntry(spec="*"),))


def _request(**kw: Any) -> TaskRequest:
    body: dict[str, Any] = dict(
        enterprise_id="E-1", product="92# gasoline", spec="GB17930-2016:VIB:92", lab_id="LAB-1"
    )
    body.update(kw)
    return TaskRequest.model_validate(body)


def test_a_task_made_by_hand_is_due_after_the_sampling_days_in_the_bureaus_zone() -> None:
    now = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)  # 2 March, 00:30 in Shanghai
    task = build_task(_request(), 7, now, ZONE, LAB_1, sampling_days=30)
    assert task.sampling_due == datetime(2026, 4, 1, 23, 59, 59, tzinfo=ZONE)
    default = build_task(_request(), 8, now, ZONE, LAB_1)
    assert default.sampling_due == task.sampling_due


def test_a_task_made_by_hand_keeps_the_due_time_it_was_given() -> None:
    given = datetime(2026, 3, 5, 12, 0, tzinfo=ZONE)
    task = build_task(_request(sampling_due=given.isoformat()), 7, CREATED, ZONE, LAB_1, sampling_days=3)
    assert task.sampling_due == given
