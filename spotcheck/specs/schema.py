"""The shape of a catalog data file (one JSON file per standard), validated by pydantic."""

from __future__ import annotations

import string
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from spotcheck.events import Comparison, decimal_string


def _limit_number(value: Any) -> Decimal:
    """A limit as written in the standard: a string, so that "3.0" keeps its last digit."""
    return decimal_string(value, what="a limit", example="3.0")


def _month_day(value: Any) -> tuple[int, int]:
    """A day of the year written "MM-DD"."""
    try:
        month, day = (int(part) for part in str(value).split("-"))
        date(2000, month, day)
    except ValueError:
        raise ValueError(f'{value!r} is not a day of the year written "MM-DD"') from None
    return month, day


LimitNumber = Annotated[Decimal, BeforeValidator(_limit_number)]
MonthDay = Annotated[tuple[int, int], BeforeValidator(_month_day)]
AxisValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9.+-]+$")]


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BoundsData(_Data):
    """{"min": "60"}, {"max": "10"} or {"min": "720", "max": "775"}; verify flags a doubt."""

    min: LimitNumber | None = None
    max: LimitNumber | None = None
    verify: bool = False

    @model_validator(mode="after")
    def _some_bound(self) -> BoundsData:
        if self.min is None and self.max is None:
            raise ValueError("a limit needs a min, a max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class TableData(_Data):
    """Bounds that vary along one axis of the family: {"by": "grade", "table": {"89": {...}}}."""

    by: str
    table: dict[AxisValue, BoundsData]


class SeasonData(BoundsData):
    """A part of the year, "from" and "to" inclusive (it may wrap past 31 Dec), with its bounds."""

    name: str = Field(min_length=1)
    from_: MonthDay = Field(alias="from")
    to: MonthDay


class SeasonalData(_Data):
    """Bounds by sampling date; in the first changeover_days of a season the previous one's
    range is accepted too."""

    seasons: list[SeasonData] = Field(min_length=1)
    changeover_days: int = Field(default=0, ge=0)


def _limit_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "by" in value or "table" in value:
            return "table"
        if "seasons" in value:
            return "seasonal"
    return "bounds"


LimitData = Annotated[
    Annotated[BoundsData, Tag("bounds")]
    | Annotated[TableData, Tag("table")]
    | Annotated[SeasonalData, Tag("seasonal")],
    Discriminator(_limit_kind),
]


class ItemData(_Data):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    name: str = Field(min_length=1)
    name_zh: str | None = None
    unit: str | None = None
    comparison: Comparison = Comparison.WHOLE
    verify: bool = False
    note: str | None = None
    limit: LimitData


class FamilyData(_Data):
    """Specs sharing their items: `id` is a template such as "GB19147-2016:VI:{grade}", and
    one spec is made for every combination of the axes' values."""

    id: str = Field(min_length=1)
    axes: dict[str, list[AxisValue]] = Field(default_factory=dict)
    note: str | None = None
    items: list[ItemData] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> FamilyData:
        fields = [name for _, name, _, _ in string.Formatter().parse(self.id) if name is not None]
        if sorted(fields) != sorted(self.axes):
            raise ValueError(
                f"id template {self.id!r} must name each axis once: {', '.join(self.axes) or '-'}"
            )
        for axis, values in self.axes.items():
            if not values or len(set(values)) != len(values):
                raise ValueError(f"axis {axis!r} needs distinct values")
        codes = [item.code for item in self.items]
        if len(set(codes)) != len(codes):
            raise ValueError(f"duplicate item codes in {self.id!r}")
        for item in self.items:
            if isinstance(item.limit, TableData):
                _check_table(item.code, item.limit, self.axes)
        return self


def _check_table(code: str, table: TableData, axes: dict[str, list[str]]) -> None:
    if table.by not in axes:
        raise ValueError(f"item {code!r}: table is by {table.by!r}, which is not an axis")
    expected, given = set(axes[table.by]), set(table.table)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ValueError(
            f"item {code!r}: the table by {table.by!r} must list exactly {sorted(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )


class StandardData(_Data):
    """One catalog file: a standard, the product it covers, and its families of specs."""

    standard: str = Field(min_length=1)
    title: str = Field(min_length=1)
    title_zh: str | None = None
    product: str = Field(min_length=1)
    report_days: int = Field(
        default=15,
        ge=1, le=365, description="calendar days a lab has to report, counted from the day after receipt"
    )
    report_days_verify: bool = False
    families: list[FamilyData] = Field(min_length=1)
