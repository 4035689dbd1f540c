"""Scheduling around the draw: the platform's facts in a plan, draw requests, campaign recurrence."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from spotcheck.draws import Enterprise, EnterpriseKind, Plan, PlanCategory, RiskFactors, Snapshot
from spotcheck.errors import InvalidInput
from spotcheck.scheduling import (
    Campaign,
    DrawRequest,
    EnterpriseFacts,
    Recurrence,
    draw_id_for,
    due_campaigns,
    months_between,
    with_facts,
)

GASOLINE = "GB17930-2016:VIB:92"


def eid(n: int) -> str:
    return f"91370500MA{n:08d}"


def enterprise(n: int, products: tuple[str, ...] = ("motor gasoline",)) -> Enterprise:
    return Enterprise(
        enterprise_id=eid(n),
        name=f"E{n}",
        district="Kenli District",
        kind=EnterpriseKind.FILLING_STATION,
        products=products,
    )


def plan(**kw: Any) -> Plan:
    fields: dict[str, Any] = {
        "plan_id": "P-1",
        "draw_date": date(2026, 11, 25),
        "categories": [PlanCategory(product="motor gasoline", spec=GASOLINE, count=2)],
    }
    fields.update(kw)
    return Plan.model_validate(fields)


SNAPSHOT = Snapshot(
    enterprises=(enterprise(1), enterprise(2), enterprise(3), enterprise(4, ("compound fertilizer",))),
    inspectors=(),
    labs=(),
    taken_at=datetime(2026, 11, 25, tzinfo=UTC),
)


@pytest.mark.parametrize(
    ("earlier", "later", "months"),
    [
        (date(2026, 1, 31), date(2026, 2, 28), 0),
        (date(2026, 1, 31), date(2026, 3, 1), 1),
        (date(2025, 11, 25), date(2026, 11, 25), 12),
        (date(2025, 11, 26), date(2026, 11, 25), 11),
        (date(2026, 12, 1), date(2026, 11, 25), 0),
    ],
)
def test_months_between_counts_whole_months(earlier: date, later: date, months: int) -> None:
    assert months_between(earlier, later) == months


def test_facts_weigh_failures_and_time_since_the_last_check() -> None:
    facts = {
        eid(1): EnterpriseFacts(failures=2, last_check=date(2025, 5, 20)),  # 18 months ago
        eid(2): EnterpriseFacts(last_check=date(2026, 10, 1)),  # last month
        eid(4): EnterpriseFacts(failures=5),  # makes no product of the plan
    }
    drawn = with_facts(plan(), SNAPSHOT, facts)
    assert drawn.risk[eid(1)] == RiskFactors(failures=2, months_since_check=18)
    assert drawn.weight(eid(1)) == 1 + 4 + 1
    assert drawn.weight(eid(2)) == 1
    assert drawn.risk[eid(3)].months_since_check is None  # never checked: the highest time weight
    assert drawn.weight(eid(3)) == 4
    assert eid(4) not in drawn.risk
    assert drawn.recent_checks == {eid(1): date(2025, 5, 20), eid(2): date(2026, 10, 1)}


def test_what_the_plan_states_wins_over_the_facts() -> None:
    stated = plan(
        risk={eid(1): RiskFactors(complaints=7, months_since_check=0)},
        recent_checks={eid(2): date(2024, 1, 1)},
    )
    drawn = with_facts(
        stated,
        SNAPSHOT,
        {eid(1): EnterpriseFacts(failures=3), eid(2): EnterpriseFacts(last_check=date(2026, 11, 1))},
    )
    assert drawn.risk[eid(1)] == RiskFactors(complaints=7, months_since_check=0)
    assert drawn.recent_checks[eid(2)] == date(2024, 1, 1)
    assert drawn.digest() != stated.digest()


def test_a_check_after_the_draw_date_is_not_history() -> None:
    drawn = with_facts(plan(), SNAPSHOT, {eid(1): EnterpriseFacts(last_check=date(2026, 12, 1))})
    assert eid(1) not in drawn.recent_checks
    assert drawn.risk[eid(1)].months_since_check is None


def test_a_redraw_names_its_reason_and_a_seed_is_long_hex() -> None:
    with pytest.raises(ValidationError, match="reason"):
        DrawRequest(plan=plan(), redraw_of="D-2026-000001")
    DrawRequest(plan=plan(), redraw_of="D-2026-000001", reason="lab closed")
    with pytest.raises(ValidationError, match="seed"):
        DrawRequest(plan=plan(), seed="ab" * 8 + "z")
    with pytest.raises(ValidationError, match="seed"):
        DrawRequest(plan=plan(), seed="ab" * 15)  # 15 bytes: too short
    assert DrawRequest(plan=plan(), seed="ab" * 16).seed == "ab" * 16


def test_draw_ids_carry_the_year() -> None:
    assert draw_id_for(42, datetime(2026, 11, 25, tzinfo=UTC)) == "D-2026-000042"


# ---- recurrence


@pytest.mark.parametrize(
    ("every", "day", "on", "latest"),
    [
        ("week", 1, date(2026, 11, 25), date(2026, 11, 23)),  # a Wednesday -> Monday before
        ("week", 3, date(2026, 11, 25), date(2026, 11, 25)),  # the day itself
        ("week", 7, date(2026, 11, 25), date(2026, 11, 22)),
        ("month", 10, date(2026, 11, 25), date(2026, 11, 10)),
        ("month", 28, date(2026, 11, 25), date(2026, 10, 28)),
        ("month", 28, date(2026, 1, 5), date(2025, 12, 28)),  # across the year
        ("quarter", 1, date(2026, 11, 25), date(2026, 10, 1)),
        ("quarter", 15, date(2026, 1, 10), date(2025, 10, 15)),
        ("quarter", 15, date(2026, 3, 31), date(2026, 1, 15)),
    ],
)
def test_latest_scheduled_day(every: str, day: int, on: date, latest: date) -> None:
    assert Recurrence.model_validate({"every": every, "day": day}).latest_on_or_before(on) == latest


@given(
    every=st.sampled_from(["week", "month", "quarter"]),
    day=st.integers(1, 28),
    on=st.dates(date(2000, 1, 1), date(2100, 12, 31)),
)
def test_the_latest_day_is_scheduled_and_nothing_later_is(every: str, day: int, on: date) -> None:
    if every == "week" and day > 7:
        day = day % 7 + 1
    rule = Recurrence.model_validate({"every": every, "day": day})
    latest = rule.latest_on_or_before(on)
    assert latest <= on
    if every == "week":
        assert latest.isoweekday() == day and on - latest < timedelta(days=7)
    else:
        assert latest.day == day
        assert every == "month" or (latest.month - 1) % 3 == 0
        span = 31 if every == "month" else 92
        assert (on - latest).days < span


def test_a_weekly_rule_names_a_weekday() -> None:
    with pytest.raises(ValidationError, match="weekday"):
        Recurrence(every="week", day=8)


def campaign(**kw: Any) -> Campaign:
    fields: dict[str, Any] = {
        "campaign_id": "FUEL-STATIONS",
        "name": "Motor fuel at filling stations",
        "plan": {
            "categories": [
                {"product": "motor gasoline", "spec": GASOLINE, "count": 5, "items": ["sulfur", "methanol"]}
            ],
            "recent_months": 1,
        },
        "recurrence": {"every": "month", "day": 10},
        "starts": date(2026, 9, 1),
    }
    fields.update(kw)
    return Campaign.model_validate(fields)


def test_a_campaign_round_is_due_once_per_scheduled_day() -> None:
    c = campaign()
    assert c.due(date(2026, 8, 30), None) is None  # before it starts
    assert c.due(date(2026, 9, 9), None) is None  # no scheduled day yet
    assert c.due(date(2026, 9, 10), None) == date(2026, 9, 10)
    assert c.due(date(2026, 9, 20), date(2026, 9, 10)) is None  # drawn already
    assert c.due(date(2026, 12, 3), date(2026, 9, 10)) == date(2026, 11, 10)  # only the latest missed round
    assert campaign(ends=date(2026, 10, 31)).due(date(2026, 12, 3), date(2026, 9, 10)) == date(2026, 10, 10)
    assert campaign(ends=date(2026, 10, 31)).due(date(2026, 12, 3), date(2026, 10, 10)) is None
    assert campaign(active=False).due(date(2026, 9, 10), None) is None


def test_a_round_plan_has_the_campaign_s_items_and_day() -> None:
    p = campaign().plan_for(date(2026, 11, 10))
    assert p.plan_id == "FUEL-STATIONS-20261110"
    assert p.draw_date == date(2026, 11, 10)
    assert p.categories[0].items == ("sulfur", "methanol")
    assert p.recent_months == 1


def test_a_campaign_template_is_checked_when_it_is_saved() -> None:
    with pytest.raises(ValidationError, match="plan_id"):
        campaign(plan={"plan_id": "X", "categories": []})
    with pytest.raises(InvalidInput, match="categories"):
        campaign(plan={"categories": []})
    with pytest.raises(ValidationError, match="ends is before starts"):
        campaign(ends=date(2026, 8, 1))


def test_due_campaigns_in_id_order() -> None:
    a, b = campaign(campaign_id="B"), campaign(campaign_id="A")
    due = due_campaigns([a, b], {"B": date(2026, 11, 10)}, date(2026, 11, 12))
    assert [(c.campaign_id, d) for c, d in due] == [("A", date(2026, 11, 10))]
