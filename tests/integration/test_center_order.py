"""Push to quality-testing centers, what nothing may lose: a center down longer than many attempts,
a retry budget spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from adapters.centers import CenterStore
from adapters.store import Store
from consumers.centers import CenterPush
from spotcheck.centers import CenterRequest, Filters, delivery_id
from spotcheck.events import DeadLetter
from spotcheck.settings import Settings
from tests.integration.helpers import eventually, read_topic
from tests.integration.test_centers import Got, Receiver, attempts_of, publish, verdict

pytestmark = pytest.mark.integration

SECRET = "center-secret-0123456789"
QUICK = {  # retries in tens of milliseconds; the retry budget is the default unless a test says
    "push_backoff_initial_seconds": 0.02,
    "push_backoff_max_seconds": 0.1,
    "push_timeout_seconds": 0.5,
    "push_poll_seconds": 0.1,
}

StartPush = Callable[..., Awaitable[CenterPush]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def start_push(
    settings: Settings, store: Store, producer: AIOKafkaProducer
) -> AsyncIterator[StartPush]:
    running: list[CenterPush] = []

    async def start(**overrides: Any) -> CenterPush:
        push = CenterPush(
            settings.model_copy(update={**QUICK, **overrides}), store, producer, refresh_seconds=0.2
        )
        await push.start()
        running.append(push)
        await asyncio.wait_for(push.ready.wait(), 30)
        return push

    yield start
    for push in running:
        if push.running:
            await asyncio.wait_for(push.stop(), 30)


async def subscribe(
    store: Store, receiver: Receiver, center_id: str, *, results: bool = True, **filters: Any
) -> None:
    request = CenterRequest(
        center_id=center_id,
        name=f"Center {center_id}",
        url=receiver.url(center_id),
        filters=Filters(**filters),
        include_results=results,
    )
    await CenterStore(store).add(request, SECRET)
    receiver.secrets[center_id] = SECRET


def ids(got: list[Got]) -> list[str]:
    return [g.event_id for g in got]


async def received(receiver: Receiver, center_id: str, n: int) -> list[Got] | None:
    got = receiver.accepted(center_id)
    return got if len(got) >= n else None


async def test_a_center_down_longer_than_many_attempts_gets_everything_once_back(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    """The budget is time: a center that answers 500 to 15 attempts in a row (more than the old
    default of 8) is still owed its deliveries, in order, when it comes back."""
    await subscribe(store, receiver, "QTC-DOWN", results=False)
    push = await start_push()  # the default retry budget, with quick retries
    await eventually(lambda: _knows(push, "QTC-DOWN"), 10)
    receiver.script["QTC-DOWN"] = ["500"] * 15
    first, second = verdict("T-2026-000701"), verdict("T-2026-000701", version=2)
    await publish(lab, settings, first, second)

    got = await eventually(lambda: received(receiver, "QTC-DOWN", 2), 30)
    assert ids(got) == [first.verdict_id, second.verdict_id]
    assert [g.status for g in receiver.got["QTC-DOWN"]] == [500] * 15 + [200, 200]
    records = await read_topic(settings, "deliveries", lambda rs: len(attempts_of(rs, "QTC-DOWN")) >= 17)
    outcomes = [a.outcome for a in attempts_of(records, "QTC-DOWN")]
    assert outcomes == ["retrying"] * 15 + ["delivered"] * 2


async def test_after_the_retry_budget_a_delivery_fails_with_a_dead_letter_and_is_redelivered(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    await subscribe(store, receiver, "QTC-GONE", results=False)
    push = await start_push(push_retry_for_seconds=1.0)
    await eventually(lambda: _knows(push, "QTC-GONE"), 10)
    receiver.default["QTC-GONE"] = "500"
    gone = verdict("T-2026-000801")
    await publish(lab, settings, gone)

    key = delivery_id("QTC-GONE", "verdict", gone.verdict_id)
    records = await read_topic(settings, "dead-letters", lambda rs: any(_letter(r).key == key for r in rs))
    letter = next(_letter(r) for r in records if _letter(r).key == key)
    assert letter.source == "push:QTC-GONE" and "HTTP 500" in letter.reason
    attempts = len(receiver.got["QTC-GONE"])
    assert f"after {attempts} attempts in " in letter.reason
    centers = CenterStore(store)
    [view] = await centers.deliveries("QTC-GONE", None)
    assert view["state"] == "failed" and view["attempts"] == attempts >= 2
    detail = await centers.delivery("QTC-GONE", key)
    log = detail["attempt_log"]
    spent = datetime.fromisoformat(log[-1]["attempted_at"]) - datetime.fromisoformat(log[0]["attempted_at"])
    assert spent.total_seconds() >= 1.0  # never less than the budget, whatever the jitter drew

    receiver.default["QTC-GONE"] = "ok"
    assert await centers.redeliver("QTC-GONE", None) == [key]
    await eventually(lambda: received(receiver, "QTC-GONE", 1), 15)


# --- helpers --------------------------------------------------------------------------------------


async def _knows(push: CenterPush, *center_ids: str) -> bool:
    return all(push.knows(c) for c in center_ids)


def _letter(record: Any) -> DeadLetter:
    return DeadLetter.from_json(record.value)
