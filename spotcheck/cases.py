"""Enforcement cases (DOMAIN.md §1): the pure state machine from an unqualified result to closure or
licence revocation, its inputs, the action events it emits and the legal deadlines it keeps.

A case is opened by an unqualified verdict (or a refusal to be sampled) of a task that is not itself a
case's task. `transition` applies one input; `advance` applies every deadline that has passed. Both
return the new case and the events to publish on the actions topic (case-event/1, keyed by
enterprise), numbered per case so that a replay is recognisable. Timed steps are dated at their
deadline, not at the moment a timer noticed them, so a late or repeated check changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from spotcheck.case_model import (
    ActionKind,
    C,
    Case,
    CaseEvent,
    CaseInput,
    CaseState,
    Cause,
    IllegalCaseInput,
    InputKind,
    TaskOrder,
    case_id_for,
    follow_up_task_id,
    is_case_task,
    retest_task_id,
    start_of_day_after,
    upstream_task_id,
)
from spotcheck.case_rules import CaseRules
from spotcheck.custody import due_after
from spotcheck.errors import InvalidInput
from spotcheck.events import Outcome, TaskKind

__all__ = ["CaseState", "advance", "next_deadline", "open_case", "transition"]


# ---- opening


class _Out:
    """Collects the events of one step, numbering them after the case's last."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.events: list[CaseEvent] = []

    def update(self, **changes: Any) -> None:
        self.case = self.case.model_copy(update=changes)

    def emit(self, kind: ActionKind, at: datetime, **fields: Any) -> None:
        seq = self.case.seq + 1
        c = self.case
        self.events.append(
            CaseEvent(
                event_id=f"{c.case_id}#{seq}",
                case_id=c.case_id,
                seq=seq,
                enterprise_id=c.enterprise_id,
                product=c.product,
                spec=c.spec,
                kind=kind,
                state=c.state,
                at=at,
                task_id=c.task_id,
                **fields,
            )
        )
        self.case = c.model_copy(update={"seq": seq})

    def result(self) -> tuple[Case, list[CaseEvent]]:
        return self.case, self.events


def open_case(
    trigger: CaseInput,
    rules: CaseRules,
    zone: ZoneInfo,
    now: datetime,
    *,
    failures: Sequence[datetime] = (),
    upstream: Sequence[str] = (),
) -> tuple[Case, list[CaseEvent]]:
    """The case a failed task opens. `trigger`: an unqualified verdict or a refusal of a task that is
    not a case's own; `failures`: the enterprise's earlier failures (for repeat offenders);
    `upstream`: the enterprises that supplied the failing one (a filling station's depot, refinery)."""
    if trigger.kind is InputKind.VERDICT:
        if trigger.outcome is not Outcome.UNQUALIFIED:
            raise InvalidInput("only an unqualified verdict opens a case", field="outcome")
        cause = Cause.UNQUALIFIED
    elif trigger.kind is InputKind.REFUSAL:
        cause = Cause.REFUSED
    else:
        raise InvalidInput(f"a {trigger.kind.value} does not open a case", field="kind")
    if trigger.task_id is None or trigger.product is None or trigger.spec is None:
        raise InvalidInput("a case is opened for a task, product and spec", field="task_id")
    if is_case_task(trigger.task_id):
        raise InvalidInput(f"task {trigger.task_id} belongs to a case; it opens none", field="task_id")
    case = Case(
        case_id=case_id_for(trigger.task_id),
        enterprise_id=trigger.enterprise_id,
        product=trigger.product,
        spec=trigger.spec,
        items=trigger.items or trigger.failing_items,
        task_id=trigger.task_id,
        verdict_id=trigger.verdict_id,
        verdict_version=trigger.version or 0,
        lab_id=trigger.lab_id,
        cause=cause,
        failing_items=trigger.failing_items,
        state=C.OBJECTION_WINDOW,
        opened_at=now,
        applied=(trigger.input_id,),
    )
    out = _Out(case)
    failing = {"failing_items": case.failing_items}
    what = "refused to be sampled" if cause is Cause.REFUSED else "unqualified"
    out.emit(
        ActionKind.OPENED,
        now,
        verdict_id=trigger.verdict_id,
        outcome=Outcome.UNQUALIFIED,
        detail=f"sample of task {case.task_id} {what}",
        **failing,
    )
    out.emit(ActionKind.STOP_SALE, now, detail=f"stop producing and selling {case.product} at once")
    reasons = []
    critical = rules.critical(case.spec, case.failing_items)
    if critical:
        reasons.append(f"critical items failed: {', '.join(critical)}")
    if rules.repeat_offender([*failures, now], now):
        reasons.append(f"{rules.repeat_failures} or more failures within {rules.repeat_months} months")
    if reasons:
        out.update(referral=tuple(reasons))
        out.emit(ActionKind.REFERRAL, now, reasons=tuple(reasons), detail="case referred for investigation")
    for n, enterprise_id in enumerate(upstream, 1):
        order = TaskOrder(
            task_id=upstream_task_id(case.task_id, n),
            sample_id=f"{upstream_task_id(case.task_id, n)}-A",
            kind=TaskKind.FOLLOW_UP,
            enterprise_id=enterprise_id,
            product=case.product,
            spec=case.spec,
            items=case.items,
            from_task_id=case.task_id,
            sampling_due=due_after(now, rules.upstream_sampling_days, zone),
        )
        out.emit(
            ActionKind.UPSTREAM_FOLLOW_UP_ORDERED,
            now,
            deadline=order.sampling_due,
            order=order,
            related_task_id=order.task_id,
            detail=f"trace the source: sample the supplier {enterprise_id}",
        )
    if cause is Cause.REFUSED:
        out.emit(ActionKind.NOTICE_ISSUED, now, detail="refusal recorded; treated as unqualified, no re-test")
        _finalise(out, now, Outcome.UNQUALIFIED, rules, zone)
    else:
        due = due_after(now, rules.objection_days, zone)
        out.update(objection_due=due)
        out.emit(
            ActionKind.NOTICE_ISSUED,
            now,
            deadline=due,
            **failing,
            detail=f"result notified; objection within {rules.objection_days} days of receipt",
        )
    return out.result()


def _finalise(out: _Out, t0: datetime, outcome: Outcome, rules: CaseRules, zone: ZoneInfo) -> None:
    """The result is final at `t0`: published within the publication days; unqualified starts correction."""
    publish_by = due_after(t0, rules.publication_days, zone)
    out.update(final_at=t0, final_outcome=outcome, publish_by=publish_by)
    if outcome is Outcome.UNQUALIFIED:
        due = due_after(t0, rules.rectification_days, zone)
        out.update(state=C.RECTIFICATION, rectification_due=due)
        out.emit(
            ActionKind.RESULT_FINAL,
            t0,
            deadline=publish_by,
            outcome=outcome,
            failing_items=out.case.failing_items,
            detail="final; to be published",
        )
        out.emit(
            ActionKind.RECTIFICATION_ORDERED,
            t0,
            deadline=due,
            detail=f"correct within {rules.rectification_days} days; the product stays off sale",
        )
    else:
        out.emit(
            ActionKind.RESULT_FINAL, t0, deadline=publish_by, outcome=outcome, detail="final; to be published"
        )
        _close(out, t0, "re-test qualified")


def _close(out: _Out, at: datetime, why: str) -> None:
    out.update(state=C.CLOSED, closed_at=at)
    out.emit(ActionKind.BACK_ON_SALE, at, detail=f"{out.case.product} may be sold again")
    out.emit(ActionKind.CLOSED, at, detail=why)


# ---- inputs


def transition(
    case: Case, given: CaseInput, rules: CaseRules, zone: ZoneInfo, now: datetime
) -> tuple[Case, list[CaseEvent]]:
    """`case` after `given` at `now`; IllegalCaseInput when its state does not allow it. An input
    already taken (same input_id) changes nothing. Deadlines that passed before `now` are applied
    first, so an input meets the case as it stands."""
    if given.input_id in case.applied:
        return case, []
    if given.enterprise_id != case.enterprise_id:
        raise InvalidInput(f"case {case.case_id} is of {case.enterprise_id}", field="enterprise_id")
    case, events = advance(case, rules, zone, now)
    out = _Out(case)
    handlers = {
        InputKind.VERDICT: _verdict,
        InputKind.REFUSAL: _refusal,
        InputKind.OBJECTION: _objection,
        InputKind.NOTICE_RECEIVED: _notice_received,
    }
    handler = handlers.get(given.kind)
    if handler is None:
        raise InvalidInput(f"a {given.kind.value} is not applied to one case", field="kind")
    handler(out, given, rules, zone, now)
    out.update(applied=(*out.case.applied, given.input_id))
    return out.case, events + out.events


def _verdict(out: _Out, given: CaseInput, rules: CaseRules, zone: ZoneInfo, now: datetime) -> None:
    case = out.case
    if given.outcome is None or given.task_id is None:
        raise InvalidInput("a verdict input names its task and outcome", field="outcome")
    if given.task_id == case.task_id:
        _correction(out, given, now)
        return
    if given.task_id != case.awaited_task:
        raise IllegalCaseInput(case, f"it awaits no verdict of task {given.task_id}", "task_id")
    if given.outcome is Outcome.INCOMPLETE:
        return
    common = {
        "related_task_id": given.task_id,
        "verdict_id": given.verdict_id,
        "outcome": given.outcome,
        "failing_items": given.failing_items,
    }
    if case.state is C.RETEST:
        # the re-test's verdict replaces the first one for the case (the first is kept in its history)
        out.emit(ActionKind.RETEST_RESULT, now, detail="re-test of the retained sample", **common)
        if given.outcome is Outcome.UNQUALIFIED:
            out.update(failing_items=given.failing_items)
        _finalise(out, now, given.outcome, rules, zone)
        return
    _follow_up_result(out, given.outcome is Outcome.QUALIFIED, now, rules, zone, common)


def _correction(out: _Out, given: CaseInput, now: datetime) -> None:
    """A new version of the first verdict: a qualified one ends a case that is not final yet."""
    case = out.case
    if (given.version or 0) <= case.verdict_version:
        return  # an older version or the same one again
    out.update(verdict_id=given.verdict_id, verdict_version=given.version or 0)
    fields = {"verdict_id": given.verdict_id, "outcome": given.outcome, "failing_items": given.failing_items}
    if given.outcome is Outcome.QUALIFIED and case.state in (C.OBJECTION_WINDOW, C.RETEST):
        out.update(state=C.CLOSED, closed_at=now)
        out.emit(
            ActionKind.VERDICT_CORRECTED, now, detail="the first verdict was corrected to qualified", **fields
        )
        out.emit(ActionKind.BACK_ON_SALE, now, detail=f"{case.product} may be sold again")
        out.emit(ActionKind.CLOSED, now, detail="the result that opened the case was corrected")
        return
    out.emit(ActionKind.VERDICT_CORRECTED, now, detail="recorded; the case goes on", **fields)


def _follow_up_result(
    out: _Out, passed: bool, now: datetime, rules: CaseRules, zone: ZoneInfo, common: dict[str, Any]
) -> None:
    case = out.case
    round_ = case.follow_up_round
    out.emit(
        ActionKind.FOLLOW_UP_RESULT,
        now,
        detail=f"follow-up {round_} {'passed' if passed else 'failed'}",
        **common,
    )
    if passed:
        _close(out, now, f"follow-up {round_} passed")
        return
    if round_ == 1:
        order_at = start_of_day_after(now, rules.second_follow_up_from_day, zone)
        out.update(state=C.ANNOUNCED, announced_at=now, next_follow_up_at=order_at)
        out.emit(
            ActionKind.ANNOUNCED,
            now,
            deadline=order_at,
            detail="announced by the provincial authority; second follow-up "
            f"between day {rules.second_follow_up_from_day} and {rules.second_follow_up_to_day}",
        )
    elif round_ == 2:
        order_at = start_of_day_after(now, rules.suspension_follow_up_from_day, zone)
        out.update(state=C.SUSPENDED, suspended_at=now, next_follow_up_at=order_at)
        out.emit(
            ActionKind.SUSPENSION_ORDERED,
            now,
            deadline=order_at,
            detail="suspension for rectification (停业整顿)",
        )
    else:
        out.update(state=C.REVOCATION_PROPOSED, closed_at=now)
        out.emit(
            ActionKind.REVOCATION_PROPOSED,
            now,
            detail="still failing after suspension: licence revocation proposed",
        )


def _refusal(out: _Out, given: CaseInput, rules: CaseRules, zone: ZoneInfo, now: datetime) -> None:
    case = out.case
    if case.state is not C.FOLLOW_UP or given.task_id != case.follow_up_task_id:
        raise IllegalCaseInput(case, f"no follow-up sampling of task {given.task_id} to refuse", "task_id")
    common = {
        "related_task_id": given.task_id,
        "outcome": Outcome.UNQUALIFIED,
        "reasons": (given.reason or "refused",),
    }
    _follow_up_result(out, False, now, rules, zone, common)


def _objection(out: _Out, given: CaseInput, rules: CaseRules, zone: ZoneInfo, now: datetime) -> None:
    case = out.case
    if case.state is not C.OBJECTION_WINDOW:
        raise IllegalCaseInput(case, "an objection is taken only within the objection window", "case_id")
    order = TaskOrder(
        task_id=retest_task_id(case.task_id),
        sample_id=f"{case.task_id}-B",
        kind=TaskKind.RETEST,
        enterprise_id=case.enterprise_id,
        product=case.product,
        spec=case.spec,
        items=case.items,
        from_task_id=case.task_id,
        other_lab=True,
        free_of_charge=False,
    )
    out.update(state=C.RETEST, objected_at=now, retest_task_id=order.task_id)
    out.emit(
        ActionKind.OBJECTION_FILED,
        now,
        reasons=(given.reason,) if given.reason else (),
        detail=f"objection by {given.by or 'the enterprise'}",
    )
    out.emit(
        ActionKind.RETEST_ORDERED,
        now,
        order=order,
        related_task_id=order.task_id,
        detail="re-test of the retained sample at a different accredited lab",
    )


def _notice_received(out: _Out, given: CaseInput, rules: CaseRules, zone: ZoneInfo, now: datetime) -> None:
    case = out.case
    if case.state is not C.OBJECTION_WINDOW:
        raise IllegalCaseInput(
            case, "the notice's receipt is recorded within the objection window", "case_id"
        )
    if case.notice_received_at is not None:
        raise IllegalCaseInput(
            case, f"receipt was recorded already ({case.notice_received_at.isoformat()})", "at"
        )
    if given.at.astimezone(zone).date() < case.opened_at.astimezone(zone).date() or given.at > now:
        raise InvalidInput("the notice is received between the case's opening and now", field="at")
    due = due_after(given.at, rules.objection_days, zone)
    out.update(notice_received_at=given.at, objection_due=due)
    out.emit(
        ActionKind.NOTICE_RECEIVED, now, deadline=due, detail=f"objection window runs to {due.isoformat()}"
    )


# ---- deadlines


def next_deadline(case: Case) -> datetime | None:
    """When the case must next move by itself, or None."""
    if case.state is C.OBJECTION_WINDOW:
        return case.objection_due
    if case.state is C.RECTIFICATION:
        return case.rectification_due
    if case.state in (C.ANNOUNCED, C.SUSPENDED):
        return case.next_follow_up_at
    return None


def advance(case: Case, rules: CaseRules, zone: ZoneInfo, now: datetime) -> tuple[Case, list[CaseEvent]]:
    """Apply, in order, every deadline of the case that passed by `now` (each dated at its deadline)."""
    out = _Out(case)
    while (due := next_deadline(out.case)) is not None and due < now:
        c = out.case
        if c.state is C.OBJECTION_WINDOW:
            _finalise(out, due, Outcome.UNQUALIFIED, rules, zone)
        elif c.state is C.RECTIFICATION:
            assert c.final_at is not None
            _order_follow_up(out, due, 1, due_after(c.final_at, rules.follow_up_by_day, zone))
        elif c.state is C.ANNOUNCED:
            assert c.announced_at is not None
            _order_follow_up(out, due, 2, due_after(c.announced_at, rules.second_follow_up_to_day, zone))
        else:
            assert c.suspended_at is not None
            _order_follow_up(out, due, 3, due_after(c.suspended_at, rules.suspension_follow_up_to_day, zone))
    return out.result()


def _order_follow_up(out: _Out, at: datetime, round_: int, sampling_due: datetime) -> None:
    c = out.case
    order = TaskOrder(
        task_id=follow_up_task_id(c.task_id, round_),
        sample_id=f"{follow_up_task_id(c.task_id, round_)}-A",
        kind=TaskKind.FOLLOW_UP,
        enterprise_id=c.enterprise_id,
        product=c.product,
        spec=c.spec,
        items=c.items,
        from_task_id=c.task_id,
        sampling_due=sampling_due,
    )
    out.update(
        state=C.FOLLOW_UP,
        follow_up_round=round_,
        follow_up_task_id=order.task_id,
        follow_up_due=sampling_due,
        next_follow_up_at=None,
    )
    out.emit(
        ActionKind.FOLLOW_UP_ORDERED,
        at,
        deadline=sampling_due,
        order=order,
        related_task_id=order.task_id,
        detail=f"follow-up {round_} (复查): same product and items, new inspectors, samples given free",
    )
