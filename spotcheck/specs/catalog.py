"""The specification catalog: specs expanded from the data files, looked up by id."""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from pydantic import ValidationError

from spotcheck.errors import SpotcheckError, UnknownItem, UnknownSpec
from spotcheck.events import Comparison, describe_validation_error
from spotcheck.rounding import last_digit_quantum
from spotcheck.specs.limits import Bounds, Season, SeasonalLimit
from spotcheck.specs.schema import (
    BoundsData,
    FamilyData,
    ItemData,
    SeasonalData,
    StandardData,
    TableData,
)


class CatalogError(SpotcheckError):
    """A catalog data file that cannot be loaded; the message names the file and the culprit."""


@dataclass(frozen=True, eq=False)
class Item:
    """One test item of a spec, its limit resolved for the spec's grade."""

    code: str
    name: str
    name_zh: str | None
    unit: str | None
    comparison: Comparison
    limit: Bounds | SeasonalLimit
    verify: bool = False
    note: str | None = None


@dataclass(frozen=True, eq=False)
class Spec:
    """A concrete specification (grade and variant chosen): the items a sample is judged on."""

    id: str
    standard: str
    product: str
    items: tuple[Item, ...]
    axes: Mapping[str, str] = field(default_factory=dict)
    note: str | None = None
    report_days: int = 15
    _index: dict[str, Item] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {item.code: item for item in self.items})

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._index)

    def has(self, code: str) -> bool:
        return code in self._index

    def item(self, code: str) -> Item:
        try:
            return self._index[code]
        except KeyError:
            raise UnknownItem(
                f"spec {self.id} has no item {code!r}{_nearest(code, self._index)}", field="item"
            ) from None

    def limit_for(self, code: str, sampled_on: date) -> Bounds:
        """The bounds in force for `code` on a sample taken on `sampled_on` (bureau zone)."""
        return self.item(code).limit.on(sampled_on)


class Catalog:
    """Every spec the platform knows, by id, in the order of the data files."""

    def __init__(self, specs: Iterable[Spec]) -> None:
        self._specs: dict[str, Spec] = {}
        for spec in specs:
            if spec.id in self._specs:
                raise CatalogError(f"spec {spec.id} is defined twice")
            self._specs[spec.id] = spec

    def get(self, spec_id: str) -> Spec:
        try:
            return self._specs[spec_id]
        except KeyError:
            hint = _nearest(spec_id, self._specs) or "; `spotcheck specs` lists the catalog"
            raise UnknownSpec(f"unknown spec {spec_id!r}{hint}", field="spec") from None

    def specs(self) -> Iterator[Spec]:
        return iter(self._specs.values())

    def __contains__(self, spec_id: object) -> bool:
        return spec_id in self._specs

    def __len__(self) -> int:
        return len(self._specs)


def _nearest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=3, cutoff=0.5)
    return f" (nearest: {', '.join(close)})" if close else ""


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalog shipped with spotcheck, or the one in folder `path` (every *.json file).

    Loaded once per folder and cached; a malformed file raises CatalogError naming it.
    """
    return _load(None if path is None else str(Path(path).resolve()))


@lru_cache(maxsize=8)
def _load(folder: str | None) -> Catalog:
    root: Traversable = Path(folder) if folder else resources.files("spotcheck.specs") / "data"
    if not root.is_dir():
        raise CatalogError(f"catalog folder {root} does not exist")
    files = sorted((f for f in root.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    if not files:
        raise CatalogError(f"catalog folder {root} holds no *.json file")
    return Catalog(spec for f in files for spec in _read(f))


def _read(source: Traversable) -> list[Spec]:
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
        data = StandardData.model_validate(raw)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{source.name}: not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise CatalogError(f"{source.name}: {describe_validation_error(exc)}") from None
    try:
        return [spec for family in data.families for spec in _expand(data, family)]
    except ValueError as exc:
        raise CatalogError(f"{source.name}: {exc}") from None


def _expand(data: StandardData, family: FamilyData) -> Iterator[Spec]:
    names = list(family.axes)
    for values in itertools.product(*family.axes.values()):
        axes = dict(zip(names, values, strict=True))
        spec_id = family.id.format(**axes)
        items = tuple(_item(spec_id, entry, axes) for entry in family.items)
        yield Spec(spec_id, data.standard, data.product, items, axes, family.note, data.report_days)


def _item(spec_id: str, entry: ItemData, axes: dict[str, str]) -> Item:
    try:
        limit, verify = _limit(entry.limit, axes)
        if entry.comparison is Comparison.ROUNDED:
            _check_one_digit(limit)
    except ValueError as exc:
        raise ValueError(f"{spec_id} item {entry.code!r}: {exc}") from None
    return Item(
        code=entry.code,
        name=entry.name,
        name_zh=entry.name_zh,
        unit=entry.unit,
        comparison=entry.comparison,
        limit=limit,
        verify=entry.verify or verify,
        note=entry.note,
    )


def _limit(
    data: BoundsData | TableData | SeasonalData, axes: dict[str, str]
) -> tuple[Bounds | SeasonalLimit, bool]:
    if isinstance(data, TableData):
        data = data.table[axes[data.by]]
    if isinstance(data, BoundsData):
        return Bounds(data.min, data.max), data.verify
    seasons = tuple(Season(s.name, s.from_, s.to, Bounds(s.min, s.max)) for s in data.seasons)
    return SeasonalLimit(seasons, data.changeover_days), any(s.verify for s in data.seasons)


def _check_one_digit(limit: Bounds | SeasonalLimit) -> None:
    """The rounded-value method rounds to the limit's last digit: it must be one digit."""
    bounds = [limit] if isinstance(limit, Bounds) else [s.bounds for s in limit.seasons]
    numbers: list[Decimal] = [n for b in bounds for n in (b.min, b.max) if n is not None]
    quanta = {last_digit_quantum(n) for n in numbers}
    if len(quanta) > 1:
        written = ", ".join(str(n) for n in numbers)
        raise ValueError(f"rounded-value bounds must end on the same digit, not {written}")
