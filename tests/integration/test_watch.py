"""`spotcheck watch` on the real platform: only complete files are taken, only whole imports are done."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.embedded import free_port
from spotcheck.cli import imports
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, create_task, eventually
from tests.integration.test_imports import MAPPING, complete, example, run, view_of

pytestmark = pytest.mark.integration

LAB = "LAB-1"  # accredited for everything by the `store` fixture


@dataclass
class Watcher:
    """`spotcheck watch` running in its own process, and what it has printed so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def line(self, starting: str, timeout: float = 30.0) -> int:
        """The index of the first line printed that starts with `starting` (waiting for it)."""

        async def probe() -> int | None:
            return next((i + 1 for i, ln in enumerate(self.lines) if ln.startswith(starting)), None)

        return await eventually(probe, timeout) - 1


@asynccontextmanager
async def watching(settings: Settings, inbox: Path, *args: str) -> AsyncIterator[Watcher]:
    """`spotcheck watch INBOX --lab LAB-1 ARGS…` against the test's platform, in its own process,
    stopped with SIGTERM at the end."""
    env = {k: v for k, v in os.environ.items() if k != "SPOTCHECK_LAB_KEY"}
    api = f"http://{settings.http_host}:{settings.http_port}"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "spotcheck", "watch", str(inbox), "--api", api, "--token", TOKEN),
        *("--lab", LAB, "--mapping", MAPPING, *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    watcher = Watcher(proc)

    async def collect() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            watcher.lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(collect())
    try:
        await watcher.line("watching ")
        yield watcher
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await reader


async def export_of(http: aiohttp.ClientSession, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A new task and the example CSV export of its three results (header and three rows)."""
    task = await create_task(http, lab_id=LAB)
    return task, example("results.csv", task, tmp_path / "whole.csv").read_text(encoding="utf-8")


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def test_a_file_written_in_place_with_pauses_is_taken_once_complete(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    task, whole = await export_of(http, tmp_path)
    header, *rows = whole.splitlines(keepends=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with watching(settings, inbox, "--interval", "0.2", "--settle", "2.5") as watcher:
        # a LIMS writing its export in place: the first row, a pause longer than a look, the rest
        with (inbox / "results.csv").open("w", encoding="utf-8") as export:
            for part in ([header, rows[0]], [rows[1]], [rows[2]]):
                export.writelines(part)
                export.flush()
                await asyncio.sleep(1.0)
                assert not (inbox / "done").exists(), watcher.lines  # not taken while being written

        done = await watcher.line("done: results.csv")
        assert watcher.lines[done - 1] == "results.csv: 3 rows: 3 accepted, 0 duplicates, 0 rejected"
    assert files_in(inbox) == ["done/results.csv"]
    assert (inbox / "done" / "results.csv").read_text(encoding="utf-8") == whole
    view = await eventually(lambda: complete(http, task["task_id"], 3))
    assert view["verdict"]["outcome"] == "qualified"


async def test_a_file_renamed_into_the_inbox_is_taken_and_temporary_names_never(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    task, whole = await export_of(http, tmp_path)
    header, *rows = whole.splitlines(keepends=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    others = [".results.csv", "~$results.csv", "results.csv~", "results.tmp.csv", "notes.txt"]
    for name in others:
        (inbox / name).write_text(whole, encoding="utf-8")
    async with watching(settings, inbox, "--interval", "0.2", "--settle", "0.5") as watcher:
        # written under a temporary name, with a pause longer than the settle time, then renamed
        part = inbox / "results.csv.part"
        with part.open("w", encoding="utf-8") as export:
            export.writelines([header, rows[0]])
            export.flush()
            await asyncio.sleep(1.5)
            assert not (inbox / "done").exists(), watcher.lines
            export.writelines(rows[1:])
        part.rename(inbox / "results.csv")

        done = await watcher.line("done: results.csv")
        assert watcher.lines[done - 1] == "results.csv: 3 rows: 3 accepted, 0 duplicates, 0 rejected"
        await asyncio.sleep(1.0)  # more looks: the other names are left alone
    assert files_in(inbox) == sorted(["done/results.csv", *others])
    await eventually(lambda: complete(http, task["task_id"], 3))


async def test_watch_once_leaves_a_file_still_being_written_for_the_next_run(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    task, whole = await export_of(http, tmp_path)
    header, *rows = whole.splitlines(keepends=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watch_once = ("watch", str(inbox), "--lab", LAB, "--mapping", MAPPING, "--once", "--settle", "1.5")
    with (inbox / "results.csv").open("w", encoding="utf-8") as export:
        export.writelines([header, rows[0]])
        export.flush()
        running = asyncio.create_task(run(settings, *watch_once))  # e.g. from cron, while it is written
        await asyncio.sleep(0.5)
        export.writelines(rows[1:])
    first = await running
    assert first.exit_code == 0, first.output
    assert "results.csv is still being written: it stays for the next run" in first.stderr
    assert files_in(inbox) == ["results.csv"]

    second = await run(settings, *watch_once)
    assert second.exit_code == 0, second.output
    assert "results.csv: 3 rows: 3 accepted, 0 duplicates, 0 rejected" in second.stderr
    assert files_in(inbox) == ["done/results.csv"]
    await eventually(lambda: complete(http, task["task_id"], 3))


def client(settings: Settings, cls: type[imports.Client] = imports.Client) -> imports.Client:
    return cls(f"http://{settings.http_host}:{settings.http_port}", TOKEN, LAB, batch_size=1)


def take(inbox: Path, name: str, using: imports.Client) -> imports.Taken:
    """Take the file as `watch` does once it is settled (in a thread: it blocks on the API)."""
    path = inbox / name
    reader = imports._setup(LAB, Path(MAPPING))
    return imports._take(inbox, path, imports._look(inbox)[path], reader, using)


def results_stored(http: aiohttp.ClientSession, task_id: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:  # "duplicate" is answered for results the platform has stored
        return len((await view_of(http, task_id))["results"]) == n

    return probe


@dataclass
class WriterMeanwhile(imports.Client):
    """A client during whose sending the LIMS appends a row to the file being imported."""

    append_to: Path | None = None
    row: str = ""

    def send(self, bodies: list[dict[str, Any]], sent: Callable[[int], None]) -> list[dict[str, Any]]:
        assert self.append_to is not None
        with self.append_to.open("a", encoding="utf-8") as export:
            export.write(self.row)
        return super().send(bodies, sent)


async def test_a_file_that_changes_while_imported_stays_for_the_next_look(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task, whole = await export_of(http, tmp_path)
    header, *rows = whole.splitlines(keepends=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    export = inbox / "results.csv"
    export.write_text(header + rows[0] + rows[1], encoding="utf-8")
    meanwhile = client(settings, WriterMeanwhile)
    assert isinstance(meanwhile, WriterMeanwhile)
    meanwhile.append_to, meanwhile.row = export, rows[2]

    assert await asyncio.to_thread(take, inbox, "results.csv", meanwhile) == "left"
    assert "results.csv changed while it was imported: it stays" in capsys.readouterr().err
    assert files_in(inbox) == ["results.csv"]  # not in done/: the third row was never sent
    assert export.read_text(encoding="utf-8") == whole

    await eventually(results_stored(http, task["task_id"], 2))
    assert await asyncio.to_thread(take, inbox, "results.csv", client(settings)) == "done"
    assert "results.csv: 3 rows: 1 accepted, 2 duplicates, 0 rejected" in capsys.readouterr().err
    assert files_in(inbox) == ["done/results.csv"]
    await eventually(lambda: complete(http, task["task_id"], 3))


@dataclass
class LosesTheConnection(imports.Client):
    """A client whose connection to the API is lost after the first batch was answered."""

    def _post(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.answered:
            self.base = f"http://127.0.0.1:{free_port()}"  # nobody listens there
        return super()._post(batch)


async def test_a_file_the_api_takes_in_part_stays_where_it_is(
    settings: Settings,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imports, "RETRY_DELAYS", (0.05,))
    task, whole = await export_of(http, tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "results.csv").write_text(whole, encoding="utf-8")

    with pytest.raises(imports.ApiError, match="cannot reach the API") as lost:
        await asyncio.to_thread(take, inbox, "results.csv", client(settings, LosesTheConnection))
    assert lost.value.retriable  # watch leaves it for the next look
    assert files_in(inbox) == ["results.csv"]
    assert (inbox / "results.csv").read_text(encoding="utf-8") == whole

    await eventually(results_stored(http, task["task_id"], 1))
    capsys.readouterr()
    assert await asyncio.to_thread(take, inbox, "results.csv", client(settings)) == "done"
    assert "results.csv: 3 rows: 2 accepted, 1 duplicates, 0 rejected" in capsys.readouterr().err
    assert files_in(inbox) == ["done/results.csv"]


async def test_a_file_answered_only_in_part_stays_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports, "RETRY_DELAYS", (0.05,))

    async def first_only(request: web.Request) -> web.Response:  # an API that lost the others
        return web.json_response({"outcomes": [{"where": 0, "status": "accepted"}]}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/lab-results", first_only)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        whole = example("results.csv", {"task_id": "T-2026-000009"}, inbox / "results.csv").read_text()
        partial = imports.Client(f"http://127.0.0.1:{port}", TOKEN, LAB)
        with pytest.raises(imports.ApiError, match="answered for 1 of 3 results") as answered:
            await asyncio.to_thread(take, inbox, "results.csv", partial)
        assert answered.value.retriable  # watch leaves it for the next look
        assert files_in(inbox) == ["results.csv"]
        assert (inbox / "results.csv").read_text() == whole
    finally:
        await runner.cleanup()
