"""Two views of a task's deadlines merged (a table and the record): order does not matter, nothing
known is lost; and when a task has no deadline left to watch."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from spotcheck.deadlines import due_alerts, finished, mark_sent, merge, start
from spotcheck.errors import InvalidInput
from tests.unit.test_deadlines import CREATED, SAMPLING_DUE, SECOND, TASK_ID, ZONE, S, fed, make_task, step

DAY = timedelta(days=1)
LATE = SAMPLING_DUE + SECOND


def test_merging_keeps_the_task_each_step_at_its_earliest_and_every_alert_sent() -> None:
    task = make_task()
    table = fed(step(S.SAMPLED, CREATED + DAY), task)
    record = fed(task, step(S.SAMPLED, CREATED + 2 * DAY, n=1), step(S.RECEIVED, CREATED + 3 * DAY))
    record = record.model_copy(update={"sent": ("a1",)})
    merged = merge(table, record, ZONE)
    assert merged.task == task
    assert merged.reached == {S.SAMPLED: CREATED + DAY, S.RECEIVED: CREATED + 3 * DAY}
    assert merged.sent == ("a1",)
    assert merged.report_due is not None  # settled from the receipt the table had not seen
    assert merge(record, table, ZONE) == merged  # either way round


def test_merging_what_a_view_knows_already_changes_nothing() -> None:
    task = make_task()
    full = fed(
        task, step(S.ASSIGNED, CREATED), step(S.SAMPLED, CREATED + DAY), step(S.RECEIVED, CREATED + 2 * DAY)
    )
    for part in (fed(task), fed(step(S.SAMPLED, CREATED + DAY)), start(TASK_ID), full):
        assert merge(full, part, ZONE) == full


def test_merging_steps_in_any_order_gives_one_state() -> None:
    task = make_task()
    views = [
        fed(task, step(S.ASSIGNED, CREATED + DAY)),
        fed(step(S.ASSIGNED, CREATED, n=1, inspectors=("INS-5", "INS-6"))),
        fed(step(S.SAMPLED, CREATED + 2 * DAY)),
    ]
    results = []
    for order in itertools.permutations(views):
        merged = order[0]
        for view in order[1:]:
            merged = merge(merged, view, ZONE)
        results.append(merged)
    assert all(r == results[0] for r in results)
    assert merged.assigned == ("INS-5", "INS-6")  # the earliest assignment's inspectors


def test_views_of_two_tasks_do_not_merge() -> None:
    other = start("T-2026-000043")
    with pytest.raises(InvalidInput):
        merge(fed(make_task()), other, ZONE)


def test_a_task_is_finished_once_ended_or_reported_with_its_alerts_sent() -> None:
    task = make_task()
    assert not finished(start(TASK_ID), LATE)  # not known yet: its task may still come
    assert not finished(fed(step(S.CANCELLED, CREATED)), LATE)
    assert finished(fed(task, step(S.CANCELLED, CREATED)), LATE)
    assert not finished(fed(task), CREATED)  # open
    assert not finished(fed(task, step(S.SAMPLED, CREATED + DAY)), CREATED + DAY)  # the report is due
    in_time = fed(task, step(S.SAMPLED, CREATED + DAY), step(S.REPORTED, CREATED + 2 * DAY))
    assert finished(in_time, CREATED + 2 * DAY)
    late = fed(task, step(S.SAMPLED, LATE + DAY), step(S.REPORTED, LATE + 2 * DAY))
    assert not finished(late, LATE + 2 * DAY)  # it owes the sampling alert
    assert finished(mark_sent(late, due_alerts(late, LATE + 2 * DAY)), LATE + 2 * DAY)
