"""The task lifecycle: the transition table, who may take each step, the trail's gaps, deadlines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from spotcheck.custody import (
    MAIN_LINE,
    ROLES,
    TRANSITIONS,
    CustodyStep,
    GapKind,
    IllegalTransition,
    NotPermitted,
    Role,
    TaskCustody,
    TaskState,
    apply,
    build_trail,
    report_due,
    report_overdue,
    sampling_due,
    sampling_overdue,
    trail_gaps,
    verdict_steps,
)
from spotcheck.errors import InvalidInput
from spotcheck.events import SamplingTask

S = TaskState
ZONE = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
ASSIGNED = frozenset({"INS-1", "INS-2"})
LAB = "LAB-7"
TRANSIT = timedelta(hours=48)

ACTOR = {Role.INSPECTOR: "INS-1", Role.LAB: "LU-3", Role.PLANNER: "PL-1", Role.SYSTEM: "verdicts"}


def make_task(**kw: Any) -> SamplingTask:
    fields: dict[str, Any] = dict(
        task_id="T-2026-000042",
        sample_id="T-2026-000042-A",
        enterprise_id="E-1",
        product="92# gasoline",
        spec="GB17930-2016:VIB:92",
        items=("ron", "sulfur"),
        lab_id=LAB,
        inspectors=("INS-1", "INS-2"),
        created_at=T0,
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


def step(target: TaskState, n: int = 0, **kw: Any) -> CustodyStep:
    """A complete step to `target` by an actor of the first role allowed for it."""
    role = sorted(ROLES[target])[0] if target in ROLES else Role.SYSTEM
    fields: dict[str, Any] = dict(
        step_id=f"S-{target}-{n}",
        task_id="T-2026-000042",
        step=target,
        actor=ACTOR[Role(kw.get("actor_role", role))],
        actor_role=role,
        at=T0 + timedelta(hours=n),
    )
    if target is S.ASSIGNED:
        fields["inspectors"] = ("INS-1", "INS-2")
    if target is S.SAMPLED:
        fields["signatures"] = {"inspectors": ("INS-1", "INS-2"), "enterprise": "Wang Li (station manager)"}
        fields["seals"] = {"test": "SEAL-001", "retained": "SEAL-002"}
        fields["where"] = {"lat": 37.4346, "lon": 118.6747, "text": "Station 12, Dongying District"}
    if target is S.RECEIVED:
        fields["seal_state"] = "intact"
        fields["seals"] = {"test": "SEAL-001"}
    if Role.LAB in ROLES.get(target, ()):
        fields["lab_id"] = LAB
    if target in (S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED):
        fields["reason"] = "the station was closed for renovation"
    fields.update(kw)
    return CustodyStep.model_validate(fields)


LEGAL = [(src, dst) for src, nexts in TRANSITIONS.items() for dst in sorted(nexts)]
ILLEGAL = [(src, dst) for src in TaskState for dst in TaskState if dst not in TRANSITIONS[src]]


# ---- the table


def test_the_table_covers_every_state_and_every_target_has_roles() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    targets = {dst for nexts in TRANSITIONS.values() for dst in nexts}
    assert targets == set(ROLES) == set(TaskState) - {S.PLANNED}
    assert all(dst in TRANSITIONS[src] for src, dst in zip(MAIN_LINE, MAIN_LINE[1:], strict=False))
    assert TRANSITIONS[S.CLOSED] == TRANSITIONS[S.CANCELLED] == frozenset()


@pytest.mark.parametrize(("current", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_legal_transition_is_taken(current: TaskState, target: TaskState) -> None:
    assert apply(current, step(target), ASSIGNED, LAB) is target


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_illegal_transition_names_the_current_state(current: TaskState, target: TaskState) -> None:
    with pytest.raises(IllegalTransition) as raised:
        apply(current, step(target), ASSIGNED, LAB)
    err = raised.value
    assert isinstance(err, InvalidInput) and err.field == "step"
    assert f"is {current};" in str(err) and f"{target} may not follow" in str(err)
    assert err.current is current and err.attempted is target and err.allowed == TRANSITIONS[current]
    for allowed in TRANSITIONS[current]:
        assert allowed in str(err)


def test_a_final_state_says_so() -> None:
    with pytest.raises(IllegalTransition, match="allowed: nothing: closed is final"):
        apply(S.CLOSED, step(S.CANCELLED), ASSIGNED, LAB)


# ---- who may do what


@pytest.mark.parametrize(("current", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_other_role_is_refused(current: TaskState, target: TaskState) -> None:
    for role in set(Role) - ROLES[target]:
        with pytest.raises(NotPermitted, match=f"not by {role}") as raised:
            apply(current, step(target, actor_role=role, lab_id=LAB), ASSIGNED, LAB)
        assert raised.value.field == "actor"


def test_an_inspector_not_assigned_may_not_sample() -> None:
    with pytest.raises(NotPermitted, match="inspector INS-9 is not assigned .*assigned: INS-1, INS-2"):
        apply(S.ASSIGNED, step(S.SAMPLING, actor="INS-9"), ASSIGNED, LAB)


def test_a_form_signed_by_an_unassigned_inspector_is_refused() -> None:
    form = {"inspectors": ("INS-1", "INS-9"), "enterprise": "Wang Li"}
    with pytest.raises(NotPermitted, match="signed by INS-9, not assigned"):
        apply(S.SAMPLING, step(S.SAMPLED, signatures=form), ASSIGNED, LAB)


def test_another_lab_may_not_receive() -> None:
    with pytest.raises(NotPermitted, match="assigned to lab LAB-7, not LAB-9"):
        apply(S.IN_TRANSIT, step(S.RECEIVED, lab_id="LAB-9"), ASSIGNED, LAB)


# ---- what a step must carry


def test_a_sampled_step_needs_two_distinct_inspectors_and_the_enterprise() -> None:
    for signatures, message in [
        (None, "two distinct inspectors"),
        ({"inspectors": ("INS-1",), "enterprise": "Wang Li"}, "two distinct inspectors"),
        ({"inspectors": ("INS-1", "INS-1"), "enterprise": "Wang Li"}, "two distinct inspectors"),
        ({"inspectors": ("INS-1", "INS-2")}, "enterprise's representative"),
        ({"inspectors": ("INS-1", "INS-2"), "enterprise": "  "}, "enterprise's representative"),
    ]:
        with pytest.raises(ValidationError, match=message):
            step(S.SAMPLED, signatures=signatures)


@pytest.mark.parametrize(
    ("seals", "message"),
    [
        (None, "both seal numbers"),
        ({"test": "SEAL-001"}, "both seal numbers"),
        ({"retained": "SEAL-002"}, "both seal numbers"),
        ({"test": "SEAL-001", "retained": "SEAL-001"}, "same seal number SEAL-001"),
    ],
)
def test_a_sampled_step_needs_two_distinct_seals(seals: dict[str, str] | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        step(S.SAMPLED, seals=seals)


def test_a_received_step_records_the_seal_state_and_number_and_the_lab() -> None:
    with pytest.raises(ValidationError, match="seal state"):
        step(S.RECEIVED, seal_state=None)
    with pytest.raises(ValidationError, match="seal number observed"):
        step(S.RECEIVED, seals=None)
    with pytest.raises(ValidationError, match="names the lab"):
        step(S.RECEIVED, lab_id=None)
    with pytest.raises(ValidationError, match="on a received step only"):
        step(S.IN_TRANSIT, seal_state="intact")


@pytest.mark.parametrize("target", [S.REFUSED, S.NOT_FOUND, S.NOT_SAMPLEABLE, S.CANCELLED])
def test_reasons_are_required(target: TaskState) -> None:
    for reason in (None, "", "   "):
        with pytest.raises(ValidationError, match=f"a {target} step must give a reason"):
            step(target, reason=reason)


def test_an_assignment_names_two_distinct_inspectors_and_only_it_does() -> None:
    with pytest.raises(ValidationError, match="two distinct inspectors"):
        step(S.ASSIGNED, inspectors=("INS-1", "INS-1"))
    with pytest.raises(ValidationError, match="assigned step only"):
        step(S.SAMPLING, inspectors=("INS-1", "INS-2"))


def test_places_take_coordinates_in_pairs() -> None:
    with pytest.raises(ValidationError, match="both lat and lon"):
        step(S.SAMPLING, where={"lat": 37.4})
    with pytest.raises(ValidationError, match="coordinates or a text"):
        step(S.SAMPLING, where={})
    assert step(S.SAMPLING, where={"text": "depot gate"}).where is not None


def test_a_step_round_trips_with_its_schema() -> None:
    sampled = step(S.SAMPLED)
    assert sampled.to_dict()["schema"] == "custody/1"
    assert CustodyStep.from_json(sampled.to_json()) == sampled


# ---- one task's custody: idempotent step ids


def test_a_resent_step_is_harmless_and_a_reused_id_is_refused() -> None:
    custody = TaskCustody.start(make_task())
    assert custody.state is S.ASSIGNED
    first = step(S.SAMPLING, 1)
    assert custody.apply(first)
    assert custody.apply(first) is False
    assert custody.state is S.SAMPLING
    with pytest.raises(InvalidInput, match="already used") as raised:
        custody.apply(step(S.SAMPLING, 1, actor="INS-2"))
    assert raised.value.field == "step_id"


def test_an_assignment_replaces_the_inspectors() -> None:
    custody = TaskCustody.start(make_task(inspectors=()))
    assert custody.state is S.PLANNED
    with pytest.raises(NotPermitted):
        custody.apply(step(S.CANCELLED, actor_role="inspector"))
    custody.apply(step(S.ASSIGNED, 1, inspectors=("INS-3", "INS-4")))
    with pytest.raises(NotPermitted, match="INS-1 is not assigned"):
        custody.apply(step(S.SAMPLING, 2))
    assert custody.apply(step(S.SAMPLING, 2, actor="INS-3"))


def test_a_step_of_another_task_is_refused() -> None:
    custody = TaskCustody.start(make_task())
    with pytest.raises(InvalidInput, match="sent to task T-2026-000042"):
        custody.apply(step(S.SAMPLING, task_id="T-2026-000043"))


# ---- the steps a verdict records


@pytest.mark.parametrize(
    ("state", "targets"),
    [
        (S.RECEIVED, [S.REPORTED, S.JUDGED]),
        (S.TESTING, [S.REPORTED, S.JUDGED]),
        (S.REPORTED, [S.JUDGED]),
        (S.IN_TRANSIT, []),
        (S.ASSIGNED, []),
        (S.JUDGED, []),
        (S.CLOSED, []),
        (S.REFUSED, []),
    ],
)
def test_a_verdict_records_reported_and_judged_once_the_sample_is_at_the_lab(
    state: TaskState, targets: list[TaskState]
) -> None:
    steps = verdict_steps(state, "T-2026-000042", "T-2026-000042/v1", T0)
    assert [s.step for s in steps] == targets
    assert all(s.actor_role is Role.SYSTEM and s.at == T0 and s.lab_id is None for s in steps)
    assert [s.step_id for s in steps] == [f"T-2026-000042/v1/{t}" for t in targets]


def test_verdict_steps_take_a_received_task_to_judged_and_a_redelivery_changes_nothing() -> None:
    custody = TaskCustody(make_task(), S.RECEIVED, ASSIGNED)
    steps = verdict_steps(custody.state, "T-2026-000042", "T-2026-000042/v1", T0)
    assert [custody.apply(s) for s in steps] == [True, True]
    assert custody.state is S.JUDGED
    assert [custody.apply(s) for s in steps] == [False, False]
    assert verdict_steps(custody.state, "T-2026-000042", "T-2026-000042/v1", T0) == []


def test_a_lab_step_names_its_lab_and_a_system_step_does_not() -> None:
    with pytest.raises(ValidationError, match="names the lab"):
        step(S.REPORTED, lab_id=None)
    system = step(S.REPORTED, actor_role="system", lab_id=None)
    assert apply(S.TESTING, system, ASSIGNED, LAB) is S.REPORTED
    assert apply(S.RECEIVED, system, ASSIGNED, LAB) is S.REPORTED


# ---- the trail


def full_trail() -> list[CustodyStep]:
    return [step(target, n) for n, target in enumerate(MAIN_LINE[2:], start=1)]


def test_a_clean_trail_has_no_gaps_and_reaches_closed() -> None:
    steps = full_trail()
    trail = build_trail(make_task(), reversed(steps + steps), ZONE, TRANSIT)
    assert trail.gaps == () and trail.state is S.CLOSED
    assert [s.step for s in trail.steps] == list(MAIN_LINE[2:])


def replace(steps: list[CustodyStep], target: TaskState, **kw: Any) -> list[CustodyStep]:
    return [CustodyStep.model_validate({**s.model_dump(), **kw}) if s.step is target else s for s in steps]


def delayed(steps: list[CustodyStep], target: TaskState, by: timedelta) -> list[CustodyStep]:
    """The steps with `target` and every later one done `by` later."""
    start = next(s.at for s in steps if s.step is target)
    return [s.model_copy(update={"at": s.at + by}) if s.at >= start else s for s in steps]


def kinds(steps: list[CustodyStep]) -> list[GapKind]:
    return [g.kind for g in trail_gaps(make_task(), steps, ZONE, TRANSIT)]


def test_a_seal_number_changed_between_sampling_and_receipt() -> None:
    changed = replace(full_trail(), S.RECEIVED, seals={"test": "X9"})
    gaps = trail_gaps(make_task(), changed, ZONE, TRANSIT)
    assert [g.kind for g in gaps] == [GapKind.SEAL_CHANGED]
    assert gaps[0].detail == "test portion sealed SEAL-001 at sampling, X9 at received"


def test_a_broken_seal_at_receipt() -> None:
    assert kinds(replace(full_trail(), S.RECEIVED, seal_state="broken")) == [GapKind.SEAL_BROKEN]


def test_a_slow_transit_is_measured_from_departure() -> None:
    late = delayed(full_trail(), S.RECEIVED, timedelta(hours=48))  # in transit at +3 h, received +52 h
    gaps = trail_gaps(make_task(), late, ZONE, TRANSIT)
    assert [g.kind for g in gaps] == [GapKind.SLOW_TRANSIT]
    assert "from 2026-11-24 12:00 to 2026-11-26 13:00" in gaps[0].detail  # local times
    assert kinds(delayed(full_trail(), S.RECEIVED, timedelta(hours=47))) == []  # exactly 48 h


def test_a_step_by_someone_not_assigned() -> None:
    stranger = replace(full_trail(), S.IN_TRANSIT, actor="INS-9")
    gaps = trail_gaps(make_task(), stranger, ZONE, TRANSIT)
    assert [g.kind for g in gaps] == [GapKind.NOT_PERMITTED]
    assert "INS-9 is not assigned" in gaps[0].detail


def test_a_received_step_without_transit_is_a_missing_step_and_the_trail_goes_on() -> None:
    skipped = [s for s in full_trail() if s.step is not S.IN_TRANSIT]
    trail = build_trail(make_task(), skipped, ZONE, TRANSIT)
    assert [g.kind for g in trail.gaps] == [GapKind.MISSING_STEP]
    assert "without in-transit" in trail.gaps[0].detail
    assert trail.state is S.CLOSED


def test_transit_is_timed_from_sampling_when_departure_is_missing() -> None:
    skipped = [s for s in full_trail() if s.step is not S.IN_TRANSIT]
    late = delayed(skipped, S.RECEIVED, timedelta(hours=47))  # sampled at +2 h, received +51 h
    assert kinds(late) == [GapKind.MISSING_STEP, GapKind.SLOW_TRANSIT]


def test_a_step_out_of_order_does_not_move_the_trail() -> None:
    steps = full_trail()[:5] + [step(S.SAMPLING, 9, step_id="again")]
    trail = build_trail(make_task(), steps, ZONE, TRANSIT)
    assert [g.kind for g in trail.gaps] == [GapKind.OUT_OF_ORDER]
    assert trail.state is S.TESTING


def test_duplicate_step_ids_are_one_step_unless_they_differ() -> None:
    steps = full_trail()
    assert kinds(steps + steps[:3]) == []
    assert kinds(steps + [steps[0].model_copy(update={"actor": "INS-2"})]) == [GapKind.REUSED_STEP_ID]


def test_a_trail_refuses_steps_of_another_task() -> None:
    with pytest.raises(InvalidInput, match="belongs to task T-2026-000043"):
        trail_gaps(make_task(), [step(S.SAMPLING, task_id="T-2026-000043")], ZONE, TRANSIT)


# ---- deadlines


def test_the_due_day_follows_the_local_day_not_the_utc_day() -> None:
    before_midnight = datetime(2026, 3, 1, 15, 59, tzinfo=UTC)  # 23:59 on 1 March in Shanghai
    after_midnight = datetime(2026, 3, 1, 16, 0, tzinfo=UTC)  # 00:00 on 2 March in Shanghai
    assert sampling_due(before_midnight, 10, ZONE) == datetime(2026, 3, 11, 23, 59, 59, tzinfo=ZONE)
    assert sampling_due(after_midnight, 10, ZONE) == datetime(2026, 3, 12, 23, 59, 59, tzinfo=ZONE)
    assert report_due(after_midnight, 0, ZONE) == datetime(2026, 3, 2, 15, 59, 59, tzinfo=UTC)


def test_deadlines_refuse_naive_times_and_negative_days() -> None:
    with pytest.raises(InvalidInput, match="aware"):
        sampling_due(datetime(2026, 3, 1), 10, ZONE)
    with pytest.raises(InvalidInput, match=">= 0"):
        report_due(T0, -1, ZONE)


def test_overdue_is_after_the_last_second_of_the_due_day() -> None:
    due = sampling_due(datetime(2026, 3, 1, 2, 0, tzinfo=UTC), 10, ZONE)
    last_second = datetime(2026, 3, 11, 15, 59, 59, tzinfo=UTC)
    assert not sampling_overdue(S.ASSIGNED, due, last_second)
    assert sampling_overdue(S.ASSIGNED, due, last_second + timedelta(seconds=1))
    assert sampling_overdue(S.SAMPLING, due, last_second + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("state", "sampling", "report"),
    [
        (S.PLANNED, True, True),
        (S.SAMPLING, True, True),
        (S.SAMPLED, False, True),
        (S.TESTING, False, True),
        (S.REPORTED, False, False),
        (S.CLOSED, False, False),
        (S.REFUSED, False, False),
        (S.CANCELLED, False, False),
        (S.NOT_FOUND, False, False),
    ],
)
def test_a_deadline_is_met_once_its_state_is_reached(state: TaskState, sampling: bool, report: bool) -> None:
    due, late = T0, T0 + timedelta(days=1)
    assert sampling_overdue(state, due, late) is sampling
    assert report_overdue(state, due, late) is report
    assert not sampling_overdue(state, None, late) and not report_overdue(state, due, due)


# ---- no sequence of steps escapes the table


@given(st.data())
def test_no_sequence_of_steps_leaves_the_table(data: st.DataObject) -> None:
    """Random steps, mostly aimed onward by the right actor (so runs get deep), sometimes anything by
    anyone: whatever `apply` accepts is a move the table and ROLES allow."""
    state = S.PLANNED
    for n in range(data.draw(st.integers(0, 40), label="length")):
        aim = data.draw(st.sampled_from(["next", "next", "allowed", "any"]), label="aim")
        onward = [s for s in MAIN_LINE if s in TRANSITIONS[state]] if aim == "next" else []
        allowed = sorted(TRANSITIONS[state]) if aim != "any" else []
        target = data.draw(st.sampled_from(onward or allowed or list(TaskState)), label="target")
        right = data.draw(st.sampled_from([True, True, True, False]), label="right role and actor")
        role = data.draw(st.sampled_from(sorted(ROLES.get(target, Role)) if right else list(Role)))
        actor = ACTOR[role] if right else data.draw(st.sampled_from(["INS-2", "INS-9", "LU-3"]))
        try:
            new = apply(state, step(target, n, actor_role=role, actor=actor, lab_id=LAB), ASSIGNED, LAB)
        except (IllegalTransition, NotPermitted):
            continue
        assert new in TRANSITIONS[state]
        assert role in ROLES[new]
        assert role is not Role.INSPECTOR or actor in ASSIGNED
        state = new
