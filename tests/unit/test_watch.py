"""When `spotcheck watch` takes a file: settled over several looks, never under a temporary name."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotcheck.cli.imports import SETTLE_LOOKS, Settling, Snapshot, temporary

A, B = Path("inbox/a.csv"), Path("inbox/b.csv")


def test_a_file_is_taken_after_several_unchanged_looks_over_the_settle_time() -> None:
    settling = Settling(settle=2.0)
    assert settling.look({A: (10, 1)}, now=0.0) == []
    assert settling.look({A: (10, 1)}, now=1.0) == []  # one look more is not enough
    assert settling.look({A: (10, 1)}, now=2.0) == [(A, (10, 1))]
    assert SETTLE_LOOKS >= 2


def test_looks_close_together_are_not_enough_nor_a_long_time_between_two_looks() -> None:
    settling = Settling(settle=2.0)
    for now in (0.0, 0.1, 0.2, 0.3):  # many looks, but not over the settle time
        assert settling.look({A: (10, 1)}, now) == []
    assert settling.look({A: (10, 1)}, now=2.0) == [(A, (10, 1))]

    again = Settling(settle=2.0)
    assert again.look({A: (10, 1)}, now=0.0) == []
    assert again.look({A: (10, 1)}, now=60.0) == []  # two looks only, however far apart
    assert again.look({A: (10, 1)}, now=61.0) == [(A, (10, 1))]


def test_a_change_of_size_or_time_starts_the_settling_again() -> None:
    settling = Settling(settle=2.0)
    settling.look({A: (10, 1), B: (5, 1)}, now=0.0)
    settling.look({A: (20, 2), B: (5, 1)}, now=1.0)  # a's writer paused, then wrote on
    assert settling.look({A: (20, 2), B: (5, 2)}, now=2.0) == []  # b touched: same size, new time
    assert settling.look({A: (20, 2), B: (5, 2)}, now=3.0) == [(A, (20, 2))]
    assert settling.look({A: (20, 2), B: (5, 2)}, now=4.0) == [(A, (20, 2)), (B, (5, 2))]


def test_empty_and_vanished_files_are_not_taken_and_taken_ones_settle_again() -> None:
    settling = Settling(settle=1.0)
    for now in (0.0, 0.5, 1.0, 5.0):
        assert settling.look({A: (0, 1)}, now) == []  # its writer has not begun
    assert settling.files == {}
    settling.look({B: (5, 1)}, now=0.0)
    settling.look({}, now=0.5)  # gone (renamed, removed): forgotten
    settling.look({B: (5, 1)}, now=1.0)
    settling.look({B: (5, 1)}, now=1.5)
    assert settling.look({B: (5, 1)}, now=2.0) == [(B, (5, 1))]
    settling.forget(B)  # taken, but left in the inbox (the API was down): it settles again
    assert settling.look({B: (5, 1)}, now=2.5) == []


def test_looks_come_often_enough_while_a_file_settles() -> None:
    settling = Settling(settle=3.0)
    assert settling.pause(interval=10.0) == 10.0  # nothing to settle: the interval
    settling.look({A: (1, 1)}, now=0.0)
    assert settling.pause(interval=10.0) == 3.0 / (SETTLE_LOOKS - 1)
    assert settling.pause(interval=0.5) == 0.5


@pytest.mark.parametrize(
    "name",
    [
        ".results.csv",
        "~$results.csv",
        "results.csv~",
        "#results.csv#",
        "results.csv.tmp",
        "results.tmp.csv",
        "results.csv.part",
        "results.Part.csv",
        "results.csv.partial",
        "results.csv.filepart",
        "results.csv.crdownload",
    ],
)
def test_temporary_names(name: str) -> None:
    assert temporary(name)


@pytest.mark.parametrize("name", ["results.csv", "2026-11-24.jsonl", "part-2.csv", "tmp.csv", "a.parts.csv"])
def test_names_of_exports(name: str) -> None:
    assert not temporary(name)


def test_a_snapshot_tells_any_change_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"header\nrow 1\n")
    data, first = Snapshot.read(path)
    assert data == b"header\nrow 1\n" and first is not None and first.size == len(data)
    assert Snapshot.read(path) == (data, first)
    path.write_bytes(b"header\nrow 2\n")  # the same size
    _, second = Snapshot.read(path)
    assert second is not None and second != first and second.sha256 != first.sha256
