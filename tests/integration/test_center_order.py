"""Push to quality-testing centers, what nothing may lose and the order a center sees: results that
come before their task is stored, verdicts that come before their results, a long outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from adapters.centers import CenterStore
from adapters.store import Store
from consumers.centers import CenterPush
from consumers.verdicts import VerdictProcessor
from producers.relay import Relay
from spotcheck.centers import CenterRequest, Filters, delivery_id
from spotcheck.events import DeadLetter, SamplingTask
from spotcheck.settings import Settings
from tests.integration.helpers import eventually, read_topic, result, send
from tests.integration.test_centers import DIESEL, GASOLINE, Got, Receiver, attempts_of, publish, verdict

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
    relay = Relay(settings, store, producer)  # publishes the dead letters and attempts they store
    await relay.start()

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
    await relay.stop()


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


def task(task_id: str, spec: str = GASOLINE, items: tuple[str, ...] = ("sulfur", "benzene")) -> SamplingTask:
    return SamplingTask(
        task_id=task_id,
        sample_id=f"{task_id}-A",
        enterprise_id="91370500MA3C000001",
        product="fuel",
        spec=spec,
        items=items,
        lab_id="LAB-1",
        created_at=datetime.now(UTC),
    )


def ids(got: list[Got]) -> list[str]:
    return [g.event_id for g in got]


async def received(receiver: Receiver, center_id: str, n: int) -> list[Got] | None:
    got = receiver.accepted(center_id)
    return got if len(got) >= n else None


async def arrived(receiver: Receiver, center_id: str, n: int, timeout: float) -> list[Got]:
    """What a center accepted once it has `n` pushes, or when `timeout` is up (for the counts)."""
    try:
        return await eventually(lambda: received(receiver, center_id, n), timeout)
    except AssertionError:
        return receiver.accepted(center_id)


def verdicts_before_results(got: list[Got]) -> list[str]:
    """The verdicts a center received before one of the results they list (or without it)."""
    seen: set[str] = set()
    early = []
    for g in got:
        data = g.body["data"]
        if g.body["event"] == "lab-result":
            seen.add(data["result_id"])
        elif not set(data["result_ids"]) <= seen:
            early.append(data["verdict_id"])
    return early


async def test_results_published_before_their_task_is_stored_wait_for_it_across_a_restart(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    await subscribe(store, receiver, "QTC-GAS", specs=("GB17930-2016:",))
    await subscribe(store, receiver, "QTC-FUEL", products=("motor gasoline",))
    await subscribe(store, receiver, "QTC-ALL")  # no filter: takes every result at once
    push = await start_push()
    await eventually(lambda: _knows(push, "QTC-GAS", "QTC-FUEL", "QTC-ALL"), 10)

    gasoline = [task(f"T-2026-0001{n:02d}") for n in range(12)]
    diesel = [task(f"T-2026-0002{n:02d}", spec=DIESEL) for n in range(3)]
    results = {
        t.task_id: [result(t.to_dict(), item, "0.5") for item in ("sulfur", "benzene", "sulfur")]
        for t in gasoline + diesel
    }
    await send(lab, settings, *(r for rs in results.values() for r in rs))
    total = sum(len(rs) for rs in results.values())
    await eventually(lambda: received(receiver, "QTC-ALL", total), 20)  # all consumed by now

    # the worker stops while the results wait: what it kept for them must survive
    await asyncio.wait_for(push.stop(), 30)
    await store.save_tasks(gasoline + diesel)
    await start_push()

    expected = [r["result_id"] for t in gasoline for r in results[t.task_id]]
    for center_id in ("QTC-GAS", "QTC-FUEL"):
        got = await arrived(receiver, center_id, len(expected), 20)
        assert len(got) == len(expected), f"{center_id}: {len(got)} of {len(expected)} results delivered"
        assert sorted(ids(got)) == sorted(expected)  # nothing of diesel, nothing twice
        for t in gasoline:  # each task's results in the order they were published
            assert [i for i in ids(got) if i in _of(results, t)] == _of(results, t)
    assert len(receiver.accepted("QTC-ALL")) == total  # sent once, before the task was known
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM push_pending") == 0


async def test_results_whose_task_never_comes_are_dead_letters_with_the_reason(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    await subscribe(store, receiver, "QTC-GAS", specs=("GB17930-2016:",))
    push = await start_push(result_grace_seconds=1.0)
    await eventually(lambda: _knows(push, "QTC-GAS"), 10)
    lost = task("T-2026-000301")
    orphan = result(lost.to_dict(), "sulfur", "8.1")
    await send(lab, settings, orphan)

    records = await read_topic(
        settings, "dead-letters", lambda rs: any(_letter(r).key == lost.task_id for r in rs)
    )
    letter = next(_letter(r) for r in records if _letter(r).key == lost.task_id)
    assert letter.source == "push"
    assert orphan["result_id"] in letter.reason and lost.task_id in letter.reason
    assert "QTC-GAS" in letter.reason and "within 1s" in letter.reason
    assert orphan["result_id"] in letter.payload
    assert receiver.got["QTC-GAS"] == []
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM push_pending") == 0


async def test_a_verdict_waits_for_the_results_it_lists_and_results_flow_meanwhile(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    await subscribe(store, receiver, "QTC-RAW", specs=("GB17930-2016:",))
    await subscribe(store, receiver, "QTC-VERDICTS", results=False)
    sample = task("T-2026-000401")
    await store.save_tasks([sample])
    push = await start_push()
    await eventually(lambda: _knows(push, "QTC-RAW", "QTC-VERDICTS"), 10)

    sulfur, benzene = result(sample.to_dict(), "sulfur", "8.3"), result(sample.to_dict(), "benzene", "0.5")
    late = result(sample.to_dict(), "sulfur", "8.4")  # a result the verdict does not list
    first = verdict(sample.task_id).model_copy(
        update={"result_ids": (sulfur["result_id"], benzene["result_id"])}
    )
    await publish(lab, settings, first)
    # the verdict is queued for both centers before any of its results is on the topic
    await eventually(lambda: received(receiver, "QTC-VERDICTS", 1), 15)
    await eventually(lambda: _queued(store, "QTC-RAW", 1), 15)
    await send(lab, settings, late, sulfur, benzene)

    got = await eventually(lambda: received(receiver, "QTC-RAW", 4), 15)
    assert ids(got) == [late["result_id"], sulfur["result_id"], benzene["result_id"], first.verdict_id]
    assert verdicts_before_results(got) == []


async def test_a_verdict_waits_no_longer_than_the_grace_period_for_a_result_that_never_comes(
    settings: Settings,
    store: Store,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    await subscribe(store, receiver, "QTC-RAW")
    sample = task("T-2026-000501")
    await store.save_tasks([sample])
    push = await start_push(result_grace_seconds=1.0)
    await eventually(lambda: _knows(push, "QTC-RAW"), 10)
    alone = verdict(sample.task_id).model_copy(update={"result_ids": ("LAB1-never-sent",)})
    await publish(lab, settings, alone)
    got = await eventually(lambda: received(receiver, "QTC-RAW", 1), 15)
    assert ids(got) == [alone.verdict_id]


async def test_with_the_verdict_processor_every_result_arrives_and_before_its_verdict(
    settings: Settings,
    store: Store,
    producer: AIOKafkaProducer,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    """Tasks and results on the topics together, as labs and the scheduler send them: the push
    often sees a result before the verdict processor has stored its task, and a verdict before
    the results it was judged from."""
    await subscribe(store, receiver, "QTC-GAS", specs=("GB17930-2016:",))
    await subscribe(store, receiver, "QTC-FUEL", products=("motor gasoline",))
    processor = VerdictProcessor(settings, store, producer)
    await processor.start()
    try:
        push = await start_push()
        await eventually(lambda: _knows(push, "QTC-GAS", "QTC-FUEL"), 10)
        await asyncio.wait_for(processor.ready.wait(), 30)
        samples = [task(f"T-2026-0006{n:02d}") for n in range(40)]
        tasks_topic = f"{settings.topic_namespace}.tasks"
        sent: list[str] = []
        for sample in samples:
            await lab.send_and_wait(tasks_topic, sample.to_json(), key=sample.task_id.encode())
            results = [result(sample.to_dict(), item, "0.5") for item in sample.items]
            await send(lab, settings, *results)
            sent.extend(r["result_id"] for r in results)

        for center_id in ("QTC-GAS", "QTC-FUEL"):
            got = await arrived(receiver, center_id, len(sent) + len(samples), 30)
            results_in = [g for g in got if g.body["event"] == "lab-result"]
            verdicts_in = [g for g in got if g.body["event"] == "verdict"]
            early = verdicts_before_results(got)
            assert (len(results_in), len(verdicts_in), len(early)) == (len(sent), len(samples), 0), (
                f"{center_id}: {len(results_in)} of {len(sent)} results, {len(verdicts_in)} of "
                f"{len(samples)} verdicts, {len(early)} verdicts before their results"
            )
    finally:
        await processor.stop()


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


async def _queued(store: Store, center_id: str, n: int) -> bool:
    return len(await CenterStore(store).deliveries(center_id, None)) >= n


def _letter(record: Any) -> DeadLetter:
    return DeadLetter.from_json(record.value)


def _of(results: dict[str, list[dict[str, Any]]], t: SamplingTask) -> list[str]:
    return [r["result_id"] for r in results[t.task_id]]
