"""LIMS exports read into lab results: CSV and JSON lines, a column mapping, units, ids, row errors."""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spotcheck.errors import InvalidInput
from spotcheck.events import LabResult, decimal_string, describe_validation_error
from spotcheck.specs import Catalog, load_catalog
from spotcheck.units import unit_key

Format = Literal["csv", "jsonl"]
SUFFIXES: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

FIELDS = (
    "result_id",
    "task_id",
    "sample_id",
    "item",
    "value",
    "unit",
    "method",
    "measured_at",
    "amends",
    "reason",
)
REQUIRED = ("task_id", "sample_id", "item", "value", "measured_at")

DEFAULT_TIME_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")

IMPORT_ERROR = "import_error"
"""The key that marks a row refused here, with its fault: {"file", "line", "field", "reason"}.
LabResult forbids unknown fields, so the platform refuses such a row too and keeps it as a dead
letter whose reason is that fault (`import_refusal`)."""
MAX_REASON = 1000  # characters of a refused row's reason that the platform keeps

CONVERSIONS: tuple[tuple[str, str, int], ...] = (
    ("% m/m", "mg/kg", 4),
    ("% m/m", "g/kg", 1),
    ("g/kg", "mg/kg", 3),
    ("g/L", "mg/L", 3),
    ("kPa", "Pa", 3),
    ("g/cm³", "kg/m³", 3),
    ("g/mL", "kg/m³", 3),
    ("mm", "µm", 3),
    ("Ω/m", "Ω/km", 3),
    ("% v/v", "mL/L", 1),
)
"""Unit conversions, both ways: (from, to, n) means 1 `from` = 10**n `to`. Powers of ten only, so a
converted value keeps exactly the significant digits measured (0.00083 % m/m -> 8.3 mg/kg)."""

NO_UNIT = frozenset({"", "-", "—", "–", "/", "n/a", "na", "none", "null"})


class MappingError(InvalidInput):
    """A mapping file that cannot be used; the message names the culprit."""


class ExportError(InvalidInput):
    """A whole export that cannot be read (encoding, header); `line` is where it went wrong."""

    def __init__(self, message: str, *, line: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.line = line


class Columns(BaseModel):
    """Which column (CSV header, JSON key) holds each field; unset: the field's own name.
    A column named here must be in the export; the optional fields' default names may be absent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    result_id: str | None = None
    task_id: str | None = None
    sample_id: str | None = None
    item: str | None = None
    value: str | None = None
    unit: str | None = None
    method: str | None = None
    measured_at: str | None = None
    amends: str | None = None
    reason: str | None = None

    def name(self, field: str) -> str:
        given: str | None = getattr(self, field)
        return given or field

    def needed(self, field: str) -> bool:
        return field in REQUIRED or getattr(self, field) is not None


class ExportMapping(BaseModel):
    """How to read one LIMS's exports (the mapping file, TOML or JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str | None = Field(default=None, description="zone of times without an offset")
    time_formats: tuple[str, ...] = Field(
        default=DEFAULT_TIME_FORMATS, description="strptime formats tried after ISO 8601"
    )
    encoding: str = "utf-8-sig"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    columns: Columns = Columns()
    items: dict[str, str] = Field(default_factory=dict, description="LIMS item name -> item code")
    units: dict[str, str] = Field(default_factory=dict, description="LIMS unit -> unit spelling")
    target_units: dict[str, str] = Field(
        default_factory=dict, description="item code -> unit to report in (default: the catalog's)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, gb18030)") from None
        return value


def parse_mapping(text: str, kind: Literal["toml", "json"] = "toml") -> ExportMapping:
    """A mapping from the text of a mapping file."""
    try:
        raw = tomllib.loads(text) if kind == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise MappingError(f"not valid {kind.upper()}: {exc}") from None
    try:
        return ExportMapping.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(describe_validation_error(exc)) from None


def load_mapping(path: str | Path) -> ExportMapping:
    """The mapping file at `path`: TOML, or JSON when the name ends in .json."""
    path = Path(path)
    kind: Literal["toml", "json"] = "json" if path.suffix.lower() == ".json" else "toml"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MappingError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_mapping(text, kind)
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from None


def export_format(name: str) -> Format | None:
    """The format of an export by its file name, or None if it is not one."""
    return SUFFIXES.get(Path(name).suffix.lower())


def row_fault(file: str, line: int | str, reason: str, field: str | None = None) -> str:
    """A refused row's fault in one line: `FILE:LINE: reason (field)`."""
    return f"{file}:{line}: {reason}" + (f" ({field})" if field else "")


def import_refusal(raw: Any) -> tuple[str, str | None] | None:
    """The fault of a row the file import refused, from its `import_error` mark: (the row's fault
    as `row_fault` writes it, the field); None when `raw` carries no usable mark."""
    mark = raw.get(IMPORT_ERROR) if isinstance(raw, dict) else None
    if isinstance(mark, str) and mark.strip():  # clients that sent the fault as text
        return mark.strip()[:MAX_REASON], None
    if not isinstance(mark, dict):
        return None
    reason, file, line, field = (mark.get(k) for k in ("reason", "file", "line", "field"))
    if not isinstance(reason, str) or not reason.strip():
        return None
    field = field if isinstance(field, str) and field else None
    where = str(file) if isinstance(file, str) and file else "?"
    at = line if isinstance(line, int) and not isinstance(line, bool) else "?"
    return row_fault(where, at, reason.strip(), field)[:MAX_REASON], field


_SCALES: dict[tuple[str, str], int] = {}
for _from, _to, _power in CONVERSIONS:
    _SCALES[unit_key(_from), unit_key(_to)] = _power
    _SCALES[unit_key(_to), unit_key(_from)] = -_power


def scale(value: Decimal, power: int) -> str:
    """`value` × 10**power as a plain decimal string with the same significant digits."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "finite values only"
    return format(Decimal((sign, digits, exponent + power)), "f")


def convert(value: str, unit: str, target: str) -> str | None:
    """`value` (a decimal string) given in `unit`, written in `target`; the same text when the
    units are the same; None when no conversion is known. Raises ValueError for a bad value."""
    number = decimal_string(value)
    source, wanted = unit_key(unit), unit_key(target)
    if source == wanted:
        return value.strip()
    power = _SCALES.get((source, wanted))
    return None if power is None else scale(number, power)


def derive_result_id(
    lab_id: str, task_id: str, sample_id: str, item: str, measured_at: str, amends: str | None = None
) -> str:
    """The result id of a row whose export has none: the same row always gets the same id, so a
    file sent twice is answered "duplicate". `measured_at` is the time as written in the export."""
    parts = [lab_id, task_id, sample_id, item, measured_at] + ([amends] if amends else [])
    return f"{lab_id}-{hashlib.sha256(chr(0x1F).join(parts).encode()).hexdigest()[:20]}"


def parse_time(text: str, zone: tzinfo, formats: tuple[str, ...] = DEFAULT_TIME_FORMATS) -> datetime:
    """An aware time from ISO 8601 or one of `formats`; a time without an offset is in `zone`."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        for fmt in formats:
            try:
                moment = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            raise ValueError(
                f"{text!r} is not a time: write ISO 8601 (2026-11-24T10:00:00+08:00) "
                "or list its format under time_formats in the mapping"
            ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def catalog_units(catalog: Catalog) -> dict[str, str | None]:
    """Each item code's unit, from the first spec of the catalog that has the item."""
    units: dict[str, str | None] = {}
    for spec in catalog.specs():
        for item in spec.items:
            units.setdefault(item.code, item.unit)
    return units


@dataclass(frozen=True)
class Row:
    """One data row of an export: its line, and what is sent for it. A row refused here (`error`)
    is sent marked with `import_error`, so that the platform keeps it as a dead letter."""

    line: int
    body: dict[str, Any]
    error: str | None = None
    field: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _RowError(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


Cells = dict[str, str]  # field -> text as found (stripped); a field whose column is absent is left out


class ExportReader:
    """Reads the exports of one lab with one mapping into rows ready for the ingest API."""

    def __init__(
        self,
        lab_id: str,
        mapping: ExportMapping | None = None,
        *,
        timezone: str = "Asia/Shanghai",
        catalog: Catalog | None = None,
    ) -> None:
        self.lab_id = lab_id
        self.mapping = mapping = mapping or ExportMapping()
        self.zone = ZoneInfo(mapping.timezone or timezone)
        self.units = catalog_units(catalog or load_catalog())
        for code in mapping.target_units:
            if code not in self.units:
                raise MappingError(f"target_units: {code!r} is not an item code of the catalog")
        for code, unit in mapping.target_units.items():
            self.units[code] = None if unit_key(unit) in NO_UNIT else unit
        for name, code in mapping.items.items():
            if code not in self.units:
                raise MappingError(
                    f"items: {name!r} maps to {code!r}, which is not an item code of the catalog"
                    f"{_nearest(code, self.units)}"
                )
        self._items = dict(mapping.items)
        self._items_folded = {name.casefold(): code for name, code in mapping.items.items()}
        self._aliases = {unit_key(given): unit for given, unit in mapping.units.items()}

    def read(self, data: bytes, name: str, kind: Format | None = None) -> list[Row]:
        """Every data row of the export `data` (file `name`), in order. Blank lines are skipped;
        a file that cannot be read at all raises ExportError."""
        kind = kind or export_format(name)
        if kind is None:
            raise ExportError("not a .csv, .jsonl or .ndjson file", line=1)
        text = self._decode(data)
        records = self._csv(text) if kind == "csv" else self._jsonl(text)
        rows: list[Row] = []
        ids: dict[str, tuple[int, dict[str, Any]]] = {}
        for line, cells, problem in records:
            try:
                if problem is not None:
                    raise _RowError(problem)
                body, derived = self._result(cells)
                earlier = ids.setdefault(body["result_id"], (line, body))
                if earlier[1] != body:
                    raise _RowError(
                        (
                            f"same task, sample, item and time as line {earlier[0]} but other content "
                            "(give each row a result_id, or correct the other line)"
                        )
                        if derived
                        else f"result_id {body['result_id']} is also on line {earlier[0]} with other content",
                        "result_id",
                    )
            except _RowError as exc:
                marked = self._marked(cells, name, line, exc.message, exc.field)
                rows.append(Row(line, marked, exc.message, exc.field))
            else:
                rows.append(Row(line, body))
        return rows

    def _decode(self, data: bytes) -> str:
        try:
            text = data.decode(self.mapping.encoding)
        except UnicodeDecodeError as exc:
            raise ExportError(
                f"not {self.mapping.encoding} text (byte {exc.start}); set encoding in the mapping, "
                'e.g. encoding = "gb18030"',
                line=data[: exc.start].count(b"\n") + 1,
            ) from None
        return text.removeprefix("\ufeff")

    def _csv(self, text: str) -> Iterator[tuple[int, Cells, str | None]]:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.mapping.delimiter)
        header: dict[str, int] | None = None
        width = 0
        end = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield end + 1, {}, f"not valid CSV: {exc}"
                return
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header, width = self._header([c.strip() for c in cells], start), len(cells)
                continue
            found = {field: cells[i].strip() if i < len(cells) else "" for field, i in header.items()}
            extra = any(c.strip() for c in cells[width:])
            yield start, found, f"{len(cells)} cells, the header has {width}" if extra else None

    def _header(self, names: list[str], line: int) -> dict[str, int]:
        columns = self.mapping.columns
        where: dict[str, int] = {}
        for field in FIELDS:
            wanted = columns.name(field)
            hits = [i for i, n in enumerate(names) if n == wanted] or [
                i for i, n in enumerate(names) if n.casefold() == wanted.casefold()
            ]
            if len(hits) > 1:
                raise ExportError(f"column {wanted!r} ({field}) appears {len(hits)} times", line=line)
            if hits:
                where[field] = hits[0]
            elif columns.needed(field):
                raise ExportError(
                    f"no column {wanted!r} for {field} (the header has: {', '.join(names)}); "
                    f"name it under [columns] in the mapping",
                    line=line,
                    field=field,
                )
        return where

    def _jsonl(self, text: str) -> Iterator[tuple[int, Cells, str | None]]:
        columns = self.mapping.columns
        for line, raw in enumerate(text.split("\n"), 1):
            if not raw.strip():
                continue
            try:
                # numbers are kept as written: 8.30 stays "8.30"
                obj = json.loads(raw, parse_float=str, parse_int=str, parse_constant=str)
            except json.JSONDecodeError as exc:
                yield line, {"line": raw.strip()[:2000]}, f"not valid JSON: {exc.msg} (column {exc.colno})"
                continue
            if not isinstance(obj, dict):
                yield line, {"line": raw.strip()[:2000]}, "not a JSON object"
                continue
            folded = {str(k).casefold(): k for k in obj}
            cells: Cells = {}
            problem = None
            for field in FIELDS:
                wanted = columns.name(field)
                key = wanted if wanted in obj else folded.get(wanted.casefold())
                if key is None:
                    if field in REQUIRED and problem is None:
                        problem = f"no {wanted!r} key ({field})"
                    elif columns.needed(field):  # named in the mapping: missing means blank
                        cells[field] = ""
                    continue
                value = obj[key]
                if value is None:
                    cells[field] = ""
                elif isinstance(value, str):
                    cells[field] = value.strip()
                else:
                    cells[field] = json.dumps(value, ensure_ascii=False)
                    if problem is None:
                        problem = f"{wanted!r} must be text or a number, not {cells[field]}"
            yield line, cells, problem

    def _result(self, cells: Cells) -> tuple[dict[str, Any], bool]:
        """The lab result of a row, and whether its id was derived; raises _RowError."""

        def need(field: str) -> str:
            text = cells.get(field, "")
            if not text:
                raise _RowError(f"{field} is empty (column {self.mapping.columns.name(field)!r})", field)
            return text

        task_id, sample_id = need("task_id"), need("sample_id")
        item = self._item(need("item"))
        value, unit = self._value(item, need("value"), cells.get("unit"))
        written = need("measured_at")
        try:
            measured_at = parse_time(written, self.zone, self.mapping.time_formats).isoformat()
        except ValueError as exc:
            raise _RowError(str(exc), "measured_at") from None
        amends = cells.get("amends") or None
        given_id = cells.get("result_id") or None
        body: dict[str, Any] = {
            "result_id": given_id or derive_result_id(self.lab_id, task_id, sample_id, item, written, amends),
            "lab_id": self.lab_id,
            "task_id": task_id,
            "sample_id": sample_id,
            "item": item,
            "value": value,
            "unit": unit,
            "method": cells.get("method") or None,
            "measured_at": measured_at,
            "amends": amends,
            "reason": cells.get("reason") or None,
        }
        try:
            LabResult.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or None
            raise _RowError(describe_validation_error(exc), field) from None
        return body, given_id is None

    def _item(self, name: str) -> str:
        code = self._items.get(name) or self._items_folded.get(name.casefold())
        if code is not None:
            return code
        if name in self.units:
            return name
        hint = _nearest(name, [*self._items, *self.units])
        raise _RowError(f"unknown item {name!r}{hint}; map it to an item code under [items]", "item")

    def _value(self, item: str, value: str, given: str | None) -> tuple[str, str | None]:
        """The value and unit to report: converted to the item's unit when the row gives another."""
        try:
            decimal_string(value)
        except ValueError as exc:
            raise _RowError(str(exc), "value") from None
        target = self.units[item]
        if given is None:  # the export has no unit column: values are in the item's unit
            return value, target
        spelled = self._aliases.get(unit_key(given), given)
        if unit_key(spelled) in NO_UNIT:
            if target is None:
                return value, None
            raise _RowError(f"no unit given; {item} is reported in {target}", "unit")
        if target is None:
            raise _RowError(f"{item} has no unit, the row gives {given!r}", "unit")
        converted = convert(value, spelled, target)
        if converted is None:
            raise _RowError(
                f"{item} is reported in {target}; {given!r} cannot be converted to it "
                "(an alias under [units] may name the unit)",
                "unit",
            )
        return converted, target

    def _marked(self, cells: Cells, name: str, line: int, message: str, field: str | None) -> dict[str, Any]:
        """A refused row as sent: the fields as found, the lab, and why it was refused here."""
        fault = {"file": name, "line": line, "field": field, "reason": message}
        return {IMPORT_ERROR: fault, "lab_id": self.lab_id, **cells}


def _nearest(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=3, cutoff=0.6)
    return f" (nearest: {', '.join(close)})" if close else ""
