"""LIMS file imports on the real platform: `spotcheck import results` and `spotcheck watch`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from typer.testing import CliRunner, Result

from adapters.embedded import free_port
from spotcheck.cli import imports
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, create_task, dead_letters, eventually, verdict_of

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lims"
MAPPING = str(EXAMPLES / "mapping.toml")
HEADER = "task_id,sample_id,item,value,unit,measured_at"


def cli() -> typer.Typer:
    app = typer.Typer()
    imports.register(app)
    return app


def env_for(settings: Settings, **extra: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "SPOTCHECK_HTTP_PORT": str(settings.http_port),
        "SPOTCHECK_ADMIN_TOKEN": TOKEN,
        "SPOTCHECK_LAB_KEY": None,
    }
    env.update(extra)
    return env


async def run(settings: Settings, *args: str, **env: str | None) -> Result:
    """The command in a thread: it blocks, and the platform runs in this event loop."""

    def invoke() -> Result:
        return CliRunner().invoke(cli(), list(args), env=env_for(settings, **env))

    return await asyncio.to_thread(invoke)


def example(name: str, task: dict[str, Any], to: Path) -> Path:
    """An example export of examples/lims/ with its task id replaced by `task`'s."""
    placeholder = "T-2026-000001" if name.endswith(".csv") else "T-2026-000002"
    to.write_text((EXAMPLES / name).read_text(encoding="utf-8").replace(placeholder, task["task_id"]))
    return to


async def view_of(http: aiohttp.ClientSession, task_id: str) -> dict[str, Any]:
    async with http.get(f"/api/v1/tasks/{task_id}") as resp:
        view: dict[str, Any] = await resp.json()
        return view


async def complete(http: aiohttp.ClientSession, task_id: str, results: int) -> dict[str, Any] | None:
    """The task once it has its verdict and `results` results stored (what a re-run is checked on)."""
    view = await verdict_of(http, task_id)
    return view if view is not None and len(view["results"]) >= results else None


@pytest.fixture
async def lab1(http: aiohttp.ClientSession) -> str:
    body = {"name": "Jinan petroleum lab", "scope": [{"spec": "GB17930-2016:*"}]}
    async with http.put("/api/v1/labs/LAB-1", json=body) as resp:  # the test's LAB-1, narrowed
        assert resp.status == 200, await resp.text()
    return "LAB-1"


async def test_exports_reach_verdicts_and_a_rerun_changes_nothing(
    settings: Settings, http: aiohttp.ClientSession, lab1: str, tmp_path: Path
) -> None:
    first, second = await create_task(http, lab_id=lab1), await create_task(http, lab_id=lab1)
    csv_file = example("results.csv", first, tmp_path / "results.csv")
    jsonl_file = example("results.jsonl", second, tmp_path / "results.jsonl")
    args = ("import", "results", str(csv_file), str(jsonl_file), "--lab", lab1, "--mapping", MAPPING)

    done = await run(settings, *args)
    assert done.exit_code == 0, done.output
    assert f"{csv_file}: 3 rows: 3 accepted, 0 duplicates, 0 rejected" in done.stderr
    assert "total: 6 rows: 6 accepted, 0 duplicates, 0 rejected" in done.stderr

    qualified = await eventually(lambda: complete(http, first["task_id"], 3))
    assert qualified["verdict"]["outcome"] == "qualified"
    sulfur = next(r for r in qualified["results"] if r["item"] == "sulfur")
    assert (sulfur["value"], sulfur["unit"]) == ("8.3", "mg/kg")  # 0.00083 % (m/m) in the export
    assert sulfur["measured_at"] == "2026-11-24T10:00:00+08:00"  # no offset in the export
    unqualified = await eventually(lambda: complete(http, second["task_id"], 3))
    assert unqualified["verdict"]["outcome"] == "unqualified"  # 12.0 ppm sulfur is over 10 mg/kg
    judged = {j["item"]: j for j in unqualified["verdict"]["items"]}
    assert judged["sulfur"]["value"] == "12.0" and judged["sulfur"]["judgement"] == "fail"

    again = await run(settings, *args)
    assert again.exit_code == 0, again.output
    assert "total: 6 rows: 0 accepted, 6 duplicates, 0 rejected" in again.stderr
    await asyncio.sleep(1.0)
    for task in (first, second):
        view = await view_of(http, task["task_id"])
        assert len(view["results"]) == 3
        assert len(view["verdict_history"]) == 1


async def test_bad_rows_are_reported_by_line_and_kept_as_dead_letters(
    settings: Settings, http: aiohttp.ClientSession, lab1: str, tmp_path: Path
) -> None:
    task = await create_task(http, lab_id=lab1)
    t, s = task["task_id"], task["sample_id"]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "\n".join(
            [
                HEADER,
                f"{t},{s},ron,92.4,,2026-11-24 09:00",
                "",
                f"{t},{s},sulfur,abc,mg/kg,2026-11-24 09:10",
                f"{t},{s},Sulphur,8.3,mg/kg,2026-11-24 09:20",
                f"{t},{s},benzene,0.5,mg/kg,2026-11-24 09:30",
                "T-2020-999999,T-2020-999999-A,sulfur,8.3,mg/kg,2026-11-24 09:40",
                f"{t},{s},sulfur,8.3,mg/kg,2026-11-24 09:50",
            ]
        )
        + "\n"
    )
    done = await run(settings, "import", "results", str(bad), "--lab", lab1)
    assert done.exit_code == 2, done.output
    lines = done.stderr.splitlines()
    assert f"{bad}: 6 rows: 2 accepted, 0 duplicates, 4 rejected" in lines
    assert f"{bad}:4: 'abc' is not a decimal number (value)" in lines
    assert any(ln.startswith(f"{bad}:5: unknown item 'Sulphur'") and ln.endswith("(item)") for ln in lines)
    assert any(ln.startswith(f"{bad}:6: benzene is reported in % v/v") for ln in lines)
    assert f"{bad}:7: unknown task T-2020-999999 (task_id)" in lines  # refused by the platform

    letters = await eventually(lambda: _letters_about(http, "bad.csv", 4))
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons[0] == "bad.csv:4: 'abc' is not a decimal number (value)"  # the row's own fault
    assert reasons[1].startswith("bad.csv:5: unknown item 'Sulphur'") and reasons[1].endswith("(item)")
    assert reasons[2].startswith("bad.csv:6: benzene is reported in % v/v") and reasons[2].endswith("(unit)")
    assert reasons[3] == "unknown task T-2020-999999"  # refused by the platform
    kept = json.loads(next(letter["payload"] for letter in letters if "bad.csv:4" in letter["reason"]))
    assert {k: kept[k] for k in ("task_id", "sample_id", "item", "value", "unit", "measured_at")} == {
        "task_id": t,
        "sample_id": s,
        "item": "sulfur",
        "value": "abc",
        "unit": "mg/kg",
        "measured_at": "2026-11-24 09:10",
    }  # what was in the row, as found

    async def stored() -> bool:  # "duplicate" is answered for results the platform has stored
        return len((await view_of(http, t))["results"]) == 2

    await eventually(stored)
    again = await run(settings, "import", "results", str(bad), "--lab", lab1)
    assert again.exit_code == 2, again.output
    assert f"{bad}: 6 rows: 0 accepted, 2 duplicates, 4 rejected" in again.stderr.splitlines()
    await asyncio.sleep(2.0)
    assert len(await _letters_about(http, "bad.csv", 0) or []) == 4  # the same letters, kept once


async def _letters_about(
    http: aiohttp.ClientSession, name: str, at_least: int
) -> list[dict[str, Any]] | None:
    letters = [
        letter
        for letter in await dead_letters(http)
        if name in letter["payload"] or "T-2020-999999" in letter["payload"]
    ]
    return letters if len(letters) >= at_least and letters else None


async def test_watch_once_moves_files_to_done_and_failed(
    settings: Settings, http: aiohttp.ClientSession, lab1: str, tmp_path: Path
) -> None:
    first, second = await create_task(http, lab_id=lab1), await create_task(http, lab_id=lab1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    example("results.csv", first, inbox / "good.csv")
    bad = example("results.jsonl", second, inbox / "bad.jsonl")
    rows = bad.read_text().splitlines()
    rows[1] = rows[1].replace('"12.0"', '"< 0.5"')
    bad.write_text("\n".join(rows) + "\n")
    (inbox / "notes.txt").write_text("not an export")

    watch = ("watch", str(inbox), "--lab", lab1, "--mapping", MAPPING, "--once", "--settle", "0.4")
    done = await run(settings, *watch)
    assert done.exit_code == 2, done.output
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "failed", "notes.txt"]
    assert [p.name for p in (inbox / "done").iterdir()] == ["good.csv"]
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["bad.jsonl", "bad.jsonl.reason.txt"]
    reason = (inbox / "failed" / "bad.jsonl.reason.txt").read_text().splitlines()
    assert reason == [
        "bad.jsonl: 3 rows: 2 accepted, 0 duplicates, 1 rejected",
        "bad.jsonl:2: '< 0.5' is not a decimal number (value)",
    ]
    view = await eventually(lambda: complete(http, first["task_id"], 3))
    assert view["verdict"]["outcome"] == "qualified"

    # the LIMS drops the same file again: all duplicates, and it does not overwrite the first
    example("results.csv", first, inbox / "good.csv")
    again = await run(settings, *watch)
    assert again.exit_code == 0, again.output
    assert "good.csv: 3 rows: 0 accepted, 3 duplicates, 0 rejected" in again.stderr
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["good.1.csv", "good.csv"]


async def test_lab_keys(settings: Settings, http: aiohttp.ClientSession, lab1: str, tmp_path: Path) -> None:
    task = await create_task(http, lab_id=lab1)
    export = example("results.csv", task, tmp_path / "results.csv")
    async with http.post(f"/api/v1/labs/{lab1}/keys") as resp:
        key = (await resp.json())["key"]
    args = ("import", "results", str(export), "--mapping", MAPPING)

    done = await run(settings, *args, "--lab", lab1, SPOTCHECK_LAB_KEY=key, SPOTCHECK_ADMIN_TOKEN=None)
    assert done.exit_code == 0, done.output
    assert "3 rows: 3 accepted, 0 duplicates, 0 rejected" in done.stderr

    other = await run(settings, *args, "--lab", "LAB-2", "--key", key)
    assert other.exit_code == 2, other.output
    assert any(
        ln.startswith(f"{export}:2: this key belongs to lab LAB-1") for ln in other.stderr.splitlines()
    )

    refused = await run(settings, *args, "--lab", lab1, SPOTCHECK_LAB_KEY="sclab_00000000_nope")
    assert refused.exit_code == 2, refused.output
    assert "401: token not accepted" in refused.stderr


async def test_an_unreachable_api_exits_1_and_leaves_the_inbox_alone(tmp_path: Path) -> None:
    nobody = Settings(http_port=free_port())
    export = tmp_path / "inbox" / "results.csv"
    export.parent.mkdir()
    export.write_text(HEADER + "\nT-1,T-1-A,sulfur,8.3,mg/kg,2026-11-24 10:00\n")

    done = await run(nobody, "import", "results", str(export), "--lab", "LAB-1")
    assert done.exit_code == 1, done.output
    assert f"cannot reach the API at http://127.0.0.1:{nobody.http_port}" in done.stderr

    watched = await run(nobody, "watch", str(export.parent), "--lab", "LAB-1", "--once", "--settle", "0.2")
    assert watched.exit_code == 1, watched.output
    assert "stays in the inbox" in watched.stderr
    assert [p.name for p in export.parent.iterdir()] == ["results.csv"]


class TestServerWithSmallBatches:
    @pytest.fixture
    async def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"ingest_max_batch": 2})

    async def test_batches_shrink_to_the_servers_limit(
        self, settings: Settings, http: aiohttp.ClientSession, lab1: str, tmp_path: Path
    ) -> None:
        task = await create_task(http, lab_id=lab1)
        export = example("results.csv", task, tmp_path / "results.csv")
        done = await run(settings, "import", "results", str(export), "--lab", lab1, "--mapping", MAPPING)
        assert done.exit_code == 0, done.output
        assert "3 rows: 3 accepted, 0 duplicates, 0 rejected" in done.stderr
        view = await eventually(lambda: complete(http, task["task_id"], 3))
        assert sorted(r["item"] for r in view["results"]) == ["benzene", "ron", "sulfur"]
