"""LIMS exports read into lab results: mapping, units, ids, times and row errors (no platform needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from spotcheck.cli import imports
from spotcheck.events import LabResult
from spotcheck.lims import (
    IMPORT_ERROR,
    MAX_REASON,
    ExportError,
    ExportMapping,
    ExportReader,
    MappingError,
    Row,
    convert,
    derive_result_id,
    import_refusal,
    load_mapping,
    parse_mapping,
    parse_time,
    scale,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lims"
SHANGHAI = ZoneInfo("Asia/Shanghai")
HEADER = "task_id,sample_id,item,value,unit,measured_at"


def read(
    text: str, name: str = "x.csv", mapping: ExportMapping | None = None, lab: str = "LAB-1"
) -> list[Row]:
    return ExportReader(lab, mapping).read(text.encode(), name)


def csv_rows(*lines: str, header: str = HEADER, **kw: Any) -> list[Row]:
    return read("\n".join([header, *lines]) + "\n", **kw)


def line(item: str = "sulfur", value: str = "8.3", unit: str = "mg/kg", at: str = "2026-11-24 10:00") -> str:
    return f"T-1,T-1-A,{item},{value},{unit},{at}"


# --- the example files of the README ---------------------------------------------------------


def test_example_csv_with_its_mapping() -> None:
    reader = ExportReader("LAB-1", load_mapping(EXAMPLES / "mapping.toml"))
    rows = reader.read((EXAMPLES / "results.csv").read_bytes(), "results.csv")
    assert [r.error for r in rows] == [None, None, None]
    assert [r.line for r in rows] == [2, 3, 4]
    ron, sulfur, benzene = (r.body for r in rows)
    assert (ron["item"], ron["value"], ron["unit"]) == ("ron", "92.6", None)
    assert (sulfur["item"], sulfur["value"], sulfur["unit"]) == ("sulfur", "8.3", "mg/kg")
    assert (benzene["item"], benzene["value"], benzene["unit"]) == ("benzene", "0.62", "% v/v")
    assert sulfur["measured_at"] == "2026-11-24T10:00:00+08:00"  # naive in the export: Asia/Shanghai
    assert sulfur["method"] == "SH/T 0689" and sulfur["task_id"] == "T-2026-000001"
    for body in (ron, sulfur, benzene):
        LabResult.model_validate(body)
        assert set(body) == set(LabResult.model_fields) - {"schema_"}


def test_example_jsonl_with_its_mapping() -> None:
    reader = ExportReader("LAB-1", load_mapping(EXAMPLES / "mapping.toml"))
    rows = reader.read((EXAMPLES / "results.jsonl").read_bytes(), "results.jsonl")
    assert [r.error for r in rows] == [None, None, None]
    ron, sulfur, benzene = (r.body for r in rows)
    assert ron["value"] == "92.3" and ron["unit"] is None  # a JSON number, read as written
    assert (sulfur["value"], sulfur["unit"]) == ("12.0", "mg/kg")  # "ppm" is an alias: digits kept
    assert benzene["unit"] == "% v/v"  # "% (V/V)" is the same unit
    assert ron["measured_at"] == "2026-11-25T09:10:00+08:00"


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_row_becomes_a_lab_result() -> None:
    (row,) = csv_rows(line(value="8.30"))
    assert row.ok and row.line == 2
    assert row.body == {
        "result_id": derive_result_id("LAB-1", "T-1", "T-1-A", "sulfur", "2026-11-24 10:00"),
        "lab_id": "LAB-1",
        "task_id": "T-1",
        "sample_id": "T-1-A",
        "item": "sulfur",
        "value": "8.30",  # exactly as measured
        "unit": "mg/kg",
        "method": None,
        "measured_at": "2026-11-24T10:00:00+08:00",
        "amends": None,
        "reason": None,
    }


def test_bom_blank_lines_crlf_and_quoted_newlines_keep_line_numbers() -> None:
    text = (
        "\ufeff" + HEADER + "\r\n"
        "\r\n"
        + line(value="1")
        + "\r\n"
        + "   \r\n"
        + 'T-1,T-1-A,benzene,"0.5\n",% v/v,2026-11-24 10:00\r\n'
        + line(value="oops")
        + "\r\n"
    )
    rows = read(text)
    assert [r.line for r in rows] == [3, 5, 7]
    assert rows[1].ok and rows[1].body["value"] == "0.5"
    assert rows[2].error == "'oops' is not a decimal number" and rows[2].field == "value"


def test_columns_and_items_by_the_mapping() -> None:
    mapping = parse_mapping(
        """
        [columns]
        task_id = "Task No"
        sample_id = "Sample No"
        item = "Test Item"
        value = "Result"
        measured_at = "Tested At"
        result_id = "LIMS ID"
        [items]
        "Sulphur content" = "sulfur"
        """
    )
    rows = csv_rows(
        "L-77,T-1,T-1-A,Sulphur content,8.3,2026-11-24 10:00,ignored",
        "L-78,T-1,T-1-A,SULPHUR CONTENT,8.4,2026-11-24 11:00,",
        ",T-1,T-1-A,sulfur,8.5,2026-11-24 12:00,",
        header="LIMS ID,Task No,Sample No,Test Item,Result,Tested At,Remarks",
        mapping=mapping,
    )
    assert [r.error for r in rows] == [None, None, None]
    assert [r.body["item"] for r in rows] == ["sulfur"] * 3
    assert rows[0].body["result_id"] == "L-77" and rows[1].body["result_id"] == "L-78"
    assert rows[2].body["result_id"].startswith("LAB-1-")  # a blank id cell: derived
    assert all(r.body["unit"] == "mg/kg" for r in rows)  # no unit column: the item's unit


def test_a_missing_or_doubled_column_is_an_error_of_the_file() -> None:
    with pytest.raises(ExportError) as missing:
        csv_rows(line(), header="task_id,sample_id,item,unit,measured_at")
    assert missing.value.line == 1 and missing.value.field == "value"
    assert "no column 'value'" in str(missing.value) and "[columns]" in str(missing.value)
    with pytest.raises(ExportError, match="appears 2 times"):
        csv_rows(line(), header=HEADER + ",value")
    named = parse_mapping('[columns]\nmethod = "Method"\n')
    with pytest.raises(ExportError, match="no column 'Method'"):  # named in the mapping: needed
        csv_rows(line(), mapping=named)
    assert csv_rows(line())[0].body["method"] is None  # its default name may be absent


def test_semicolons_and_other_encodings() -> None:
    mapping = parse_mapping('encoding = "gb18030"\ndelimiter = ";"\n[items]\n"硫含量" = "sulfur"\n')
    text = HEADER.replace(",", ";") + "\nT-1;T-1-A;硫含量;8.3;mg/kg;2026-11-24 10:00\n"
    (row,) = ExportReader("LAB-1", mapping).read(text.encode("gb18030"), "x.csv")
    assert row.ok and row.body["item"] == "sulfur"
    with pytest.raises(ExportError, match="not utf-8-sig text") as wrong:
        ExportReader("LAB-1").read(text.encode("gb18030"), "x.csv")
    assert wrong.value.line == 2


def test_extra_cells_and_empty_cells_are_row_errors() -> None:
    rows = csv_rows(line() + ",surplus", "T-1,,sulfur,8.3,mg/kg,2026-11-24 10:00", "T-1,T-1-A,sulfur")
    assert rows[0].error == "7 cells, the header has 6"
    assert (rows[1].error, rows[1].field) == ("sample_id is empty (column 'sample_id')", "sample_id")
    assert rows[2].field == "value"


# --- JSON lines --------------------------------------------------------------------------------


def jsonl(*objects: dict[str, Any] | str, **kw: Any) -> list[Row]:
    text = "\n".join(o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in objects)
    return read(text + "\n", name="x.jsonl", **kw)


GOOD = {
    "task_id": "T-1",
    "sample_id": "T-1-A",
    "item": "sulfur",
    "value": "8.3",
    "unit": "mg/kg",
    "measured_at": "2026-11-24T10:00:00+08:00",
}


def test_jsonl_numbers_keep_their_digits() -> None:
    rows = jsonl(
        '{"task_id": "T-1", "sample_id": "T-1-A", "item": "sulfur", "value": 8.30, '
        '"unit": "mg/kg", "measured_at": "2026-11-24T10:00:00+08:00"}',
        {**GOOD, "value": 9},
    )
    assert [r.body["value"] for r in rows] == ["8.30", "9"]


def test_jsonl_unit_key_named_in_the_mapping_is_required() -> None:
    no_unit = {k: v for k, v in GOOD.items() if k != "unit"}
    assert jsonl(no_unit)[0].body["unit"] == "mg/kg"  # no unit anywhere: the item's unit
    (row,) = jsonl(no_unit, mapping=parse_mapping('[columns]\nunit = "unit"\n'))
    assert row.error == "no unit given; sulfur is reported in mg/kg"


def test_jsonl_row_errors_have_line_numbers() -> None:
    rows = jsonl(
        GOOD,
        "",
        "{not json",
        "[1, 2]",
        {k: v for k, v in GOOD.items() if k != "task_id"},
        {**GOOD, "value": True},
        {**GOOD, "value": "NaN"},
        {**GOOD, "TASK_ID": "T-2", "task_id": None},
    )
    assert [r.line for r in rows] == [1, 3, 4, 5, 6, 7, 8]
    assert rows[0].ok
    assert rows[1].error is not None and rows[1].error.startswith("not valid JSON")
    assert rows[2].error == "not a JSON object"
    assert rows[3].error == "no 'task_id' key (task_id)"
    assert rows[4].error == "'value' must be text or a number, not true"
    assert rows[5].error == "'NaN' is not a finite number"
    assert rows[6].field == "task_id"  # the exact key wins over a case variant, and it is null


# --- units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "target", "expected"),
    [
        ("0.00083", "% (m/m)", "mg/kg", "8.3"),
        ("0.00083", "%m/m", "mg/kg", "8.3"),
        ("8.30", "mg/kg", "% m/m", "0.000830"),
        ("0.0010", "% M/M", "mg/kg", "10"),
        ("12", "g/L", "mg/L", "12000"),
        ("3.5", "mg/L", "g/L", "0.0035"),
        ("63.5", "kPa", "Pa", "63500"),
        ("63500", "Pa", "kPa", "63.500"),
        ("0.7452", "g/cm3", "kg/m³", "745.2"),
        ("0.7452", "g/mL", "kg/m³", "745.2"),
        ("0.460", "mm", "µm", "460"),
        ("0.00741", "Ω/m", "Ω/km", "7.41"),
        ("-1.50", "kPa", "Pa", "-1500"),
        ("1E-7", "% m/m", "mg/kg", "0.001"),
        ("8.30", "MG/KG", "mg/kg", "8.30"),  # the same unit: the text is kept as it is
        ("-5", "℃", "°C", "-5"),
        ("460", "μm", "µm", "460"),  # Greek mu and micro sign
    ],
)
def test_conversions_are_exact(value: str, unit: str, target: str, expected: str) -> None:
    assert convert(value, unit, target) == expected


def test_no_conversion_between_unrelated_units() -> None:
    assert convert("8.3", "% v/v", "mg/kg") is None
    assert convert("8.3", "°F", "°C") is None
    assert convert("5", "%", "% m/m") is None  # a plain % is not taken for a mass fraction
    with pytest.raises(ValueError, match="not a decimal number"):
        convert("eight", "% m/m", "mg/kg")


def test_scale_invents_no_digits() -> None:
    assert scale(Decimal("0.00083"), 4) == "8.3"
    assert scale(Decimal("8.3"), -4) == "0.00083"
    assert scale(Decimal("1.234567890123456789012345678901"), 3) == "1234.567890123456789012345678901"


def test_unit_problems_are_row_errors() -> None:
    rows = csv_rows(
        line(unit="% v/v"),
        line(unit=""),
        line(item="ron", value="92.1", unit="RON"),
        line(item="ron", value="92.1", unit="-"),
        line(value="0.00083", unit="% (m/m)"),
    )
    assert rows[0].field == "unit" and "'% v/v' cannot be converted" in (rows[0].error or "")
    assert rows[1].error == "no unit given; sulfur is reported in mg/kg"
    assert rows[2].error == "ron has no unit, the row gives 'RON'"
    assert rows[3].ok and rows[3].body["unit"] is None
    assert rows[4].ok and (rows[4].body["value"], rows[4].body["unit"]) == ("8.3", "mg/kg")


def test_unit_aliases_and_target_units_from_the_mapping() -> None:
    mapping = parse_mapping('[units]\n"ppm" = "mg/kg"\n"RON" = ""\n[target_units]\nsulfur = "% m/m"\n')
    rows = csv_rows(line(value="8.3", unit="PPM"), line(item="ron", value="92", unit="RON"), mapping=mapping)
    assert (rows[0].body["value"], rows[0].body["unit"]) == ("0.00083", "% m/m")
    assert rows[1].ok and rows[1].body["unit"] is None


# --- ids ---------------------------------------------------------------------------------------


def test_derived_ids_are_deterministic() -> None:
    first = csv_rows(line(value="8.3"))[0].body["result_id"]
    assert csv_rows(line(value="8.3"))[0].body["result_id"] == first
    assert csv_rows(line(value="8.3"), lab="LAB-1")[0].body["result_id"] == first
    assert first.startswith("LAB-1-") and len(first) == len("LAB-1-") + 20
    assert csv_rows(line(at="2026-11-24 10:01"))[0].body["result_id"] != first
    assert csv_rows(line(item="benzene", unit="% v/v"))[0].body["result_id"] != first
    assert csv_rows(line(), lab="LAB-2")[0].body["result_id"].startswith("LAB-2-")
    assert derive_result_id("L", "T", "S", "sulfur", "t", "L-1") != derive_result_id(
        "L", "T", "S", "sulfur", "t"
    )


def test_rows_with_one_id_but_other_content_are_refused() -> None:
    rows = csv_rows(line(value="8.3"), line(value="8.3"), line(value="9.1"))
    assert rows[0].ok and rows[1].ok  # the same row twice: the platform answers "duplicate"
    assert rows[2].field == "result_id" and "as line 2" in (rows[2].error or "")
    given = csv_rows(
        "R-1," + line(value="8.3"),
        "R-1," + line(value="9.1", at="2026-11-24 11:00"),
        header="result_id," + HEADER,
    )
    assert given[1].error == "result_id R-1 is also on line 2 with other content"


def test_a_correction_gets_its_own_id() -> None:
    rows = csv_rows(
        line(value="8.3") + ",,",
        line(value="7.9") + ",LAB-1-aaaa,typing error",
        header=HEADER + ",amends,reason",
    )
    assert [r.error for r in rows] == [None, None]
    assert rows[1].body["amends"] == "LAB-1-aaaa" and rows[1].body["reason"] == "typing error"
    assert rows[0].body["result_id"] != rows[1].body["result_id"]
    (bad,) = csv_rows(line(value="7.9") + ",LAB-1-aaaa,", header=HEADER + ",amends,reason")
    assert bad.error is not None and "must give a reason" in bad.error


# --- times -------------------------------------------------------------------------------------


def test_naive_times_get_the_zone() -> None:
    assert parse_time("2026-11-24 10:00", SHANGHAI) == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    assert parse_time("2026/11/24 10:00:30", SHANGHAI).isoformat() == "2026-11-24T10:00:30+08:00"
    assert parse_time("2026-11-24", SHANGHAI).isoformat() == "2026-11-24T00:00:00+08:00"
    assert parse_time("2026-11-24T10:00:00Z", SHANGHAI) == datetime(2026, 11, 24, 10, tzinfo=UTC)
    berlin = parse_mapping('timezone = "Europe/Berlin"')
    (row,) = csv_rows(line(at="2026-07-01 10:00"), mapping=berlin)
    assert row.body["measured_at"] == "2026-07-01T10:00:00+02:00"
    (aware,) = csv_rows(line(at="2026-07-01T10:00:00-05:00"), mapping=berlin)
    assert aware.body["measured_at"] == "2026-07-01T10:00:00-05:00"


def test_time_formats_from_the_mapping() -> None:
    mapping = parse_mapping('time_formats = ["%d.%m.%Y %H:%M"]')
    (row,) = csv_rows(line(at="24.11.2026 10:00"), mapping=mapping)
    assert row.body["measured_at"] == "2026-11-24T10:00:00+08:00"
    (bad,) = csv_rows(line(at="2026/11/24 10:00"), mapping=mapping)  # the defaults are replaced
    assert bad.field == "measured_at" and "time_formats" in (bad.error or "")


# --- refused rows ------------------------------------------------------------------------------


def test_refused_rows_are_marked_so_the_platform_dead_letters_them() -> None:
    rows = csv_rows(
        line(value="abc"),
        line(item="Sulphur"),
        line(at="yesterday"),
        line(unit="% v/v"),
        "T 1,T-1-A,sulfur,8.3,mg/kg,2026-11-24 10:00",
    )
    assert [(r.line, r.field) for r in rows] == [
        (2, "value"),
        (3, "item"),
        (4, "measured_at"),
        (5, "unit"),
        (6, "task_id"),
    ]
    assert "unknown item 'Sulphur'" in (rows[1].error or "") and "[items]" in (rows[1].error or "")
    assert "String should match pattern" in (rows[4].error or "")  # the schema's own check
    for row in rows:
        fault = {"file": "x.csv", "line": row.line, "field": row.field, "reason": row.error}
        assert row.body[IMPORT_ERROR] == fault
        assert import_refusal(row.body) == (f"x.csv:{row.line}: {row.error} ({row.field})", row.field)
        assert row.body["lab_id"] == "LAB-1"
        with pytest.raises(ValidationError):  # the platform refuses it whatever else it holds
            LabResult.model_validate(row.body)
    assert rows[3].body["value"] == "8.3" and rows[3].body["unit"] == "% v/v"  # as found, unconverted


def test_the_fault_of_a_refused_row_is_read_back_whatever_the_mark() -> None:
    (row,) = csv_rows(line(value="abc"))
    assert import_refusal(row.body) == ("x.csv:2: 'abc' is not a decimal number (value)", "value")
    (jsonl,) = read("[1, 2]\n", name="y.jsonl")
    assert import_refusal(jsonl.body) == ("y.jsonl:1: not a JSON object", None)
    assert import_refusal({IMPORT_ERROR: "x.csv:3: bad (value)"}) == ("x.csv:3: bad (value)", None)
    assert import_refusal({IMPORT_ERROR: {"reason": "x" * 5000, "line": "4"}}) == (
        ("?:?: " + "x" * 5000)[:MAX_REASON],
        None,
    )
    for unmarked in ({"value": "abc"}, {IMPORT_ERROR: {"line": 2}}, {IMPORT_ERROR: ""}, [IMPORT_ERROR], None):
        assert import_refusal(unmarked) is None


def test_a_file_of_another_kind_is_refused() -> None:
    with pytest.raises(ExportError, match="not a .csv"):
        read("a,b\n", name="x.txt")


# --- mapping files -----------------------------------------------------------------------------


def test_mapping_errors_name_the_culprit() -> None:
    with pytest.raises(MappingError, match="colums"):
        parse_mapping('[colums]\nitem = "x"\n')
    with pytest.raises(MappingError, match="unknown time zone"):
        parse_mapping('timezone = "Asia/Peking"\n')
    with pytest.raises(MappingError, match="unknown encoding"):
        parse_mapping('encoding = "klingon"\n')
    with pytest.raises(MappingError, match="not valid TOML"):
        parse_mapping("[items\n")
    with pytest.raises(MappingError, match="'sulphur', which is not an item code.*nearest: sulfur"):
        ExportReader("LAB-1", parse_mapping('[items]\n"S" = "sulphur"\n'))
    with pytest.raises(MappingError, match="target_units"):
        ExportReader("LAB-1", parse_mapping('[target_units]\nsulphur = "mg/kg"\n'))


def test_json_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"columns": {"item": "Analyte"}, "items": {"S": "sulfur"}}))
    mapping = load_mapping(path)
    assert mapping.columns.name("item") == "Analyte" and mapping.items == {"S": "sulfur"}
    assert load_mapping(EXAMPLES / "mapping.toml").timezone == "Asia/Shanghai"


# --- the command, without a platform (--dry-run) ------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    imports.register(app)
    return app


def test_dry_run_prints_what_would_be_sent(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        cli(),
        [
            "import",
            "results",
            str(EXAMPLES / "results.csv"),
            "--lab",
            "LAB-1",
            "--dry-run",
            "--mapping",
            str(EXAMPLES / "mapping.toml"),
        ],
    )
    assert done.exit_code == 0, done.output
    sent = [json.loads(text) for text in done.stdout.splitlines()]
    assert [s["value"] for s in sent] == ["92.6", "8.3", "0.62"]
    assert "3 rows: 3 ready to send, 0 rejected" in done.stderr


def test_dry_run_reports_row_errors_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, line(), "", line(value="x"), line(item="Sulphur")]) + "\n")
    done = CliRunner().invoke(cli(), ["import", "results", str(bad), "--lab", "LAB-1", "--dry-run"])
    assert done.exit_code == 2, done.output
    assert f"{bad}:4: 'x' is not a decimal number (value)" in done.stderr.splitlines()
    assert any(ln.startswith(f"{bad}:5: unknown item 'Sulphur'") for ln in done.stderr.splitlines())
    assert len(done.stdout.splitlines()) == 1


def test_bad_mapping_or_lab_ends_the_command(tmp_path: Path) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text('[items]\n"S" = "sulphur"\n')
    export = tmp_path / "x.csv"
    export.write_text(HEADER + "\n")
    done = CliRunner().invoke(
        cli(), ["import", "results", str(export), "--lab", "LAB-1", "--mapping", str(mapping), "--dry-run"]
    )
    assert done.exit_code == 2 and "not an item code" in done.stderr
    done = CliRunner().invoke(cli(), ["import", "results", str(export), "--lab", "LAB 1", "--dry-run"])
    assert done.exit_code == 2 and "not a lab id" in done.output
