"""The specification catalog: the ids and limits of DOMAIN.md section 4, and data validation."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spotcheck.errors import UnknownItem, UnknownSpec
from spotcheck.events import Comparison
from spotcheck.specs import Bounds, CatalogError, SeasonalLimit, load_catalog

D = Decimal
GASOLINE = [f"GB17930-2016:{s}:{g}" for s in ("VIA", "VIB") for g in ("89", "92", "95", "98")]
DIESEL = [f"GB19147-2016:VI:{g}" for g in ("5", "0", "-10", "-20", "-35", "-50")]
SMALL, ALL = ("1.5", "2.5", "4"), ("1.5", "2.5", "4", "6", "10")
SIZES = {"1": ALL, "2": ALL, "5": SMALL}
CONDUCTORS = [f"GB/T3956-2008:{c}:{s}" for c, sizes in SIZES.items() for s in sizes]
FERTILIZER = [f"GB/T15063-2020:{level}" for level in ("high", "medium", "low")]

GASOLINE_ITEMS = (
    "ron aki sulfur benzene aromatics olefins oxygen methanol lead manganese iron "
    "vapour_pressure dist_10 dist_50 dist_90 dist_fbp density_20c"
).split()
DIESEL_ITEMS = (
    "sulfur pah flash_point cfpp pour_point cetane_number density_20c viscosity_20c "
    "lubricity_wsd fame total_contamination dist_50 dist_90 dist_95"
).split()
FERTILIZER_ITEMS = ["total_nutrient", "water_soluble_p", "moisture", "chloride"]

SUMMER_DAY = date(2024, 7, 1)


def bounds(spec_id: str, code: str, day: date = SUMMER_DAY) -> tuple[str | None, str | None]:
    low, high = load_catalog().get(spec_id).limit_for(code, day)
    return (None if low is None else str(low), None if high is None else str(high))


def test_every_spec_id_of_the_domain_and_nothing_else() -> None:
    catalog = load_catalog()
    ids = [spec.id for spec in catalog.specs()]
    assert sorted(ids) == sorted(GASOLINE + DIESEL + CONDUCTORS + FERTILIZER)
    assert len(catalog) == len(ids) == len(set(ids))
    assert "GB19147-2016:VI:0" in catalog


@pytest.mark.parametrize(
    ("ids", "codes"),
    [
        (GASOLINE, GASOLINE_ITEMS),
        (DIESEL, DIESEL_ITEMS),
        (CONDUCTORS, ["conductor_resistance"]),
        (FERTILIZER, FERTILIZER_ITEMS),
    ],
)
def test_item_codes_are_the_contract(ids: list[str], codes: list[str]) -> None:
    for spec_id in ids:
        assert list(load_catalog().get(spec_id).codes) == codes


def test_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def test_every_item_has_a_name_and_resolves_on_any_day() -> None:
    for spec in load_catalog().specs():
        assert spec.product and spec.standard
        for item in spec.items:
            assert item.name
            for day in (date(2024, 1, 1), date(2024, 2, 29), date(2023, 5, 1), date(2024, 12, 31)):
                assert isinstance(spec.limit_for(item.code, day), Bounds)


@pytest.mark.parametrize(
    ("spec_id", "code", "expected"),
    [
        ("GB17930-2016:VIA:89", "ron", ("89", None)),
        ("GB17930-2016:VIB:98", "ron", ("98", None)),
        ("GB17930-2016:VIA:92", "aki", ("87", None)),
        ("GB17930-2016:VIA:95", "olefins", (None, "18")),
        ("GB17930-2016:VIB:95", "olefins", (None, "15")),
        ("GB17930-2016:VIB:95", "sulfur", (None, "10")),
        ("GB17930-2016:VIA:92", "lead", (None, "0.005")),
        ("GB17930-2016:VIA:92", "oxygen", (None, "2.7")),
        ("GB17930-2016:VIA:92", "density_20c", ("720", "775")),
        ("GB17930-2016:VIA:92", "dist_fbp", (None, "205")),
        ("GB19147-2016:VI:5", "cfpp", (None, "8")),
        ("GB19147-2016:VI:0", "cfpp", (None, "4")),
        ("GB19147-2016:VI:-10", "cfpp", (None, "-5")),
        ("GB19147-2016:VI:-20", "cfpp", (None, "-14")),
        ("GB19147-2016:VI:-35", "cfpp", (None, "-29")),
        ("GB19147-2016:VI:-50", "cfpp", (None, "-44")),
        ("GB19147-2016:VI:-50", "pour_point", (None, "-50")),
        ("GB19147-2016:VI:-20", "flash_point", ("50", None)),
        ("GB19147-2016:VI:-20", "cetane_number", ("49", None)),
        ("GB19147-2016:VI:-10", "density_20c", ("810", "845")),
        ("GB19147-2016:VI:-20", "density_20c", ("790", "840")),
        ("GB19147-2016:VI:0", "viscosity_20c", ("3.0", "8.0")),
        ("GB19147-2016:VI:-20", "viscosity_20c", ("2.5", "8.0")),
        ("GB19147-2016:VI:-35", "viscosity_20c", ("1.8", "7.0")),
        ("GB19147-2016:VI:0", "fame", (None, "1.0")),
        ("GB/T3956-2008:1:1.5", "conductor_resistance", (None, "12.1")),
        ("GB/T3956-2008:2:10", "conductor_resistance", (None, "1.83")),
        ("GB/T3956-2008:5:2.5", "conductor_resistance", (None, "7.98")),
        ("GB/T3956-2008:5:4", "conductor_resistance", (None, "4.95")),
        ("GB/T15063-2020:high", "total_nutrient", ("40", None)),
        ("GB/T15063-2020:medium", "water_soluble_p", ("50", None)),
        ("GB/T15063-2020:low", "moisture", (None, "5.0")),
        ("GB/T15063-2020:low", "chloride", (None, "3.0")),
    ],
)
def test_limits(spec_id: str, code: str, expected: tuple[str | None, str | None]) -> None:
    assert bounds(spec_id, code) == expected


def test_verify_flags_follow_the_domain() -> None:
    gasoline = load_catalog().get("GB17930-2016:VIA:92")
    flagged = {item.code for item in gasoline.items if item.verify}
    assert flagged == {
        "aki", "benzene", "aromatics", "olefins", "manganese", "vapour_pressure",
        "dist_10", "dist_50", "dist_90", "dist_fbp", "density_20c",
    }  # fmt: skip
    # "colder grades verify": the flag is per grade
    assert not load_catalog().get("GB19147-2016:VI:0").item("flash_point").verify
    assert load_catalog().get("GB19147-2016:VI:-35").item("flash_point").verify


def test_comparison_methods() -> None:
    assert load_catalog().get("GB17930-2016:VIA:92").item("sulfur").comparison is Comparison.WHOLE
    for code in FERTILIZER_ITEMS:
        item = load_catalog().get("GB/T15063-2020:high").item(code)
        assert item.comparison is Comparison.ROUNDED


def test_bounds_texts() -> None:
    spec = load_catalog().get("GB19147-2016:VI:-20")
    assert spec.limit_for("cfpp", SUMMER_DAY).text == "≤ -14"
    assert spec.limit_for("flash_point", SUMMER_DAY).text == "≥ 50"
    assert spec.limit_for("viscosity_20c", SUMMER_DAY).text == "2.5–8.0"


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 1, 15), ("45", "85")),
        (date(2024, 2, 29), ("45", "85")),
        (date(2024, 4, 30), ("45", "85")),
        (date(2024, 5, 1), ("40", "85")),  # changeover: either range
        (date(2024, 5, 15), ("40", "85")),  # the 15th day of summer
        (date(2024, 5, 16), ("40", "65")),
        (date(2024, 7, 1), ("40", "65")),
        (date(2024, 10, 31), ("40", "65")),
        (date(2024, 11, 1), ("40", "85")),  # changeover: either range
        (date(2024, 11, 15), ("40", "85")),
        (date(2024, 11, 16), ("45", "85")),
        (date(2024, 12, 31), ("45", "85")),
        (date(2025, 1, 1), ("45", "85")),
    ],
)
def test_vapour_pressure_by_sampling_date(day: date, expected: tuple[str, str]) -> None:
    assert bounds("GB17930-2016:VIB:92", "vapour_pressure", day) == expected


def test_vapour_pressure_texts_name_the_season() -> None:
    spec = load_catalog().get("GB17930-2016:VIA:95")
    assert spec.limit_for("vapour_pressure", date(2024, 5, 20)).text == "40–65 (summer)"
    changeover = spec.limit_for("vapour_pressure", date(2024, 5, 2)).text
    assert "40–65 or 45–85" in changeover and "changeover" in changeover
    described = spec.item("vapour_pressure").limit.describe()
    assert "1 Nov–30 Apr" in described and "15 days" in described


def test_unknown_spec_names_the_nearest_ids() -> None:
    with pytest.raises(UnknownSpec) as caught:
        load_catalog().get("GB17930-2016:VIA:91")
    message = str(caught.value)
    assert "'GB17930-2016:VIA:91'" in message and "GB17930-2016:VIA:92" in message
    assert caught.value.field == "spec"
    with pytest.raises(UnknownSpec, match="spotcheck specs"):
        load_catalog().get("nothing like it")


def test_unknown_item() -> None:
    spec = load_catalog().get("GB19147-2016:VI:0")
    with pytest.raises(UnknownItem, match=r"GB19147-2016:VI:0 has no item 'sulphur'.*sulfur"):
        spec.item("sulphur")
    with pytest.raises(UnknownItem):
        spec.limit_for("ron", SUMMER_DAY)


# --- a bureau's own catalog folder, and malformed data ------------------------------------------


def standard(**family: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "T-1:{grade}",
        "axes": {"grade": ["a", "b"]},
        "items": [{"code": "x", "name": "X", "unit": "mg/kg", "limit": {"max": "10"}}],
    }
    base.update(family)
    return {"standard": "T 1", "title": "Test", "product": "test", "families": [base]}


def write(folder: Path, name: str, data: Any) -> Path:
    folder.mkdir(exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_a_folder_of_its_own(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path / "c", "t.json", standard()))
    assert [spec.id for spec in catalog.specs()] == ["T-1:a", "T-1:b"]
    assert catalog.get("T-1:a").axes == {"grade": "a"}
    assert load_catalog(tmp_path / "c") is catalog
    assert "GB19147-2016:VI:0" not in catalog


def test_a_family_without_axes_is_one_spec(tmp_path: Path) -> None:
    data = standard(id="T-2", axes={})
    assert [s.id for s in load_catalog(write(tmp_path / "c", "t.json", data)).specs()] == ["T-2"]


def test_season_can_wrap_and_has_no_changeover_by_default(tmp_path: Path) -> None:
    item = {
        "code": "vp", "name": "VP", "unit": "kPa",
        "limit": {"seasons": [
            {"name": "cold", "from": "12-01", "to": "02-29", "min": "50", "max": "90"},
            {"name": "warm", "from": "03-01", "to": "11-30", "max": "70"},
        ]},
    }  # fmt: skip
    catalog = load_catalog(write(tmp_path / "c", "t.json", standard(items=[item])))
    spec = catalog.get("T-1:a")
    assert tuple(spec.limit_for("vp", date(2023, 3, 1))) == (None, D("70"))
    assert tuple(spec.limit_for("vp", date(2024, 2, 29))) == (D("50"), D("90"))
    assert tuple(spec.limit_for("vp", date(2023, 2, 28))) == (D("50"), D("90"))
    assert tuple(spec.limit_for("vp", date(2024, 12, 1))) == (D("50"), D("90"))
    assert isinstance(spec.item("vp").limit, SeasonalLimit)


def seasonal(*seasons: dict[str, str], changeover: int = 0) -> dict[str, Any]:
    limit = {"seasons": list(seasons), "changeover_days": changeover}
    return standard(items=[{"code": "vp", "name": "VP", "limit": limit}])


WINTER = {"name": "winter", "from": "11-01", "to": "04-30", "min": "45", "max": "85"}
SUMMER = {"name": "summer", "from": "05-01", "to": "10-31", "min": "40", "max": "65"}


def item(**fields: Any) -> dict[str, Any]:
    return standard(items=[{"code": "x", "name": "X", "limit": {"max": "1"}, **fields}])


TOO_MANY = {"a": {"max": "1"}, "b": {"max": "1"}, "c": {"max": "1"}}


@pytest.mark.parametrize(
    ("data", "culprit"),
    [
        ("{not json", "not valid JSON"),
        ([], "Input should be a valid dictionary"),
        ({"standard": "T"}, "families: Field required"),
        (item(limit={"max": 10}), 'decimal string such as "3.0"'),
        (item(limit={"max": 2.5}), "not the JSON float 2.5"),
        (item(limit={"max": "ten"}), "not a decimal"),
        (item(limit={}), "a min, a max or both"),
        (item(limit={"min": "9", "max": "1"}), "above max"),
        (item(code="X y"), "items.0.code"),
        (item(colour=1), "colour"),
        (item(comparison="eyeball"), "comparison"),
        (standard(id="T-1:{grade}:{size}"), "must name each axis"),
        (standard(id="T-1"), "must name each axis"),
        (standard(axes={"grade": ["a", "a"]}), "distinct"),
        (standard(axes={"grade": ["a:b"]}), "axes.grade.0"),
        (standard(items=item()["families"][0]["items"] * 2), "duplicate item codes"),
        (item(limit={"by": "size", "table": {}}), "not an axis"),
        (item(limit={"by": "grade", "table": {"a": {"max": "1"}}}), "missing ['b']"),
        (item(limit={"by": "grade", "table": TOO_MANY}), "unknown ['c']"),
        (seasonal({**WINTER, "to": "04-29"}, SUMMER), "30 Apr is covered by no season"),
        (seasonal(WINTER, {**SUMMER, "from": "04-30"}), "30 Apr is covered by seasons winter, sum"),
        (seasonal({**WINTER, "from": "11-31"}, SUMMER), "day of the year"),
        (seasonal(WINTER, {**SUMMER, "min": "90", "max": "95"}, changeover=15), "do not overlap"),
        (seasonal(WINTER, SUMMER, changeover=400), "shorter than season"),
        (
            item(comparison="rounded-value", limit={"min": "2.5", "max": "8"}),
            "T-1:a item 'x': rounded-value bounds must end on the same digit, not 2.5, 8",
        ),
    ],
)
def test_malformed_data_is_refused_naming_the_file(tmp_path: Path, data: Any, culprit: str) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path / "c", "broken.json", data))
    assert str(caught.value).startswith("broken.json: ")
    assert culprit in str(caught.value)


def test_seasons_of_a_non_overlapping_pair_without_changeover_are_fine(tmp_path: Path) -> None:
    data = seasonal(WINTER, {**SUMMER, "min": "90", "max": "95"})
    assert len(load_catalog(write(tmp_path / "c", "t.json", data))) == 2


def test_a_spec_defined_twice_is_refused(tmp_path: Path) -> None:
    folder = write(write(tmp_path / "c", "a.json", standard()), "b.json", standard())
    with pytest.raises(CatalogError, match="T-1:a is defined twice"):
        load_catalog(folder)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match=r"no \*\.json"):
        load_catalog(tmp_path / "empty")
