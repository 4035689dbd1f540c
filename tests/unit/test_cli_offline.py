"""The offline commands: `spotcheck judge` (JSON lines in and out) and `spotcheck specs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from spotcheck.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def line(**fields: Any) -> str:
    base: dict[str, Any] = {
        "spec": "GB/T3956-2008:1:2.5",
        "sampled_at": "2024-07-01",
        "results": [{"item": "conductor_resistance", "value": "7.40"}],
    }
    base.update(fields)
    return json.dumps(base, ensure_ascii=False)


def run_judge(*lines: str, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["judge", *args], input="\n".join(lines) + "\n", env=env)


def verdicts(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(text) for text in stdout.splitlines()]


def test_good_lines() -> None:
    result = run_judge(
        line(),
        line(results=[{"item": "conductor_resistance", "value": "7.42"}]),
        line(spec="GB/T15063-2020:high", results=[{"item": "moisture", "value": "2.05"}]),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    first, second, third = verdicts(result.stdout)
    assert first == {
        "verdict": "qualified",
        "spec": "GB/T3956-2008:1:2.5",
        "items": [
            {
                "item": "conductor_resistance",
                "value": "7.40",
                "unit": "Ω/km",
                "limit": {"min": None, "max": "7.41", "text": "≤ 7.41"},
                "comparison": "whole-value",
                "compared_value": "7.40",
                "judgement": "pass",
            }
        ],
        "missing": [],
    }
    assert second["verdict"] == "unqualified"
    assert third["verdict"] == "incomplete"
    assert third["missing"] == ["total_nutrient", "water_soluble_p", "chloride"]
    assert third["items"][0]["compared_value"] == "2.0"


def test_plan() -> None:
    result = run_judge(line(spec="GB/T15063-2020:low", plan=["chloride"], results=[
        {"item": "chloride", "value": "3.04"}
    ]))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert verdicts(result.stdout)[0]["verdict"] == "qualified"


VAPOUR = {"spec": "GB17930-2016:VIA:92", "plan": ["vapour_pressure"]}


@pytest.mark.parametrize(
    ("sampled_at", "verdict"),
    [
        ("2024-10-31", "unqualified"),  # summer: 40-65
        ("2024-10-31T15:59:59Z", "unqualified"),  # 23:59:59 in Shanghai, still 31 Oct
        ("2024-10-31T16:30:00Z", "qualified"),  # 1 Nov in Shanghai: changeover, 40-85
        ("2024-11-01T00:30:00+08:00", "qualified"),
        ("2024-11-15T12:00:00+08:00", "qualified"),
        ("2024-11-15T16:00:00Z", "qualified"),  # 16 Nov in Shanghai: winter only, 45-85
    ],
)
def test_sampled_at_is_taken_in_the_bureau_zone(sampled_at: str, verdict: str) -> None:
    results = [{"item": "vapour_pressure", "value": "84"}]
    result = run_judge(line(**VAPOUR, sampled_at=sampled_at, results=results))
    assert result.exit_code == 0, result.stderr
    assert verdicts(result.stdout)[0]["verdict"] == verdict


def test_the_zone_comes_from_settings() -> None:
    results = [{"item": "vapour_pressure", "value": "84"}]
    sampled = line(**VAPOUR, sampled_at="2024-10-31T16:30:00Z", results=results)
    result = run_judge(sampled, env={"SPOTCHECK_TIMEZONE": "UTC"})
    assert verdicts(result.stdout)[0]["verdict"] == "unqualified"


def value_line(value: Any) -> str:
    return line(results=[{"item": "conductor_resistance", "value": value}])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "Input should be a valid dictionary"),
        (line(spec="GB/T3956-2008:9:2.5"), "unknown spec 'GB/T3956-2008:9:2.5' (nearest: "),
        (line(results=[{"item": "resistance", "value": "1"}]), "has no item 'resistance'"),
        (line(plan=["ron"]), "has no item 'ron'"),
        (line(plan=[]), "at least one item"),
        (value_line(7.4), "not the JSON float 7.4"),
        (value_line(7), "not the JSON int 7"),
        (value_line(None), "decimal string"),
        (value_line("seven"), "'seven' is not a decimal number"),
        (value_line("NaN"), "'NaN' is not a finite number"),
        (line(sampled_at="2024-07-01T10:00:00"), "has no UTC offset"),
        (line(sampled_at="yesterday"), "'yesterday' is neither a date nor an ISO datetime"),
        (line(sampled_at="2024-02-30"), "neither a date"),
        (line(sampled_at=None), "sampled_at: Input should be a valid string"),
        (json.dumps({"spec": "GB/T3956-2008:1:2.5", "results": []}), "sampled_at: Field required"),
        (line(extra=1), "extra: Extra inputs are not permitted"),
        (line(results=[{"item": "conductor_resistance", "value": "1"}] * 2), "has two results"),
    ],
)
def test_each_bad_line_is_named_and_the_rest_still_judged(bad: str, message: str) -> None:
    result = run_judge(line(), bad, "", line())
    assert result.exit_code == 2
    assert len(verdicts(result.stdout)) == 2
    first, *rest = result.stderr.splitlines()
    assert first.startswith("line 2: ")
    assert message in first
    assert rest == ["1 line(s) could not be judged"]


def test_file_argument_and_dash(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(line() + "\n" + line(spec="nope") + "\n", encoding="utf-8")
    result = runner.invoke(app, ["judge", str(source)])
    assert result.exit_code == 2
    assert len(verdicts(result.stdout)) == 1
    assert "line 2: unknown spec 'nope'" in result.stderr
    result = runner.invoke(app, ["judge", "-"], input=line())
    assert result.exit_code == 0 and len(verdicts(result.stdout)) == 1


def test_missing_file() -> None:
    result = runner.invoke(app, ["judge", "/nonexistent/in.jsonl"])
    assert result.exit_code == 2
    assert "No such file" in result.stderr


def test_empty_input() -> None:
    result = runner.invoke(app, ["judge"], input="")
    assert result.exit_code == 0 and result.stdout == ""


def test_judge_help_documents_the_error_policy() -> None:
    result = runner.invoke(app, ["judge", "--help"], env=WIDE)
    assert result.exit_code == 0
    assert "the exit code is 2 if any line failed" in " ".join(result.stdout.split())


def write_catalog(folder: Path, max_: str = "10") -> Path:
    folder.mkdir()
    data = {
        "standard": "T 1",
        "title": "Test",
        "product": "test product",
        "families": [
            {
                "id": "T-1",
                "items": [
                    {
                        "code": "sulfur",
                        "name": "Sulfur",
                        "unit": "mg/kg",
                        "comparison": "rounded-value",
                        "limit": {"max": max_},
                    }
                ],
            }
        ],
    }
    (folder / "t.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_judge_with_a_catalog_of_its_own(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path / "c")
    sample = line(spec="T-1", results=[{"item": "sulfur", "value": "10.4"}])
    result = run_judge(sample, args=("--catalog", str(folder)))
    assert result.exit_code == 0, result.stderr
    (verdict,) = verdicts(result.stdout)
    assert verdict["verdict"] == "qualified"
    assert verdict["items"][0]["compared_value"] == "10"


def test_a_broken_catalog_stops_before_judging(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path / "c", max_="ten")
    result = run_judge(line(), args=("--catalog", str(folder)))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error: t.json: " in result.stderr and "'ten' is not a decimal number" in result.stderr


def test_specs_lists_the_catalog() -> None:
    result = runner.invoke(app, ["specs"], env=WIDE)
    assert result.exit_code == 0, result.stderr
    rows = [row for row in result.stdout.splitlines() if "GB" in row]
    assert len(rows) == 30
    diesel = next(row for row in rows if "GB19147-2016:VI:-10 " in row)
    assert "motor diesel" in diesel and " 14 " in diesel


def test_specs_show() -> None:
    result = runner.invoke(app, ["specs", "show", "GB17930-2016:VIB:92"], env=WIDE)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for code in ("ron", "olefins", "vapour_pressure", "density_20c"):
        assert code in out
    olefins = next(row for row in out.splitlines() if "olefins" in row)
    assert "≤ 15" in olefins and "whole-value" in olefins and "verify" in olefins
    assert "45–85 sampled 1 Nov–30 Apr" in out


def test_specs_show_rounded_and_catalog_option(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path / "c")
    result = runner.invoke(app, ["specs", "--catalog", str(folder), "show", "T-1"], env=WIDE)
    assert result.exit_code == 0, result.stderr
    assert "rounded-value" in result.stdout and "≤ 10" in result.stdout
    listing = runner.invoke(app, ["specs", "--catalog", str(folder)], env=WIDE)
    assert "T-1" in listing.stdout and "GB19147" not in listing.stdout


def test_specs_show_unknown_id() -> None:
    result = runner.invoke(app, ["specs", "show", "GB19147-2016:VI:10"])
    assert result.exit_code == 2
    assert "unknown spec 'GB19147-2016:VI:10'" in result.stderr
    assert "GB19147-2016:VI:-10" in result.stderr
