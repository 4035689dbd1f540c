"""`spotcheck import results` and `spotcheck watch`: LIMS export files sent to the platform's ingest API.

Longer than most modules because both commands share the client, the per-file reports and the
moves to done/ and failed/; `watch` adds when a file counts as complete (`Settling`, `Snapshot`)."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from spotcheck.cli.client import ApiOpt, TokenOpt, Unreachable, admin_token, base_url, error_text, request
from spotcheck.events import Ident
from spotcheck.lims import (
    ExportError,
    ExportReader,
    MappingError,
    Row,
    export_format,
    load_mapping,
    row_fault,
)
from spotcheck.settings import Settings

console = Console(stderr=True)

OK, UNREACHABLE, REJECTED = 0, 1, 2
MAX_BATCH = 500  # the platform's default ingest_max_batch; a smaller server limit is found on a 413
ON_BEHALF = "X-Spotcheck-Lab"
RETRY_DELAYS = (0.5, 2.0)  # a POST is safe to repeat: results are idempotent by result_id
SETTLE_SECONDS = 5.0  # `watch --settle`: a file must keep its size and time this long to be taken
SETTLE_LOOKS = 3  # looks, spread over the settle time, that must find a file unchanged (at least 2)
TEMPORARY = frozenset({"tmp", "temp", "part", "partial", "filepart", "crdownload", "download", "swp"})
"""Name parts of files still being written (x.csv.tmp, x.part.csv, …): watch never takes them."""

Stat = tuple[int, int]  # a file's size and modification time (ns)

import_app = typer.Typer(
    help="Import lab results from LIMS export files (CSV, JSON lines).", no_args_is_help=True
)

LabOpt = Annotated[str, typer.Option("--lab", help="the lab whose results the files hold")]
MappingOpt = Annotated[
    Path | None,
    typer.Option(
        "--mapping",
        help="mapping file (TOML, or JSON if it ends in .json): columns, item names, units, time zone",
        exists=True,
        dir_okay=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="SPOTCHECK_LAB_KEY",
        show_envvar=True,
        help="the lab's API key (default: the admin token, submitting for --lab)",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=MAX_BATCH, help="results per request")]


class ApiError(Exception):
    """A request the platform did not answer with outcomes; `exit_code` is the command's."""

    def __init__(self, message: str, exit_code: int, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.retriable = retriable


class _TooLarge(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"413: {detail}", REJECTED)
        found = re.search(r"at most (\d+)", detail)  # the platform names its limit
        self.limit = int(found.group(1)) if found else None


@dataclass
class Client:
    """Posts batches to POST /api/v1/lab-results and returns one outcome per result, in order."""

    base: str
    bearer: str
    lab_id: str
    batch_size: int = MAX_BATCH
    timeout: float = 60.0
    answered: int = 0  # results the platform has answered for so far

    def send(self, bodies: list[dict[str, Any]], sent: Callable[[int], None]) -> list[dict[str, Any]]:
        outcomes: list[dict[str, Any]] = []
        done = 0
        while done < len(bodies):
            batch = bodies[done : done + self.batch_size]
            try:
                outcomes.extend(self._post_retrying(batch))
            except _TooLarge as exc:
                if len(batch) == 1:
                    raise ApiError(
                        "413: the platform refuses even a single result as too large", REJECTED
                    ) from None
                # the server takes fewer: its limit if it says so, else half
                smaller = exc.limit if exc.limit and exc.limit < len(batch) else len(batch) // 2
                self.batch_size = max(1, smaller)
                continue
            done += len(batch)
            self.answered += len(batch)
            sent(len(batch))
        return outcomes

    def _post_retrying(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for delay in (*RETRY_DELAYS, None):
            try:
                return self._post(batch)
            except ApiError as exc:
                if not exc.retriable or delay is None:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            status, answer = request(
                "POST",
                self.base.rstrip("/") + "/api/v1/lab-results",
                {"results": batch},
                self.bearer,
                {ON_BEHALF: self.lab_id},
                timeout=self.timeout,
            )
        except Unreachable as exc:
            raise ApiError(
                f"cannot reach the API at {self.base}: {exc} (is `spotcheck up` running?)",
                UNREACHABLE,
                retriable=True,
            ) from None
        if status == 413:
            raise _TooLarge(error_text(answer))
        if status >= 500:
            raise ApiError(f"{status}: {error_text(answer)}", UNREACHABLE, retriable=True)
        if status >= 400:
            hint = {401: " (check --key / SPOTCHECK_LAB_KEY or the admin token)"}.get(status, "")
            raise ApiError(f"{status}: {error_text(answer)}{hint}", REJECTED)
        if not isinstance(answer, dict) or not isinstance(answer.get("outcomes"), list):
            raise ApiError(f"unexpected answer from the API: {str(answer)[:200]}", UNREACHABLE)
        by_where = {o.get("where"): o for o in answer["outcomes"] if isinstance(o, dict)}
        if any(i not in by_where for i in range(len(batch))):  # taken in part: send it all again
            answered = sum(1 for i in range(len(batch)) if i in by_where)
            raise ApiError(
                f"the API answered for {answered} of {len(batch)} results", UNREACHABLE, retriable=True
            )
        return [by_where[i] for i in range(len(batch))]


@dataclass
class FileReport:
    """What became of one file: counts, and each refused row as (line, reason, field)."""

    label: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    problems: list[tuple[int, str, str | None]] = field(default_factory=list)
    file_error: str | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and self.file_error is None

    def summary(self) -> str:
        if self.file_error is not None:
            return f"{self.label}: not imported"
        head = f"{self.label}: {self.rows} row{'' if self.rows == 1 else 's'}"
        if self.dry_run:
            ready = self.rows - len(self.problems)
            return f"{head}: {ready} ready to send, {len(self.problems)} rejected"
        return (
            f"{head}: {self.accepted} accepted, {self.duplicates} duplicates, {len(self.problems)} rejected"
        )

    def error_lines(self) -> list[str]:
        lines = [row_fault(self.label, line, reason, fld) for line, reason, fld in self.problems]
        return [self.file_error] if self.file_error is not None else lines


@dataclass
class _Parsed:
    path: Path
    report: FileReport
    rows: list[Row] = field(default_factory=list)
    sent: bool = False


def _parse(path: Path, label: str, reader: ExportReader, data: bytes | None = None) -> _Parsed:
    """The rows of the file at `path` (its bytes: `data`, else read now)."""
    parsed = _Parsed(path, FileReport(label))
    try:
        parsed.rows = reader.read(path.read_bytes() if data is None else data, path.name)
    except OSError as exc:
        parsed.report.file_error = f"{label}: cannot read: {exc.strerror}"
    except ExportError as exc:
        where = f" ({exc.field})" if exc.field else ""
        parsed.report.file_error = f"{label}:{exc.line}: {exc}{where}"
    parsed.report.rows = len(parsed.rows)
    return parsed


def _settle(parsed: _Parsed, outcomes: list[dict[str, Any]]) -> FileReport:
    report = parsed.report
    for row, outcome in zip(parsed.rows, outcomes, strict=True):
        status = outcome.get("status")
        if not row.ok:  # refused here; the platform has kept it as a dead letter
            assert row.error is not None
            report.problems.append((row.line, row.error, row.field))
        elif status == "accepted":
            report.accepted += 1
        elif status == "duplicate":
            report.duplicates += 1
        else:
            report.problems.append((row.line, str(outcome.get("reason") or status), outcome.get("field")))
    return report


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _send(client: Client, parsed: list[_Parsed]) -> list[FileReport]:
    """Send the rows of each file; raises ApiError when a request itself fails."""
    todo = [p for p in parsed if p.report.file_error is None and p.rows]
    with _progress() as progress:
        bar = progress.add_task("sending", total=sum(len(p.rows) for p in todo))
        for p in todo:
            progress.update(bar, description=p.report.label)
            outcomes = client.send([r.body for r in p.rows], lambda n: progress.advance(bar, n))
            _settle(p, outcomes)
            p.sent = True
    return [p.report for p in parsed]


def _print(report: FileReport) -> None:
    typer.echo(report.summary(), err=True)
    for line in report.error_lines():
        typer.echo(line, err=True)


def _setup(lab: str, mapping: Path | None) -> ExportReader:
    try:
        TypeAdapter(Ident).validate_python(lab)
    except ValidationError:
        raise typer.BadParameter(f"{lab!r} is not a lab id", param_hint="--lab") from None
    try:
        return ExportReader(lab, load_mapping(mapping) if mapping else None, timezone=Settings().timezone)
    except MappingError as exc:
        console.print(f"[red]mapping: {escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(REJECTED) from None


def _client(lab: str, key: str | None, api: str | None, token: str | None, batch_size: int) -> Client:
    return Client(base_url(api), key or token or admin_token(Settings()), lab, batch_size)


@import_app.command("results")
def import_results(
    files: Annotated[
        list[Path],
        typer.Argument(help="LIMS exports: .csv, .jsonl or .ndjson", exists=True, dir_okay=False),
    ],
    lab: LabOpt,
    mapping: MappingOpt = None,
    key: KeyOpt = None,
    batch_size: BatchOpt = MAX_BATCH,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="read and convert only: print the results as JSON lines, send nothing"
        ),
    ] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send the lab results of LIMS export files to the platform. Safe to run again on the same
    files: rows sent before are answered "duplicate". Rows that cannot be read are reported as
    FILE:LINE: reason (field) and kept by the platform as dead letters. Exit code: 0 every row
    accepted or duplicate, 2 some row rejected, 1 the API could not be reached."""
    reader = _setup(lab, mapping)
    unique = list(dict.fromkeys(f.resolve() for f in files))
    labels = {f.resolve(): str(f) for f in files}
    parsed = [_parse(path, labels[path], reader) for path in unique]
    if dry_run:
        for p in parsed:
            p.report.dry_run = True
            for row in p.rows:
                if row.ok:
                    typer.echo(json.dumps(row.body, ensure_ascii=False))
                else:
                    p.report.problems.append((row.line, row.error or "", row.field))
        reports = [p.report for p in parsed]
    else:
        client = _client(lab, key, api, token, batch_size)
        try:
            reports = _send(client, parsed)
        except ApiError as exc:
            for p in parsed:
                if p.sent or p.report.file_error is not None:
                    _print(p.report)
            console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
            if client.answered:
                console.print(
                    f"{client.answered} rows were sent before; running it again is safe "
                    "(they are answered as duplicates)"
                )
            raise typer.Exit(exc.exit_code) from None
    for report in reports:
        _print(report)
    if len(reports) > 1:
        total = FileReport(
            "total",
            rows=sum(r.rows for r in reports),
            accepted=sum(r.accepted for r in reports),
            duplicates=sum(r.duplicates for r in reports),
            problems=[p for r in reports for p in r.problems],
            dry_run=dry_run,
        )
        typer.echo(total.summary(), err=True)
    raise typer.Exit(OK if all(r.ok for r in reports) else REJECTED)


def temporary(name: str) -> bool:
    """Whether a file name looks like one still being written or not meant to be taken: dot-files,
    editors' backups and locks (`x.csv~`, `~$x.csv`, `#x.csv#`), and names with a part such as
    `.tmp` or `.part` (`x.csv.tmp`, `x.part.csv`)."""
    if name.startswith((".", "~", "#")) or name.endswith(("~", "#")):
        return True
    return any(part.casefold() in TEMPORARY for part in name.split(".")[1:])


def _look(folder: Path) -> dict[Path, Stat]:
    """The export files directly in `folder`, with their size and modification time."""
    found: dict[Path, Stat] = {}
    for path in sorted(folder.iterdir()):
        if temporary(path.name) or export_format(path.name) is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


@dataclass
class _Watched:
    stat: Stat
    since: float  # when it was first seen with this size and time
    looks: int = 1


class Settling:
    """Which files of the inbox are complete: found with the same size and modification time on
    SETTLE_LOOKS looks over at least `settle` seconds. Empty files are not taken (their writer has
    not begun). Pure: the looks and the clock are handed in."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.files: dict[Path, _Watched] = {}

    def look(self, found: dict[Path, Stat], now: float) -> list[tuple[Path, Stat]]:
        """Take in one look at the inbox (`now` on a monotonic clock); the files complete now."""
        ready: list[tuple[Path, Stat]] = []
        for path in self.files.keys() - found.keys():
            del self.files[path]
        for path, stat in found.items():
            seen = self.files.get(path)
            if stat[0] == 0:
                self.files.pop(path, None)
            elif seen is None or seen.stat != stat:
                self.files[path] = _Watched(stat, now)
            else:
                seen.looks += 1
                if seen.looks >= SETTLE_LOOKS and now - seen.since >= self.settle:
                    ready.append((path, stat))
        return ready

    def forget(self, path: Path) -> None:
        """After a file was taken: if it is still there at the next look, it settles again."""
        self.files.pop(path, None)

    def pause(self, interval: float) -> float:
        """Seconds to the next look: `interval`, shorter while a file settles so that its looks
        spread over the settle time."""
        return min(interval, self.settle / (SETTLE_LOOKS - 1)) if self.files else interval


@dataclass(frozen=True)
class Snapshot:
    """A file as read: its size, modification time and the SHA-256 of its bytes."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def read(cls, path: Path) -> tuple[bytes, Snapshot | None]:
        """The file's bytes and their snapshot; None if it changed while being read."""
        before = path.stat()
        data = path.read_bytes()
        after = path.stat()
        unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        if not unchanged or len(data) != after.st_size:
            return data, None
        return data, cls(len(data), after.st_mtime_ns, hashlib.sha256(data).hexdigest())


def _move(path: Path, folder: Path) -> Path:
    """Move `path` into `folder`, never over a file already there (name.1.csv, name.2.csv, …)."""
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    n = 0
    while target.exists() or target.with_name(target.name + ".reason.txt").exists():
        n += 1
        target = folder / f"{path.stem}.{n}{path.suffix}"
    return path.rename(target)


def _file_done(folder: Path, path: Path, report: FileReport) -> bool:
    """Move a processed file to done/ or failed/ (with the reasons); True if it went to done/."""
    _print(report)
    if report.ok:
        moved = _move(path, folder / "done")
        typer.echo(f"done: {path.name} -> {moved.relative_to(folder)}", err=True)
        return True
    moved = _move(path, folder / "failed")
    reason = moved.with_name(moved.name + ".reason.txt")
    reason.write_text("\n".join([report.summary(), *report.error_lines()]) + "\n", encoding="utf-8")
    typer.echo(f"failed: {path.name} -> {moved.relative_to(folder)} (see {reason.name})", err=True)
    return False


Taken = Literal["done", "failed", "left"]


def _take(folder: Path, path: Path, settled: Stat, reader: ExportReader, client: Client) -> Taken:
    """Import one complete file and move it to done/ or failed/; "left" when it is not complete
    after all (it changed since the last look, or while its rows were sent) and stays for the next
    look. Raises ApiError when the API took it in part or not at all: it stays too."""
    try:
        data, snapshot = Snapshot.read(path)
    except FileNotFoundError:
        return "left"  # moved away meanwhile
    except OSError:  # unreadable: failed/, with the reason
        _file_done(folder, path, _parse(path, path.name, reader).report)
        return "failed"
    if snapshot is None or (snapshot.size, snapshot.mtime_ns) != settled:
        return "left"  # still being written: it settles again
    report = _send(client, [_parse(path, path.name, reader, data)])[0]
    try:
        _, after = Snapshot.read(path)
    except OSError:
        after = None
    if after != snapshot:
        _print(report)
        typer.echo(
            f"{path.name} changed while it was imported: it stays for the next look "
            "(the rows sent are answered as duplicates then)",
            err=True,
        )
        return "left"
    return "done" if _file_done(folder, path, report) else "failed"


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM stops the watch like Ctrl-C (main thread only: signals cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def watch(
    folder: Annotated[
        Path, typer.Argument(help="the inbox a LIMS export job drops files in", exists=True, file_okay=False)
    ],
    lab: LabOpt,
    mapping: MappingOpt = None,
    key: KeyOpt = None,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between looks at the folder")] = 5.0,
    settle: Annotated[
        float,
        typer.Option(
            min=0.1,
            help=f"seconds a file must keep its size and time, over {SETTLE_LOOKS} looks, to be taken",
        ),
    ] = SETTLE_SECONDS,
    once: Annotated[
        bool, typer.Option("--once", help="process the files there now (after --settle), then exit")
    ] = False,
    batch_size: BatchOpt = MAX_BATCH,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Import every .csv, .jsonl and .ndjson file dropped in FOLDER once it is complete: its size
    and time unchanged over --settle seconds (names of files being written, such as .x.csv or
    x.csv.tmp, are never taken: write under such a name and rename into FOLDER when complete).
    Then move it to FOLDER/done/ (every row accepted or duplicate) or FOLDER/failed/ with
    FILE.reason.txt. A file that changed while it was imported, or that the API could not take
    whole, stays for the next look. Ctrl-C or SIGTERM stops. With --once, exit code 0 all done
    (files still being written stay for the next run), 2 some file failed, 1 some file could not
    be sent."""
    reader = _setup(lab, mapping)
    client = _client(lab, key, api, token, batch_size)
    folder = folder.resolve()
    unsent = failed = False
    settling = Settling(settle)
    left: set[Path] = set()  # taken, but not complete after all
    typer.echo(f"watching {folder} (a file is taken once unchanged for {settle:g} s)", err=True)
    try:
        with _sigterm_stops():
            start = time.monotonic()
            while True:
                now = time.monotonic()
                for path, stat in settling.look(_look(folder), now):
                    settling.forget(path)
                    try:
                        taken = _take(folder, path, stat, reader, client)
                    except ApiError as exc:
                        console.print(f"[red]{escape(path.name)}: {escape(str(exc))}[/]", highlight=False)
                        if not exc.retriable:
                            raise typer.Exit(exc.exit_code) from None
                        console.print(f"{escape(path.name)} stays in the inbox for the next look")
                        unsent = True
                    except OSError as exc:  # moved or removed by someone else meanwhile
                        console.print(f"[red]{escape(path.name)}: cannot move it: {escape(str(exc))}[/]")
                        failed = True
                    else:
                        failed = failed or taken == "failed"
                        if taken == "left":
                            left.add(path)
                if once and (not settling.files or now - start >= settle):
                    for path in sorted({*settling.files, *(p for p in left if p.exists())}):
                        typer.echo(f"{path.name} is still being written: it stays for the next run", err=True)
                    break
                time.sleep(settling.pause(interval))
    except KeyboardInterrupt:
        console.print("stopped; a file being sent stays in the inbox (sending it again is safe)")
    if not once:
        raise typer.Exit(OK)
    raise typer.Exit(UNREACHABLE if unsent else REJECTED if failed else OK)


def register(app: typer.Typer) -> None:
    """Add `import results` and `watch` to the main app."""
    app.add_typer(import_app, name="import")
    app.command()(watch)
