"""The store on a real PostgreSQL: idempotent batches, all-or-nothing commits, pending results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.store import Store
from spotcheck.errors import SpotcheckError
from spotcheck.events import LabResult
from tests.unit.test_samples import make_result, make_task

pytestmark = pytest.mark.integration


async def test_a_batch_written_twice_is_stored_once(store: Store) -> None:
    task = make_task()
    results = [make_result("R1", "ron", "92.4"), make_result("R2", "sulfur", "8.30")]
    for _ in range(2):
        await store.write_batch(tasks=[task], accepted=results, pending=[], verdicts=[])
    samples, pending = await store.load_samples([task.task_id])
    assert pending == {}
    assert [r.result_id for r in samples[task.task_id].results] == ["R1", "R2"]
    assert str(samples[task.task_id].results[1].value) == "8.30"


async def test_a_batch_and_its_messages_commit_together_or_not_at_all(store: Store) -> None:
    unstorable = ("t.verdicts", "T-2026-000042", None)  # the outbox refuses a message without a value
    with pytest.raises(SpotcheckError):
        await store.write_batch(
            tasks=[make_task()],
            accepted=[make_result("R1", "ron", "92.4")],
            pending=[],
            verdicts=[],
            messages=[("t.verdicts", "T-2026-000042", b"{}"), unstorable],  # type: ignore[list-item]
        )
    assert await store.task_view("T-2026-000042") is None
    async with store.transaction() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_pending_results_are_accepted_or_expired_once(store: Store) -> None:
    early = make_result("R1", "ron", "92.4")
    lost = make_result("R9", "ron", "91.0", task_id="T-2026-000099", sample_id="T-2026-000099-A")
    await store.write_batch(tasks=[], accepted=[], pending=[early, lost], verdicts=[])
    _, pending = await store.load_samples(["T-2026-000042", "T-2026-000099"])
    assert {k: [r.result_id for r in v] for k, v in pending.items()} == {
        "T-2026-000042": ["R1"],
        "T-2026-000099": ["R9"],
    }
    # the task of R1 arrives: R1 is accepted, and a re-sent pending copy does not demote it
    await store.write_batch(tasks=[make_task()], accepted=[early], pending=[], verdicts=[])
    await store.write_batch(tasks=[], accepted=[], pending=[early], verdicts=[])

    rejected: list[LabResult] = []

    def reject(results: list[LabResult]) -> list[tuple[str, str, bytes]]:
        rejected.extend(results)
        return [("t.dead-letters", r.task_id, r.to_json()) for r in results]

    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.expire_pending(later, reject) == 1
    assert await store.expire_pending(later, reject) == 0
    assert [r.result_id for r in rejected] == ["R9"]
    async with store.transaction() as conn:  # its dead letter left with it, through the outbox
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = 't.dead-letters'") == 1
    samples, pending = await store.load_samples(["T-2026-000042", "T-2026-000099"])
    assert [r.result_id for r in samples["T-2026-000042"].results] == ["R1"] and pending == {}
