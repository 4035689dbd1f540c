"""The verdict processor's cache: closed samples leave after their batch, open ones beyond the bound."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from spotcheck.events import LabResult, SamplingTask
from spotcheck.sample_cache import SampleCache, is_closed
from spotcheck.samples import SampleState

ZONE = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def task(n: int) -> SamplingTask:
    return SamplingTask.model_validate(
        dict(
            task_id=f"T-2026-{n:06d}",
            sample_id=f"T-2026-{n:06d}-A",
            enterprise_id="E-1",
            product="92# gasoline",
            spec="GB17930-2016:VIB:92",
            items=("ron", "sulfur"),
            lab_id="LAB-7",
            created_at=NOW,
        )
    )


def result(n: int, item: str, value: str, **kw: object) -> LabResult:
    fields: dict[str, object] = dict(
        result_id=f"R-{n}-{item}",
        lab_id="LAB-7",
        task_id=f"T-2026-{n:06d}",
        sample_id=f"T-2026-{n:06d}-A",
        item=item,
        value=value,
        measured_at=NOW,
    )
    fields.update(kw)
    return LabResult.model_validate(fields)


def judged(n: int) -> SampleState:
    """A sample with all its results and its first verdict out."""
    state = SampleState(task=task(n))
    state.apply(result(n, "ron", "92.4"))
    state.apply(result(n, "sulfur", "8.3"))
    assert state.next_verdict(ZONE, lambda: NOW) is not None
    return state


def test_a_sample_is_closed_once_its_verdict_is_out_and_open_again_after_a_correction() -> None:
    state = SampleState(task=task(1))
    assert not is_closed(state)  # a task waiting for results
    state.apply(result(1, "ron", "92.4"))
    assert not is_closed(state)  # an item missing
    state.apply(result(1, "sulfur", "8.3"))
    assert not is_closed(state)  # complete, not judged yet
    state.next_verdict(ZONE, lambda: NOW)
    assert is_closed(state)
    state.apply(result(1, "sulfur", "8.1", result_id="R-1-sulfur-c", amends="R-1-sulfur", reason="typo"))
    assert not is_closed(state)  # a correction waits for the next version
    state.next_verdict(ZONE, lambda: NOW)
    assert is_closed(state) and state.version == 2


def test_closed_samples_leave_when_the_batch_is_settled_open_ones_stay() -> None:
    cache = SampleCache(bound=100)
    closed, waiting = judged(1), SampleState(task=task(2))
    cache.remember(closed)
    cache.remember(waiting)
    assert closed.task.task_id in cache  # held while the batch works on it
    assert cache.settle([closed.task.task_id, waiting.task.task_id]) == 1
    assert closed.task.task_id not in cache
    assert cache.get(waiting.task.task_id) is waiting


def test_settling_looks_only_at_the_samples_the_batch_named() -> None:
    cache = SampleCache(bound=100)
    cache.remember(judged(1))
    assert cache.settle([]) == 0 and len(cache) == 1
    assert cache.settle(["T-2026-999999"]) == 0  # a result whose task is not known yet
    assert cache.settle(["T-2026-000001"]) == 1 and len(cache) == 0


def test_open_samples_beyond_the_bound_leave_least_recently_used_first() -> None:
    cache = SampleCache(bound=3)
    for n in range(1, 6):
        cache.remember(SampleState(task=task(n)))
    assert len(cache) == 5  # never during a batch: it may still need every one of them
    assert cache.settle(["T-2026-000001"]) == 2  # 1 was used by the batch: 2 and 3 are the oldest
    assert [n for n in range(1, 6) if f"T-2026-{n:06d}" in cache] == [1, 4, 5]
    cache.remember(SampleState(task=task(6)))
    assert cache.settle([]) == 1  # 4 is now the least recently used (1 was used after it)
    assert [n for n in range(1, 7) if f"T-2026-{n:06d}" in cache] == [1, 5, 6]


def test_memory_stays_flat_however_many_samples_pass() -> None:
    cache = SampleCache(bound=50)
    for n in range(1, 5001):
        cache.remember(judged(n) if n % 10 else SampleState(task=task(n)))  # one in ten stays open
        cache.settle([task(n).task_id])
        assert len(cache) <= 50
    assert len(cache) == 50
    assert all(not is_closed(s) for s in cache._held.values())


def test_the_bound_must_hold_something() -> None:
    with pytest.raises(ValueError):
        SampleCache(bound=0)
