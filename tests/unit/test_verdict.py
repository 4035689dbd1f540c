"""The verdict engine: outcomes, whole-value and rounded-value comparison, ranges, bad input."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from spotcheck.errors import InvalidInput, UnknownItem
from spotcheck.events import Comparison, ItemJudgement, LimitView, Outcome
from spotcheck.specs import Spec, load_catalog
from spotcheck.verdict import judge, validate_plan

D = Decimal
DAY = date(2024, 7, 1)

DIESEL_0_GOOD = {
    "sulfur": "8.3",
    "pah": "3.1",
    "flash_point": "65",
    "cfpp": "-2",
    "pour_point": "-3",
    "cetane_number": "52",
    "density_20c": "830.5",
    "viscosity_20c": "4.1",
    "lubricity_wsd": "400",
    "fame": "0.5",
    "total_contamination": "12",
    "dist_50": "280",
    "dist_90": "340",
    "dist_95": "360",
}


def spec(spec_id: str) -> Spec:
    return load_catalog().get(spec_id)


def values(raw: dict[str, str]) -> dict[str, Decimal]:
    return {code: D(value) for code, value in raw.items()}


def judgements(result_items: tuple[ItemJudgement, ...]) -> dict[str, str]:
    return {item.item: item.judgement for item in result_items}


def test_qualified() -> None:
    result = judge(spec("GB19147-2016:VI:0"), values(DIESEL_0_GOOD), DAY)
    assert result.outcome is Outcome.QUALIFIED
    assert result.missing == ()
    assert [item.item for item in result.items] == list(spec("GB19147-2016:VI:0").codes)
    assert set(judgements(result.items).values()) == {"pass"}


def test_one_failing_item_makes_it_unqualified() -> None:
    result = judge(spec("GB19147-2016:VI:0"), values({**DIESEL_0_GOOD, "cfpp": "5"}), DAY)
    assert result.outcome is Outcome.UNQUALIFIED
    assert [item.item for item in result.items if item.judgement == "fail"] == ["cfpp"]


def test_missing_items_make_it_incomplete_even_with_a_failure() -> None:
    partial = {"sulfur": "12", "cfpp": "-2"}
    result = judge(spec("GB19147-2016:VI:0"), values(partial), DAY)
    assert result.outcome is Outcome.INCOMPLETE
    assert judgements(result.items) == {"sulfur": "fail", "cfpp": "pass"}
    assert result.missing == tuple(c for c in DIESEL_0_GOOD if c not in partial)


def test_the_plan_chooses_and_orders_the_items() -> None:
    plan = ["cfpp", "sulfur"]
    result = judge(spec("GB19147-2016:VI:0"), values({"sulfur": "9", "cfpp": "4"}), DAY, plan)
    assert result.outcome is Outcome.QUALIFIED
    assert [item.item for item in result.items] == plan
    result = judge(spec("GB19147-2016:VI:0"), values({"sulfur": "9"}), DAY, plan)
    assert result.outcome is Outcome.INCOMPLETE and result.missing == ("cfpp",)


def test_nothing_yet() -> None:
    result = judge(spec("GB/T3956-2008:1:2.5"), {}, DAY)
    assert result == dataclasses.replace(result, items=(), missing=("conductor_resistance",))
    assert result.outcome is Outcome.INCOMPLETE


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7.41", "pass"), ("7.40", "pass"), ("7.410", "pass"), ("7.411", "fail"), ("0", "pass")],
)
def test_maximum_is_inclusive_by_whole_value(value: str, expected: str) -> None:
    result = judge(spec("GB/T3956-2008:1:2.5"), {"conductor_resistance": D(value)}, DAY)
    (item,) = result.items
    assert item.judgement == expected
    assert item.comparison is Comparison.WHOLE
    assert str(item.compared_value) == value  # the value as reported, digits kept
    assert item.limit == LimitView(min=None, max="7.41", text="≤ 7.41")
    assert item.unit == "Ω/km"


@pytest.mark.parametrize(
    ("code", "value", "expected"),
    [
        ("viscosity_20c", "1.8", "pass"),
        ("viscosity_20c", "1.79", "fail"),
        ("viscosity_20c", "7.0", "pass"),
        ("viscosity_20c", "7.01", "fail"),
        ("density_20c", "790", "pass"),
        ("density_20c", "789.9", "fail"),
        ("density_20c", "840.0", "pass"),
        ("density_20c", "840.1", "fail"),
        ("flash_point", "45", "pass"),
        ("flash_point", "44.9", "fail"),
        ("cfpp", "-29", "pass"),
        ("cfpp", "-28.5", "fail"),
    ],
)
def test_ranges_and_negative_limits(code: str, value: str, expected: str) -> None:
    result = judge(spec("GB19147-2016:VI:-35"), {code: D(value)}, DAY, [code])
    assert result.items[0].judgement == expected


def test_range_limit_view() -> None:
    result = judge(spec("GB19147-2016:VI:-35"), {"viscosity_20c": D("4")}, DAY, ["viscosity_20c"])
    assert result.items[0].limit == LimitView(min="1.8", max="7.0", text="1.8–7.0")


@pytest.mark.parametrize(
    ("day", "value", "expected"),
    [
        (date(2024, 5, 10), "80", "pass"),  # changeover: winter's range still accepted
        (date(2024, 5, 20), "80", "fail"),
        (date(2024, 5, 20), "65", "pass"),
        (date(2024, 11, 10), "42", "pass"),  # changeover: summer's range still accepted
        (date(2024, 11, 20), "42", "fail"),
        (date(2024, 4, 30), "85", "pass"),
        (date(2024, 4, 30), "86", "fail"),
    ],
)
def test_vapour_pressure_depends_on_the_sampling_date(day: date, value: str, expected: str) -> None:
    gasoline = spec("GB17930-2016:VIA:92")
    result = judge(gasoline, {"vapour_pressure": D(value)}, day, ["vapour_pressure"])
    assert result.items[0].judgement == expected


@pytest.fixture
def rounded_catalog(tmp_path: Path) -> Path:
    """A one-spec catalog where sulfur (<= 10) is judged by the rounded-value method."""
    item = {"code": "sulfur", "name": "Sulfur", "unit": "mg/kg", "limit": {"max": "10"}}
    data = {
        "standard": "T 1",
        "title": "Test",
        "product": "test",
        "families": [
            {"id": "WHOLE", "items": [item]},
            {"id": "ROUNDED", "items": [{**item, "comparison": "rounded-value"}]},
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def test_domain_example_10_4_against_at_most_10(rounded_catalog: Path) -> None:
    """DOMAIN 5: limit <= 10 mg/kg, measured 10.4: fails by whole value, passes by rounded value."""
    catalog = load_catalog(rounded_catalog)
    whole = judge(catalog.get("WHOLE"), {"sulfur": D("10.4")}, DAY)
    rounded = judge(catalog.get("ROUNDED"), {"sulfur": D("10.4")}, DAY)
    assert whole.outcome is Outcome.UNQUALIFIED
    assert whole.items[0].compared_value == D("10.4")
    assert rounded.outcome is Outcome.QUALIFIED
    assert rounded.items[0].comparison is Comparison.ROUNDED
    assert str(rounded.items[0].compared_value) == "10"
    assert str(rounded.items[0].value) == "10.4"


@pytest.mark.parametrize(
    ("value", "compared", "expected"),
    [
        ("10.5", "10", "pass"),  # exactly 5: to even
        ("10.50001", "11", "fail"),
        ("11.5", "12", "fail"),
        ("9.9", "10", "pass"),
    ],
)
def test_rounded_value_follows_gbt_8170(
    rounded_catalog: Path, value: str, compared: str, expected: str
) -> None:
    result = judge(load_catalog(rounded_catalog).get("ROUNDED"), {"sulfur": D(value)}, DAY)
    assert str(result.items[0].compared_value) == compared
    assert result.items[0].judgement == expected


@pytest.mark.parametrize(
    ("code", "value", "compared", "expected"),
    [
        ("moisture", "2.04", "2.0", "pass"),
        ("moisture", "2.05", "2.0", "pass"),
        ("moisture", "2.06", "2.1", "fail"),
        ("chloride", "3.05", "3.0", "pass"),
        ("chloride", "3.15", "3.2", "fail"),
        ("total_nutrient", "39.5", "40", "pass"),
        ("total_nutrient", "39.49", "39", "fail"),
    ],
)
def test_shipped_fertilizer_items_use_rounded_value(
    code: str, value: str, compared: str, expected: str
) -> None:
    result = judge(spec("GB/T15063-2020:high"), {code: D(value)}, DAY, [code])
    assert str(result.items[0].compared_value) == compared
    assert result.items[0].judgement == expected


def test_unknown_result_item() -> None:
    with pytest.raises(UnknownItem, match="has no item 'sulphur'.*nearest: sulfur"):
        judge(spec("GB19147-2016:VI:0"), {"sulphur": D("1")}, DAY)


def test_unknown_plan_item() -> None:
    with pytest.raises(UnknownItem, match="'ron'"):
        judge(spec("GB19147-2016:VI:0"), {}, DAY, ["sulfur", "ron"])


def test_a_result_outside_the_plan_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'cfpp' has a result but is not in the sample's plan"):
        judge(spec("GB19147-2016:VI:0"), values({"sulfur": "1", "cfpp": "1"}), DAY, ["sulfur"])


@pytest.mark.parametrize("bad", [D("NaN"), D("Infinity"), 1.5, "8.3"])
def test_values_must_be_finite_decimals(bad: object) -> None:
    with pytest.raises(InvalidInput, match="not a finite decimal"):
        judge(spec("GB19147-2016:VI:0"), {"sulfur": bad}, DAY)  # type: ignore[dict-item]


def test_validate_plan() -> None:
    diesel = spec("GB19147-2016:VI:0")
    assert validate_plan(diesel, ["sulfur", "cfpp"]) == ("sulfur", "cfpp")
    with pytest.raises(UnknownItem, match="'ron', 'aki'") as caught:
        validate_plan(diesel, ["sulfur", "ron", "aki"])
    assert caught.value.field == "items"
    with pytest.raises(InvalidInput, match="at least one"):
        validate_plan(diesel, [])
    with pytest.raises(InvalidInput, match="sulfur more than once"):
        validate_plan(diesel, ["sulfur", "cfpp", "sulfur"])


def test_item_judgements_are_ordinary_models() -> None:
    result = judge(spec("GB/T3956-2008:5:4"), {"conductor_resistance": D("4.950")}, DAY)
    (item,) = result.items
    validated = ItemJudgement(
        item="conductor_resistance",
        value="4.950",
        unit="Ω/km",
        limit=LimitView(max="4.95", text="≤ 4.95"),
        comparison="whole-value",
        compared_value="4.950",
        judgement="pass",
    )
    assert item == validated
    assert item.model_dump(mode="json") == validated.model_dump(mode="json")
    assert item.model_dump_json() == validated.model_dump_json()
    assert item.model_copy(update={"unit": "ohm/km"}).unit == "ohm/km"
    with pytest.raises(Exception, match="frozen"):
        item.judgement = "fail"  # type: ignore[misc]


def test_judgement_is_frozen_and_repeatable() -> None:
    diesel = spec("GB19147-2016:VI:0")
    first = judge(diesel, values(DIESEL_0_GOOD), DAY)
    assert judge(diesel, values(DIESEL_0_GOOD), DAY) == first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.outcome = Outcome.UNQUALIFIED  # type: ignore[misc]
