"""Limits of test items: fixed bounds, and season-dependent ranges resolved by sampling date."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Bounds:
    """The bounds in force for one item: min and/or max, inclusive, with a readable text."""

    min: Decimal | None
    max: Decimal | None
    text: str = ""

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("a limit needs a min, a max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if not self.text:
            object.__setattr__(self, "text", bounds_text(self.min, self.max))

    def __iter__(self) -> Iterator[Decimal | None]:
        """Unpacks as `low, high = bounds`."""
        return iter((self.min, self.max))

    def on(self, day: date) -> Bounds:
        """Fixed bounds apply on every date."""
        return self

    def describe(self) -> str:
        return self.text


def bounds_text(low: Decimal | None, high: Decimal | None) -> str:
    if low is not None and high is not None:
        return f"{low}–{high}"
    if low is not None:
        return f"≥ {low}"
    return f"≤ {high}"


def hull(a: Bounds, b: Bounds, text: str) -> Bounds:
    """The smallest bounds containing both (a missing side stays open)."""
    low = None if a.min is None or b.min is None else min(a.min, b.min)
    high = None if a.max is None or b.max is None else max(a.max, b.max)
    return Bounds(low, high, text)


@dataclass(frozen=True)
class Season:
    """A part of the year, from start to end inclusive as (month, day); may wrap past 31 Dec."""

    name: str
    start: tuple[int, int]
    end: tuple[int, int]
    bounds: Bounds

    def contains(self, day: date) -> bool:
        md = (day.month, day.day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end

    def span_text(self) -> str:
        return f"{_md_text(self.start)}–{_md_text(self.end)}"


def _md_text(md: tuple[int, int]) -> str:
    return f"{md[1]} {_MONTHS[md[0] - 1]}"


@dataclass(frozen=True)
class SeasonalLimit:
    """Bounds that depend on the sampling date (in the bureau's zone).

    During the first `changeover_days` days of a season, the previous season's range is accepted
    as well: the bounds are then the hull of both ranges (the data must make them overlap).
    """

    seasons: tuple[Season, ...]
    changeover_days: int = 0

    def __post_init__(self) -> None:
        _check_cover(self.seasons)
        for season in self.seasons:
            previous = self._previous(season)
            if self.changeover_days >= _length(season):
                raise ValueError(f"changeover_days must be shorter than season {season.name!r}")
            if self.changeover_days and not _overlap(season.bounds, previous.bounds):
                raise ValueError(
                    f"seasons {previous.name!r} ({previous.bounds.text}) and {season.name!r} "
                    f"({season.bounds.text}) do not overlap, so no single range accepts both "
                    "during the changeover"
                )

    def on(self, day: date) -> Bounds:
        season = self._season_of(day)
        if self.changeover_days:
            start = _start_in(season, day.year)
            if start > day:
                start = _start_in(season, day.year - 1)
            if (day - start).days < self.changeover_days:
                previous = self._previous(season)
                text = (
                    f"{season.bounds.text} or {previous.bounds.text} "
                    f"({season.name}, changeover from {previous.name})"
                )
                return hull(season.bounds, previous.bounds, text)
        return Bounds(season.bounds.min, season.bounds.max, f"{season.bounds.text} ({season.name})")

    def describe(self) -> str:
        parts = [f"{s.bounds.text} sampled {s.span_text()}" for s in self.seasons]
        text = "; ".join(parts)
        if self.changeover_days:
            text += f"; either range in the first {self.changeover_days} days of a season"
        return text

    def _season_of(self, day: date) -> Season:
        for season in self.seasons:
            if season.contains(day):
                return season
        raise AssertionError(f"no season covers {day}")  # _check_cover rules this out

    def _previous(self, season: Season) -> Season:
        return self._season_of(_start_in(season, 2001) - timedelta(days=1))


def _length(season: Season) -> int:
    """Days of the season in a common year."""
    day, count = date(2001, 1, 1), 0
    while day.year == 2001:
        count += season.contains(day)
        day += timedelta(days=1)
    return count


def _start_in(season: Season, year: int) -> date:
    return date(year, *season.start)


def _overlap(a: Bounds, b: Bounds) -> bool:
    lows = [x for x in (a.min, b.min) if x is not None]
    highs = [x for x in (a.max, b.max) if x is not None]
    return not lows or not highs or max(lows) <= min(highs)


def _check_cover(seasons: tuple[Season, ...]) -> None:
    """Every day of a leap year lies in exactly one season; no season starts on 29 Feb."""
    if not seasons:
        raise ValueError("a seasonal limit needs at least one season")
    for season in seasons:
        if season.start == (2, 29):
            raise ValueError(f"season {season.name!r} cannot start on 29 Feb")
    day = date(2000, 1, 1)
    while day.year == 2000:
        holders = [s.name for s in seasons if s.contains(day)]
        if len(holders) != 1:
            which = "no season" if not holders else f"seasons {', '.join(holders)}"
            raise ValueError(f"{_md_text((day.month, day.day))} is covered by {which}")
        day += timedelta(days=1)
