"""The verdict engine: judges a sample's results against its spec (pure, shared by every caller)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from spotcheck.errors import InvalidInput, UnknownItem
from spotcheck.events import Comparison, ItemJudgement, LimitView, Outcome
from spotcheck.rounding import last_digit_quantum, round_to
from spotcheck.specs import Bounds, Item, SeasonalLimit, Spec

__all__ = ["Judgement", "judge", "validate_plan"]


@dataclass(frozen=True, slots=True)
class Judgement:
    """The outcome of a sample, the judgement of each item that has a result, and what is missing.

    A sample with a planned item still missing is "incomplete", whatever the others say: a
    verdict is reached once every planned item has a result.
    """

    outcome: Outcome
    items: tuple[ItemJudgement, ...]
    missing: tuple[str, ...]


def validate_plan(spec: Spec, items: Iterable[str]) -> tuple[str, ...]:
    """The items of a task's plan, checked against the spec: known, distinct, at least one."""
    plan = tuple(items)
    unknown = [code for code in plan if not spec.has(code)]
    if unknown:
        raise UnknownItem(
            f"spec {spec.id} has no item {', '.join(map(repr, unknown))}; "
            f"its items are {', '.join(spec.codes)}",
            field="items",
        )
    if not plan:
        raise InvalidInput("a plan needs at least one item", field="items")
    if len(set(plan)) != len(plan):
        twice = sorted({code for code in plan if plan.count(code) > 1})
        raise InvalidInput(f"the plan lists {', '.join(twice)} more than once", field="items")
    return plan


def judge(
    spec: Spec,
    results: Mapping[str, Decimal],
    sampled_on: date,
    plan: Sequence[str] | None = None,
) -> Judgement:
    """Judge `results` (item code -> measured value) of a sample taken on `sampled_on` (a date
    in the bureau's zone) against `spec`, for the items of `plan` (None: every item of the spec).

    Raises UnknownItem for a result or plan item the spec does not define, and InvalidInput for
    a result outside the plan or a value that is not a finite Decimal.
    """
    rules = _rules(spec)
    planned = rules.plan(spec, plan)
    for code, given in results.items():
        if code not in planned.members:
            _reject(spec, rules, code)
        if not isinstance(given, Decimal) or not given.is_finite():
            raise InvalidInput(f"{code}: {given!r} is not a finite decimal number", field=code)
    judged: list[ItemJudgement] = []
    missing: list[str] = []
    failed = False
    for code in planned.codes:
        value = results.get(code)
        if value is None:
            missing.append(code)
            continue
        rule = rules.by_code[code]
        check = rule.fixed or rule.on(sampled_on)
        compared = value if check.quantum is None else round_to(value, check.quantum)
        passed = (check.low is None or compared >= check.low) and (
            check.high is None or compared <= check.high
        )
        failed = failed or not passed
        judged.append(
            _item_judgement(
                {
                    "item": code,
                    "value": value,
                    "unit": rule.unit,
                    "limit": check.view,
                    "comparison": rule.comparison,
                    "compared_value": compared,
                    "judgement": "pass" if passed else "fail",
                }
            )
        )
    if missing:
        outcome = Outcome.INCOMPLETE
    else:
        outcome = Outcome.UNQUALIFIED if failed else Outcome.QUALIFIED
    return Judgement(outcome, tuple(judged), tuple(missing))


def _item_judgement(fields: dict[str, Any]) -> ItemJudgement:
    """An ItemJudgement from values valid by construction: no re-validation on the hot path."""
    return ItemJudgement.model_construct(**fields)


def _reject(spec: Spec, rules: _Rules, code: str) -> None:
    if code not in rules.by_code:
        spec.item(code)  # raises UnknownItem naming the nearest codes
    raise InvalidInput(f"item {code!r} has a result but is not in the sample's plan", field=code)


@dataclass(frozen=True, slots=True)
class _Check:
    """Bounds ready to compare: quantum is the last digit to round to (rounded-value method)."""

    low: Decimal | None
    high: Decimal | None
    quantum: Decimal | None
    view: LimitView


def _check(bounds: Bounds, comparison: Comparison) -> _Check:
    quantum = None
    if comparison is Comparison.ROUNDED:
        written = bounds.min if bounds.min is not None else bounds.max
        assert written is not None  # Bounds always has one side
        quantum = last_digit_quantum(written)
    view = LimitView(
        min=None if bounds.min is None else str(bounds.min),
        max=None if bounds.max is None else str(bounds.max),
        text=bounds.text,
    )
    return _Check(bounds.min, bounds.max, quantum, view)


class _Rule:
    """One item of a spec, compiled: fixed bounds, or bounds by date computed once per date."""

    __slots__ = ("unit", "comparison", "fixed", "_limit", "_by_day")

    def __init__(self, item: Item) -> None:
        self.unit = item.unit
        self.comparison = item.comparison
        self._limit: Bounds | SeasonalLimit = item.limit
        self.fixed = _check(item.limit, item.comparison) if isinstance(item.limit, Bounds) else None
        self._by_day: dict[date, _Check] = {}

    def on(self, day: date) -> _Check:
        check = self._by_day.get(day)
        if check is None:
            if len(self._by_day) > 4000:
                self._by_day.clear()
            bounds = self._limit.on(day)
            check = self._by_day[day] = _check(bounds, self.comparison)
        return check


@dataclass(frozen=True, slots=True)
class _Plan:
    codes: tuple[str, ...]
    members: frozenset[str]


class _Rules:
    """Everything `judge` needs about one spec, worked out once."""

    def __init__(self, spec: Spec) -> None:
        self.by_code = {item.code: _Rule(item) for item in spec.items}
        self.everything = _Plan(spec.codes, frozenset(spec.codes))
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def plan(self, spec: Spec, plan: Sequence[str] | None) -> _Plan:
        if plan is None:
            return self.everything
        key = tuple(plan)
        found = self._plans.get(key)
        if found is None:
            codes = validate_plan(spec, key)
            if len(self._plans) > 256:
                self._plans.clear()
            found = self._plans[key] = _Plan(codes, frozenset(codes))
        return found


_COMPILED: dict[Spec, _Rules] = {}


def _rules(spec: Spec) -> _Rules:
    rules = _COMPILED.get(spec)  # specs hash by identity
    if rules is None:
        if len(_COMPILED) > 1024:
            _COMPILED.clear()
        rules = _COMPILED[spec] = _Rules(spec)
    return rules
