"""The time as the case timers see it: the real clock, or the time written in a file (tests, drills)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from spotcheck.errors import InvalidInput

Clock = Callable[[], datetime]


def real_now() -> datetime:
    return datetime.now(UTC)


def file_clock(path: Path) -> Clock:
    """A clock that answers the ISO time (with offset) held in `path`, read at every call, so a
    drill or a test moves time by rewriting the file. A missing, empty or bad file is an error."""

    def now() -> datetime:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"clock file {path}: {exc}", field="clock_file") from None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(
                f"clock file {path} holds {text[:40]!r}, not an ISO time", field="clock_file"
            ) from None
        if moment.tzinfo is None:
            raise InvalidInput(f"clock file {path}: the time needs a UTC offset", field="clock_file")
        return moment

    return now


def clock_for(clock_file: Path | None) -> Clock:
    """The clock a setting asks for: the file's when one is set, else the real one."""
    return file_clock(clock_file) if clock_file is not None else real_now
