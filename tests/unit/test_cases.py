"""The enforcement case state machine: every transition, every deadline at its day boundary in
Asia/Shanghai, illegal inputs naming the state, referrals, upstream orders, replays."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spotcheck.case_model import (
    ActionKind,
    Case,
    CaseEvent,
    CaseInput,
    CaseState,
    IllegalCaseInput,
    InputKind,
    is_case_task,
)
from spotcheck.case_rules import load_rules, months_back
from spotcheck.cases import advance, next_deadline, open_case, transition
from spotcheck.clock import clock_for, file_clock
from spotcheck.errors import InvalidInput
from spotcheck.events import Outcome, TaskKind

A = ActionKind
C = CaseState
ZONE = ZoneInfo("Asia/Shanghai")
RULES = load_rules()
OPENED = datetime(2026, 3, 1, 10, 0, tzinfo=ZONE)
ENT = "91370502MA3C000001"
SPEC = "GB17930-2016:VIB:92"


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=ZONE)


def verdict(task_id: str = "T-2026-000001", outcome: Outcome = Outcome.UNQUALIFIED, **kw: Any) -> CaseInput:
    fields: dict[str, Any] = dict(
        input_id=f"verdict:{task_id}:{kw.get('version', 1)}",
        kind=InputKind.VERDICT,
        enterprise_id=ENT,
        task_id=task_id,
        verdict_id=f"{task_id}/v{kw.get('version', 1)}",
        version=1,
        outcome=outcome,
        failing_items=("benzene",) if outcome is Outcome.UNQUALIFIED else (),
        product="92# motor gasoline",
        spec=SPEC,
        items=("ron", "sulfur", "benzene"),
        lab_id="LAB-1",
        at=OPENED,
    )
    fields.update(kw)
    return CaseInput.model_validate(fields)


def other(kind: InputKind, **kw: Any) -> CaseInput:
    fields: dict[str, Any] = dict(
        input_id=f"{kind.value}:{kw.get('task_id', '')}:{kw.get('at', OPENED).isoformat()}",
        kind=kind,
        enterprise_id=ENT,
        case_id="C-T-2026-000001",
        at=OPENED,
    )
    fields.update(kw)
    return CaseInput.model_validate(fields)


def kinds(events: list[CaseEvent]) -> list[ActionKind]:
    return [e.kind for e in events]


def opened(**kw: Any) -> tuple[Case, list[CaseEvent]]:
    return open_case(verdict(**kw), RULES, ZONE, OPENED)


def step(case: Case, given: CaseInput, now: datetime) -> tuple[Case, list[CaseEvent]]:
    return transition(case, given, RULES, ZONE, now)


def go(case: Case, now: datetime) -> tuple[Case, list[CaseEvent]]:
    return advance(case, RULES, ZONE, now)


def final_case() -> Case:
    case, _ = opened()
    case, _ = go(case, local(2026, 3, 17))
    return case


def follow_up_case(round_: int = 1) -> Case:
    case, _ = go(final_case(), local(2026, 5, 17))  # T0 = 16 March end; +60 days = 15 May end
    assert case.state is C.FOLLOW_UP and case.follow_up_round == 1
    for r in range(1, round_):
        assert case.follow_up_task_id is not None
        case, _ = step(
            case,
            verdict(case.follow_up_task_id, input_id=f"fu{r}"),
            local(2026, 6, 1) + timedelta(days=100 * (r - 1)),
        )
        case, _ = go(case, local(2026, 6, 1) + timedelta(days=100 * (r - 1) + 61))
    assert case.follow_up_round == round_
    return case


# ---- opening


def test_an_unqualified_verdict_opens_a_case_with_stop_sale_notice_and_window() -> None:
    case, events = opened()
    assert case.case_id == "C-T-2026-000001" and case.state is C.OBJECTION_WINDOW
    assert kinds(events) == [A.OPENED, A.STOP_SALE, A.NOTICE_ISSUED]
    assert [e.seq for e in events] == [1, 2, 3] and events[0].event_id == "C-T-2026-000001#1"
    assert events[2].deadline == local(2026, 3, 16, 23, 59, 59) == case.objection_due
    assert events[0].failing_items == ("benzene",) and events[0].outcome is Outcome.UNQUALIFIED
    assert all(e.enterprise_id == ENT and e.task_id == "T-2026-000001" for e in events)
    assert case.referral == ()


def test_only_unqualified_verdicts_and_refusals_of_ordinary_tasks_open_cases() -> None:
    with pytest.raises(InvalidInput, match="only an unqualified"):
        open_case(verdict(outcome=Outcome.QUALIFIED), RULES, ZONE, OPENED)
    with pytest.raises(InvalidInput, match="belongs to a case"):
        open_case(verdict("T-2026-000001.F1"), RULES, ZONE, OPENED)
    with pytest.raises(InvalidInput, match="does not open"):
        open_case(other(InputKind.OBJECTION), RULES, ZONE, OPENED)
    with pytest.raises(InvalidInput, match="task, product and spec"):
        open_case(verdict(product=None), RULES, ZONE, OPENED)


def test_a_refusal_opens_a_case_that_is_final_at_once() -> None:
    refusal = other(InputKind.REFUSAL, task_id="T-2026-000009", product="92# motor gasoline", spec=SPEC,
                    items=("ron",), reason="gate shut")  # fmt: skip
    case, events = open_case(refusal, RULES, ZONE, OPENED)
    assert kinds(events) == [A.OPENED, A.STOP_SALE, A.NOTICE_ISSUED, A.RESULT_FINAL, A.RECTIFICATION_ORDERED]
    assert case.state is C.RECTIFICATION and case.cause.value == "refused" and case.objection_due is None
    assert case.rectification_due == local(2026, 4, 30, 23, 59, 59)  # 1 March + 60 days
    assert events[3].deadline == local(2026, 3, 21, 23, 59, 59)  # published within 20 days


def test_critical_items_and_repeat_offenders_are_referred() -> None:
    case, events = opened(failing_items=("sulfur", "benzene", "methanol"))
    assert A.REFERRAL in kinds(events)
    assert case.referral == ("critical items failed: methanol, sulfur",)
    diesel, _ = opened(spec="GB19147-2016:VI:0", failing_items=("sulfur",))
    assert diesel.referral
    earlier = [OPENED - timedelta(days=400)]
    repeat, events = open_case(verdict(), RULES, ZONE, OPENED, failures=earlier)
    assert repeat.referral == ("2 or more failures within 24 months",) and A.REFERRAL in kinds(events)
    old = [OPENED - timedelta(days=800)]
    assert open_case(verdict(), RULES, ZONE, OPENED, failures=old)[0].referral == ()


def test_a_failing_station_orders_follow_ups_upstream() -> None:
    case, events = open_case(verdict(), RULES, ZONE, OPENED, upstream=("DEPOT-1", "REFINERY-1"))
    orders = [e.order for e in events if e.kind is A.UPSTREAM_FOLLOW_UP_ORDERED]
    assert [(o.enterprise_id, o.task_id, o.kind) for o in orders if o] == [
        ("DEPOT-1", "T-2026-000001.U1", TaskKind.FOLLOW_UP),
        ("REFINERY-1", "T-2026-000001.U2", TaskKind.FOLLOW_UP),
    ]
    assert all(o and o.items == case.items and o.spec == SPEC for o in orders)
    assert orders[0] and orders[0].sampling_due == local(2026, 3, 31, 23, 59, 59)
    assert not is_case_task("T-2026-000001.U1")  # their verdicts open the suppliers' own cases


# ---- objection window


def test_the_objection_window_closes_at_the_end_of_day_15_in_shanghai() -> None:
    case, _ = opened()
    assert next_deadline(case) == local(2026, 3, 16, 23, 59, 59)
    still, events = go(case, local(2026, 3, 16, 23, 59, 59))
    assert still == case and events == []
    utc_before = datetime(2026, 3, 16, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    assert go(case, utc_before)[1] == []
    final, events = go(case, datetime(2026, 3, 16, 16, 0, 0, tzinfo=UTC))  # 00:00 on 17 March
    assert final.state is C.RECTIFICATION
    assert kinds(events) == [A.RESULT_FINAL, A.RECTIFICATION_ORDERED]
    assert events[0].at == local(2026, 3, 16, 23, 59, 59) == final.final_at  # dated at the deadline
    assert final.rectification_due == local(2026, 5, 15, 23, 59, 59)
    assert final.publish_by == local(2026, 4, 5, 23, 59, 59)


def test_an_objection_within_the_window_orders_a_retest_at_another_lab() -> None:
    case, _ = opened()
    case, events = step(
        case, other(InputKind.OBJECTION, by="legal rep", reason="method"), local(2026, 3, 16, 23, 59, 59)
    )
    assert case.state is C.RETEST and kinds(events) == [A.OBJECTION_FILED, A.RETEST_ORDERED]
    order = events[1].order
    assert order is not None and order.kind is TaskKind.RETEST and order.other_lab
    assert order.task_id == "T-2026-000001.R" and order.sample_id == "T-2026-000001-B"  # the retained sample
    assert next_deadline(case) is None


def test_an_objection_after_the_window_is_refused_with_the_state() -> None:
    case, _ = opened()
    with pytest.raises(IllegalCaseInput, match="only within the objection window") as late:
        step(case, other(InputKind.OBJECTION), local(2026, 3, 16, 23, 59, 59) + timedelta(microseconds=1))
    assert late.value.current is C.RECTIFICATION  # the window closed at its deadline, timer or not
    final = final_case()
    with pytest.raises(IllegalCaseInput) as exc:
        step(final, other(InputKind.OBJECTION), local(2026, 3, 20))
    assert exc.value.current is C.RECTIFICATION and "rectification" in str(exc.value)


def test_a_notice_received_later_moves_the_window() -> None:
    case, _ = opened()
    received = local(2026, 3, 4, 9, 0)
    case, events = step(case, other(InputKind.NOTICE_RECEIVED, at=received), local(2026, 3, 5))
    assert kinds(events) == [A.NOTICE_RECEIVED] and case.objection_due == local(2026, 3, 19, 23, 59, 59)
    assert go(case, local(2026, 3, 19, 23, 59, 59))[1] == []
    case, _ = step(case, other(InputKind.OBJECTION, input_id="late-ish"), local(2026, 3, 19, 12))
    assert case.state is C.RETEST


def test_a_notice_receipt_is_recorded_once_and_not_before_the_case() -> None:
    case, _ = opened()
    with pytest.raises(InvalidInput, match="between"):
        step(case, other(InputKind.NOTICE_RECEIVED, at=local(2026, 2, 28)), local(2026, 3, 5))
    with pytest.raises(InvalidInput, match="between"):
        step(case, other(InputKind.NOTICE_RECEIVED, at=local(2026, 3, 6)), local(2026, 3, 5))
    case, _ = step(case, other(InputKind.NOTICE_RECEIVED, at=local(2026, 3, 1, 18)), local(2026, 3, 5))
    with pytest.raises(IllegalCaseInput, match="already"):
        step(
            case, other(InputKind.NOTICE_RECEIVED, input_id="again", at=local(2026, 3, 2)), local(2026, 3, 5)
        )
    with pytest.raises(IllegalCaseInput):
        step(final_case(), other(InputKind.NOTICE_RECEIVED, at=local(2026, 3, 2)), local(2026, 3, 20))


# ---- retest


def test_a_qualified_retest_closes_the_case_and_is_the_final_result() -> None:
    case, _ = opened()
    case, _ = step(case, other(InputKind.OBJECTION), local(2026, 3, 5))
    case, events = step(case, verdict("T-2026-000001.R", Outcome.QUALIFIED), local(2026, 3, 12))
    assert kinds(events) == [A.RETEST_RESULT, A.RESULT_FINAL, A.BACK_ON_SALE, A.CLOSED]
    assert case.state is C.CLOSED and case.final_outcome is Outcome.QUALIFIED
    assert case.verdict_id == "T-2026-000001/v1"  # the first verdict is kept
    assert events[1].outcome is Outcome.QUALIFIED and next_deadline(case) is None


def test_an_unqualified_retest_makes_the_result_final_from_that_day() -> None:
    case, _ = opened()
    case, _ = step(case, other(InputKind.OBJECTION), local(2026, 3, 5))
    case, events = step(case, verdict("T-2026-000001.R", failing_items=("ron",)), local(2026, 3, 12, 15))
    assert kinds(events) == [A.RETEST_RESULT, A.RESULT_FINAL, A.RECTIFICATION_ORDERED]
    assert case.failing_items == ("ron",) and case.final_at == local(2026, 3, 12, 15)
    assert case.rectification_due == local(2026, 5, 11, 23, 59, 59)


def test_an_incomplete_retest_changes_nothing_and_a_second_objection_is_refused() -> None:
    case, _ = opened()
    case, _ = step(case, other(InputKind.OBJECTION), local(2026, 3, 5))
    same, events = step(case, verdict("T-2026-000001.R", Outcome.INCOMPLETE), local(2026, 3, 6))
    assert events == [] and same.state is C.RETEST
    with pytest.raises(IllegalCaseInput) as exc:
        step(case, other(InputKind.OBJECTION, input_id="second"), local(2026, 3, 6))
    assert exc.value.current is C.RETEST


# ---- rectification and follow-ups


def test_the_follow_up_is_ordered_when_rectification_ends_and_sampled_by_day_75() -> None:
    case = final_case()
    assert go(case, local(2026, 5, 15, 23, 59, 59))[1] == []
    case, events = go(case, local(2026, 5, 16))
    assert kinds(events) == [A.FOLLOW_UP_ORDERED] and case.state is C.FOLLOW_UP
    order = events[0].order
    assert order is not None and order.kind is TaskKind.FOLLOW_UP and order.free_of_charge
    assert order.task_id == "T-2026-000001.F1" and order.items == ("ron", "sulfur", "benzene")
    assert order.sampling_due == local(2026, 5, 30, 23, 59, 59)  # T0 (16 March) + 75 days
    assert events[0].at == local(2026, 5, 15, 23, 59, 59)


def test_a_passed_follow_up_closes_the_case_and_puts_the_product_back_on_sale() -> None:
    case = follow_up_case()
    case, events = step(case, verdict("T-2026-000001.F1", Outcome.QUALIFIED), local(2026, 5, 20))
    assert kinds(events) == [A.FOLLOW_UP_RESULT, A.BACK_ON_SALE, A.CLOSED] and case.state is C.CLOSED


def test_failed_follow_ups_lead_to_announcement_suspension_and_revocation() -> None:
    case = follow_up_case()
    case, events = step(case, verdict("T-2026-000001.F1"), local(2026, 5, 20, 9))
    assert kinds(events) == [A.FOLLOW_UP_RESULT, A.ANNOUNCED] and case.state is C.ANNOUNCED
    assert case.next_follow_up_at == local(2026, 7, 19)  # TA + 60 days, from 00:00
    assert go(case, local(2026, 7, 18, 23, 59, 59))[1] == []
    case, events = go(case, local(2026, 7, 19, 0, 0, 1))
    assert kinds(events) == [A.FOLLOW_UP_ORDERED] and case.follow_up_round == 2
    assert events[0].order and events[0].order.sampling_due == local(2026, 8, 18, 23, 59, 59)  # TA + 90
    case, events = step(case, verdict("T-2026-000001.F2"), local(2026, 8, 1))
    assert kinds(events) == [A.FOLLOW_UP_RESULT, A.SUSPENSION_ORDERED] and case.state is C.SUSPENDED
    case, events = go(case, local(2026, 9, 30, 0, 0, 1))
    assert kinds(events) == [A.FOLLOW_UP_ORDERED] and case.follow_up_task_id == "T-2026-000001.F3"
    case, events = step(case, verdict("T-2026-000001.F3"), local(2026, 10, 10))
    assert kinds(events) == [A.FOLLOW_UP_RESULT, A.REVOCATION_PROPOSED]
    assert case.state is C.REVOCATION_PROPOSED and next_deadline(case) is None


def test_refusing_a_follow_up_counts_as_failing_it() -> None:
    case = follow_up_case()
    refusal = other(InputKind.REFUSAL, task_id="T-2026-000001.F1", reason="door locked")
    case, events = step(case, refusal, local(2026, 5, 20))
    assert kinds(events) == [A.FOLLOW_UP_RESULT, A.ANNOUNCED]
    assert events[0].outcome is Outcome.UNQUALIFIED and events[0].reasons == ("door locked",)
    with pytest.raises(IllegalCaseInput):
        step(final_case(), other(InputKind.REFUSAL, task_id="T-2026-000001.F1"), local(2026, 4, 1))


def test_a_verdict_of_a_task_the_case_does_not_await_is_refused() -> None:
    case = follow_up_case()
    with pytest.raises(IllegalCaseInput, match="awaits no verdict") as exc:
        step(case, verdict("T-2026-000001.F2"), local(2026, 5, 20))
    assert exc.value.current is C.FOLLOW_UP
    with pytest.raises(IllegalCaseInput):
        step(final_case(), verdict("T-2026-000001.R"), local(2026, 3, 20))


def test_a_jump_past_several_deadlines_applies_them_in_order() -> None:
    case, _ = opened()
    case, events = go(case, local(2026, 12, 31))
    assert kinds(events) == [A.RESULT_FINAL, A.RECTIFICATION_ORDERED, A.FOLLOW_UP_ORDERED]
    assert [e.seq for e in events] == [4, 5, 6] and case.state is C.FOLLOW_UP  # waits for the verdict


# ---- corrections, replays, other inputs


def test_a_correction_of_the_first_verdict_to_qualified_closes_an_open_case() -> None:
    case, _ = opened()
    fixed = verdict(outcome=Outcome.QUALIFIED, version=2, input_id="v2")
    case, events = step(case, fixed, local(2026, 3, 3))
    assert kinds(events) == [A.VERDICT_CORRECTED, A.BACK_ON_SALE, A.CLOSED] and case.state is C.CLOSED
    later, events = step(final_case(), fixed, local(2026, 3, 20))
    assert kinds(events) == [A.VERDICT_CORRECTED] and later.state is C.RECTIFICATION
    older, events = step(later, verdict(version=1, input_id="v1-again"), local(2026, 3, 21))
    assert events == [] and older.verdict_version == 2


def test_an_input_taken_once_changes_nothing_the_second_time() -> None:
    case, _ = opened()
    objection = other(InputKind.OBJECTION)
    once, events = step(case, objection, local(2026, 3, 5))
    twice, again = step(once, objection, local(2026, 3, 6))
    assert events and again == [] and twice == once


def test_inputs_of_another_enterprise_or_kind_are_refused() -> None:
    case, _ = opened()
    with pytest.raises(InvalidInput, match="is of"):
        step(case, other(InputKind.OBJECTION, enterprise_id="OTHER"), local(2026, 3, 5))
    with pytest.raises(InvalidInput, match="not applied"):
        step(case, other(InputKind.CHECK), local(2026, 3, 5))


def test_an_input_meets_the_case_after_the_deadlines_that_passed() -> None:
    case, _ = opened()
    with pytest.raises(IllegalCaseInput) as exc:
        step(case, other(InputKind.OBJECTION), local(2026, 3, 18))
    assert exc.value.current is C.RECTIFICATION  # the window closed; the timer had not run yet


def test_case_and_events_round_trip_as_json() -> None:
    case, events = opened()
    assert Case.from_json_dict(json.loads(json.dumps(case.to_json_dict()))) == case
    for e in events:
        assert CaseEvent.from_json(e.to_json()) == e and e.to_dict()["schema"] == "case-event/1"


# ---- rules and clock


def test_rules_come_from_data_and_bad_files_are_named(tmp_path: Path) -> None:
    assert (RULES.objection_days, RULES.rectification_days, RULES.follow_up_by_day) == (15, 60, 75)
    assert RULES.critical("GB17930-2016:VIA:95", ["lead", "ron"]) == ("lead",)
    custom = tmp_path / "rules.json"
    custom.write_text(json.dumps({**json.loads(json.dumps(RULES.model_dump())), "objection_days": 10}))
    assert load_rules(custom).objection_days == 10
    custom.write_text(json.dumps({**RULES.model_dump(), "follow_up_by_day": 30}))
    with pytest.raises(InvalidInput, match="follow_up_by_day"):
        load_rules(custom)
    custom.write_text("{")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_rules(custom)
    assert months_back(datetime(2026, 3, 31).date(), 1) == datetime(2026, 2, 28).date()


def test_the_clock_file_sets_the_time(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("2026-05-01T08:00:00+08:00\n")
    assert file_clock(path)() == local(2026, 5, 1, 8)
    path.write_text("2026-05-01T08:00:00")
    with pytest.raises(InvalidInput, match="offset"):
        clock_for(path)()
    path.write_text("soon")
    with pytest.raises(InvalidInput, match="not an ISO time"):
        clock_for(path)()
    assert clock_for(None)().tzinfo is not None
