"""The stream processor's state survives a broker that forgot everything: deadlines, cases and pass
rates built on broker A are rebuilt from PostgreSQL on an empty broker B (the embedded stack after a
restart), every timer fires once, and a restart on an intact broker sends no seeds at all."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from adapters import kafka, outbox
from adapters.embedded import EmbeddedBroker, free_port
from adapters.registry import RegistryStore, publisher
from adapters.runtime import workers
from adapters.store import Store
from spotcheck.custody import CustodyStep, Role, TaskState
from spotcheck.draws import Enterprise, EnterpriseKind, Inspector
from spotcheck.events import Comparison, ItemJudgement, LimitView, Outcome, SamplingTask, Verdict
from spotcheck.settings import Settings
from spotcheck.topics import TASKS
from tests.integration.helpers import (
    TOKEN,
    eventually,
    report_figures,
    result,
    send,
    streams_worker,
    topic_to_end,
    verdict_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

S = TaskState
T = TypeVar("T")
T0 = datetime.now(UTC).replace(microsecond=0)
SPEC = "GB17930-2016:VIB:92"
PRODUCT = "92# motor gasoline"
ITEMS = ("ron", "sulfur", "benzene")
E = {n: f"91370502MA3D{n:06d}" for n in range(1, 9)}
ROLES = ("api", "relay", "verdicts", "sink", "push", "custody")
TABLES = ("deadlines", "cases", "pass-rates")


@pytest.fixture
async def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared test settings with a clock file, quick checks, finished tasks dropped at once and
    JSON logs (the test reads them)."""
    clock = tmp_path / "clock"
    clock.write_text(T0.isoformat())
    quick = {"case_check_seconds": 1.0, "overdue_check_seconds": 1.0, "stream_finished_keep_hours": 0.0}
    return settings.model_copy(update={"clock_file": clock, "log_json": True, **quick})


@pytest.fixture
async def broker_b(tmp_path: Path) -> AsyncIterator[str]:
    """A second broker, empty: the embedded one as it is after `spotcheck up` restarted."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), tmp_path / "broker-b.log")
    await asyncio.to_thread(broker.start)
    yield broker.bootstrap
    await asyncio.to_thread(broker.stop)


def set_clock(settings: Settings, moment: datetime) -> None:
    assert settings.clock_file is not None
    settings.clock_file.write_text(moment.isoformat())


@asynccontextmanager
async def platform_on(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    async with workers(settings, ROLES, TOKEN) as started:
        for worker in started.values():
            if hasattr(worker, "ready"):
                await asyncio.wait_for(worker.ready.wait(), 30)
        async with aiohttp.ClientSession(
            base_url=f"http://{settings.http_host}:{settings.http_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as http:
            yield http


async def directory(store: Store, settings: Settings) -> None:
    enterprises = [
        Enterprise(
            enterprise_id=eid,
            name=f"Enterprise {n}",
            district="Kenli District",
            kind=EnterpriseKind.PRODUCER,
            products=("motor gasoline",),
        )
        for n, eid in E.items()
    ]
    inspectors = [
        Inspector(inspector_id=f"INS-{n}", name=f"Inspector {n}", unit="Kenli AMR", district="Kenli District")
        for n in range(1, 6)
    ]
    registry = RegistryStore(store)
    await registry.upsert("enterprise", enterprises, "test", datetime.now(UTC), publisher(settings))
    await registry.upsert("inspector", inspectors, "test", datetime.now(UTC), publisher(settings))


def task(name: str, enterprise: str = E[8], **kw: Any) -> SamplingTask:
    task_id = f"T-2026-R{name}"
    fields: dict[str, Any] = dict(
        task_id=task_id,
        sample_id=f"{task_id}-A",
        enterprise_id=enterprise,
        product=PRODUCT,
        spec=SPEC,
        items=ITEMS,
        lab_id="LAB-1",
        inspectors=("INS-1", "INS-2"),
        created_at=T0 - timedelta(days=1),
        sampling_due=T0 + timedelta(days=30),
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


async def create(store: Store, settings: Settings, *tasks: SamplingTask) -> None:
    """Tasks as the platform creates them: stored, and queued for the tasks topic in one transaction."""
    async with store.transaction() as conn:
        await store.save_tasks(tasks, conn)
        await outbox.add(conn, [(TASKS.full_name(settings), t.task_id, t.to_json()) for t in tasks])


def step(task_id: str, target: TaskState, at: datetime) -> CustodyStep:
    fields: dict[str, Any] = dict(step_id=f"{task_id}-{target}", task_id=task_id, step=target, at=at)
    if target in (S.SAMPLING, S.SAMPLED, S.IN_TRANSIT, S.REFUSED):
        fields |= dict(actor="INS-1", actor_role=Role.INSPECTOR)
        if target is S.SAMPLED:
            fields |= dict(
                signatures={"inspectors": ["INS-1", "INS-2"], "enterprise": "Wang Li"},
                seals={"test": f"{task_id}-S1", "retained": f"{task_id}-S2"},
            )
        else:
            fields |= dict(reason="the manager refused to let us sample")
    elif target in (S.RECEIVED, S.REPORTED):
        fields |= dict(actor="LU-1", actor_role=Role.LAB, lab_id="LAB-1")
        if target is S.RECEIVED:
            fields |= dict(seal_state="intact", seals={"test": f"{task_id}-S1"})
    else:
        fields |= dict(actor="PL-1", actor_role=Role.PLANNER, reason="the enterprise closed down")
    return CustodyStep.model_validate(fields)


async def custody(producer: AIOKafkaProducer, settings: Settings, *steps: CustodyStep) -> None:
    """Steps straight onto the custody topic (never through the outbox: only PostgreSQL keeps them)."""
    for s in steps:
        await producer.send_and_wait(
            f"{settings.topic_namespace}.custody", s.to_json(), key=s.task_id.encode()
        )


async def results(
    lab: AIOKafkaProducer, settings: Settings, t: SamplingTask, benzene: str, **kw: Any
) -> dict[str, Any]:
    """A full set of results for `t`; benzene above 0.8 fails the sample. Returns the benzene result."""
    body = {"task_id": t.task_id, "sample_id": t.sample_id, "lab_id": t.lab_id}
    last = result(body, "benzene", benzene, **kw)
    await send(lab, settings, result(body, "ron", "92.6"), result(body, "sulfur", "8.3"), last)
    return last


def stored_verdict(t: SamplingTask) -> Verdict:
    """An unqualified verdict as the verdict processor stores it."""
    now = datetime.now(UTC)
    judged = tuple(
        ItemJudgement(
            item=item,
            value=Decimal("1.5"),
            limit=LimitView(max="1", text="≤ 1"),
            comparison=Comparison.WHOLE,
            compared_value=Decimal("1.5"),
            judgement="fail" if item == "benzene" else "pass",
        )
        for item in t.items
    )
    return Verdict(
        verdict_id=f"{t.task_id}/1",
        task_id=t.task_id,
        sample_id=t.sample_id,
        version=1,
        outcome=Outcome.UNQUALIFIED,
        spec=t.spec,
        enterprise_id=t.enterprise_id,
        product=t.product,
        lab_id=t.lab_id,
        items=judged,
        result_ids=(f"R-{t.task_id}",),
        last_result_at=now,
        decided_at=now,
    )


async def case_of(http: aiohttp.ClientSession, case_id: str) -> dict[str, Any] | None:
    async with http.get(f"/api/v1/cases/{case_id}") as resp:
        if resp.status == 404:
            return None
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def in_state(http: aiohttp.ClientSession, case_id: str, state: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        case = await case_of(http, case_id)
        return case if case is not None and case["state"] == state else None

    return await eventually(probe, timeout=120)


def kinds(case: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in case["events"]]


async def rows(store: Store, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with store.transaction() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def settles(fetch: Callable[[], Awaitable[T]], wanted: T, timeout: float = 60.0) -> None:
    """`fetch()` comes to answer `wanted` (else the last answer is in the error)."""
    last: list[T] = []

    async def probe() -> bool:
        last[:] = [await fetch()]
        return last[0] == wanted

    try:
        await eventually(probe, timeout)
    except AssertionError:
        raise AssertionError(f"{last[0] if last else None!r}, not {wanted!r}") from None


async def alerts_stored(store: Store) -> Counter[tuple[str, str]]:
    return Counter((r["task_id"], r["kind"]) for r in await rows(store, "SELECT task_id, kind FROM alerts"))


async def outbox_settled(store: Store, settings: Settings, *topics: str) -> bool:
    """Every row for these topics published and processed by all their readers."""
    names = [f"{settings.topic_namespace}.{t}" for t in topics]
    left = await rows(store, "SELECT seq FROM outbox WHERE topic = ANY($1) AND processed_at IS NULL", names)
    return not left


async def pass_rates_from_verdicts(store: Store) -> dict[str, tuple[int, int]]:
    found = await rows(
        store,
        "SELECT product, count(*) FILTER (WHERE outcome = 'qualified') AS q,"
        " count(*) FILTER (WHERE outcome = 'unqualified') AS u FROM"
        " (SELECT DISTINCT ON (task_id) * FROM verdicts ORDER BY task_id, version DESC) v GROUP BY product",
    )
    return {r["product"]: (r["q"], r["u"]) for r in found}


async def pass_rates_served(store: Store) -> dict[str, tuple[int, int]]:
    return {r["product"]: (r["qualified"], r["unqualified"]) for r in await store.pass_rates()}


@contextmanager
def watching_pass_rates(store: Store, samples: list[dict[str, tuple[int, int]]]) -> Iterator[None]:
    """Samples the pass rates the stream processor publishes, for as long as the block runs."""

    async def poll() -> None:
        while True:
            samples.append(await pass_rates_served(store))
            await asyncio.sleep(0.3)

    poller = asyncio.get_running_loop().create_task(poll())
    try:
        yield
    finally:
        poller.cancel()


def seeded(log: Path) -> list[dict[str, Any]]:
    """The "stream state seeded" lines of a worker's JSON log, one per table and recovery."""
    found = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "stream state seeded":
            found.append(entry)
    return found


async def all_seeded(log: Path) -> list[dict[str, Any]] | None:
    lines = seeded(log)
    return lines if {x["table"] for x in lines} >= set(TABLES) else None


async def changelog_keys(settings: Settings, table: str) -> int:
    """How many keys a table of the stream processor holds, read from its changelog topic."""
    topic = f"{settings.streams_app_id}-{table}-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        live: dict[bytes | None, bool] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    live[r.key] = r.value is not None
        return sum(live.values())
    finally:
        await consumer.stop()


async def test_deadlines_cases_and_pass_rates_survive_a_broker_that_forgot_everything(
    settings: Settings,
    store: Store,
    producer: AIOKafkaProducer,
    lab: AIOKafkaProducer,
    broker_b: str,
    tmp_path: Path,
) -> None:
    await directory(store, settings)
    # deadlines: D1 overdue already; D2 and D3 fall due while nothing runs; D4 ends, D5 is reported
    d = {
        1: task("D1", sampling_due=T0 - timedelta(days=1)),
        2: task("D2", sampling_due=T0 + timedelta(days=20)),
        3: task("D3", sampling_due=T0 + timedelta(days=20), report_due=T0 + timedelta(days=20)),
        4: task("D4", sampling_due=T0 + timedelta(days=20)),
        5: task("D5", sampling_due=T0 + timedelta(days=20), report_due=T0 + timedelta(days=20)),
    }
    e = {n: task(f"E{n}", E[n]) for n in range(1, 8)}  # due on day 30: their verdicts tell they were sampled
    e[8] = task("E8", E[8], sampling_due=T0 + timedelta(days=200))
    cid = {n: f"C-{t.task_id}" for n, t in e.items()}
    now = datetime.now(UTC)
    log_a, log_b, log_c = tmp_path / "streams-a.log", tmp_path / "streams-b.log", tmp_path / "streams-c.log"

    # ---- broker A: tasks with deadlines, cases open in two states, pass rates
    async with platform_on(settings) as http, streams_worker(settings, log_a):
        await create(store, settings, *d.values(), *(e[n] for n in (1, 2, 3, 6, 7)))
        trail = (S.SAMPLING, S.SAMPLED, S.IN_TRANSIT, S.RECEIVED)
        await custody(
            producer,
            settings,
            *(step(d[3].task_id, s, now - timedelta(hours=5 - i)) for i, s in enumerate(trail)),
            step(d[4].task_id, S.CANCELLED, now - timedelta(hours=1)),
            *(
                step(d[5].task_id, s, now - timedelta(hours=5 - i))
                for i, s in enumerate((*trail, S.REPORTED))
            ),
        )
        for sid in (f"{d[3].task_id}-received", f"{d[4].task_id}-cancelled", f"{d[5].task_id}-reported"):
            await eventually(functools.partial(_step_stored, store, sid))
        await results(lab, settings, e[1], "1.2")
        await in_state(http, cid[1], "objection-window")
        await settles(lambda: alerts_stored(store), Counter({(d[1].task_id, "sampling-overdue"): 1}))

        set_clock(settings, T0 + timedelta(days=16))
        await in_state(http, cid[1], "rectification")
        for n in (2, 3, 6):
            await results(lab, settings, e[n], "1.2")
        first_e6 = await eventually(lambda: verdict_of(http, e[6].task_id))
        await results(lab, settings, e[7], "0.62")
        for n in (2, 3, 6):
            await in_state(http, cid[n], "objection-window")
        benzene = next(r for r in first_e6["results"] if r["item"] == "benzene")
        fix = result(
            {"task_id": e[6].task_id, "sample_id": e[6].sample_id, "lab_id": "LAB-1"},
            "benzene",
            "0.62",
            amends=benzene["result_id"],
            reason="re-measured",
        )
        await send(lab, settings, fix)
        await in_state(http, cid[6], "closed")  # a qualified correction within the window
        await settles(lambda: pass_rates_served(store), {PRODUCT: (2, 3)})
        await eventually(lambda: outbox_settled(store, settings, "alerts", "actions"), timeout=60)
        await settles(lambda: changelog_keys(settings, "deadlines"), 3)  # D1-D3: the others are done
        sizes_a = {t: await changelog_keys(settings, t) for t in ("deadlines", "cases", "recent-outcomes")}

    # the stream processor stopped; two case inputs PostgreSQL knows never reach a broker again: a
    # verdict stored whose case input the broker lost, a refusal the custody processor stored
    async with platform_on(settings):
        await create(store, settings, e[4], e[5])
        await store.write_batch(tasks=[], accepted=[], pending=[], verdicts=[stored_verdict(e[4])])
        await custody(producer, settings, step(e[5].task_id, S.REFUSED, datetime.now(UTC)))
        await eventually(lambda: _step_stored(store, f"{e[5].task_id}-refused"))

    # ---- broker B: empty, as after a restart of the embedded stack
    forgetful = settings.model_copy(update={"kafka_bootstrap": broker_b})
    await kafka.create_topics(forgetful)
    samples: list[dict[str, tuple[int, int]]] = []
    async with platform_on(forgetful) as http:
        with watching_pass_rates(store, samples):
            async with streams_worker(forgetful, log_b):
                # an objection to a case opened on A is taken, not "unknown"
                async with http.post(f"/api/v1/cases/{cid[3]}/objection", json={"by": "legal rep"}) as resp:
                    assert resp.status == 202, await resp.text()
                retest = await in_state(http, cid[3], "retest")
                assert kinds(retest)[-2:] == ["objection-filed", "retest-ordered"]
                # the case inputs only PostgreSQL knew are fed again
                await in_state(http, cid[4], "objection-window")
                refused = await in_state(http, cid[5], "rectification")
                assert kinds(refused)[:2] == ["case-opened", "stop-sale"]
                await create(store, forgetful, e[8])
                lab_b = AIOKafkaProducer(bootstrap_servers=broker_b, enable_idempotence=False)
                await lab_b.start()
                try:
                    await results(lab_b, forgetful, e[8], "0.62")  # a new verdict on B
                finally:
                    await lab_b.stop()

                set_clock(settings, T0 + timedelta(days=32))
                for n in (2, 4):
                    await in_state(http, cid[n], "rectification")
                expected = Counter(
                    {
                        (d[1].task_id, "sampling-overdue"): 1,
                        (d[2].task_id, "sampling-overdue"): 1,
                        (d[3].task_id, "report-overdue"): 1,
                    }
                )
                await settles(lambda: alerts_stored(store), expected)

                set_clock(settings, T0 + timedelta(days=77))
                for n in (1, 5):
                    follow = await in_state(http, cid[n], "follow-up")
                    assert kinds(follow)[-1] == "follow-up-ordered"
                await settles(lambda: pass_rates_served(store), {PRODUCT: (3, 4)})
                await eventually(lambda: outbox_settled(store, settings, "alerts", "actions"), timeout=60)
                first_run = await eventually(lambda: all_seeded(log_b), timeout=10)
                # D1-D3, the re-test and the two follow-ups: nothing else has a deadline left
                await settles(lambda: changelog_keys(forgetful, "deadlines"), 6)
                sizes_b = {
                    t: await changelog_keys(forgetful, t) for t in ("deadlines", "cases", "recent-outcomes")
                }

            # the fast path: a restart on the intact broker B rebuilds from its changelogs, seeds nothing
            async with streams_worker(forgetful, log_c):
                second_run = await eventually(lambda: all_seeded(log_c), timeout=120)
                set_clock(settings, T0 + timedelta(days=92))
                for n in (2, 4):
                    await in_state(http, cid[n], "follow-up")
                follow_ups = Counter({(f"{e[n].task_id}.F1", "sampling-overdue"): 1 for n in (1, 5)})
                await settles(lambda: alerts_stored(store), expected + follow_ups)
                await eventually(lambda: outbox_settled(store, settings, "alerts", "actions"), timeout=60)

        # alerts: each published on B once, none that A had published, each stored once
        on_b = Counter(a["alert_id"] for a in await topic_to_end(forgetful, "alerts"))
        assert set(on_b.values()) == {1}
        assert len(on_b) == len(expected + follow_ups) - 1
        assert await alerts_stored(store) == expected + follow_ups
        # case events: none twice on B, each as stored
        events_b = await topic_to_end(forgetful, "actions")
        counts = Counter(x["event_id"] for x in events_b)
        assert counts and set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
        stored_events = {
            r["event_id"]: json.loads(r["payload"]) for r in await rows(store, "SELECT * FROM case_events")
        }
        assert all(stored_events[x["event_id"]] == x for x in events_b)
        for n in range(1, 7):
            case = await case_of(http, cid[n])
            assert case is not None
            assert [x["seq"] for x in case["events"]] == list(range(1, len(case["events"]) + 1))
        letters = await rows(store, "SELECT reason FROM dead_letters WHERE reason LIKE '%case%'")
        assert letters == []

    # pass rates: as the verdicts say, and never overwritten by a half-empty table on B
    assert await pass_rates_served(store) == await pass_rates_from_verdicts(store) == {PRODUCT: (3, 4)}
    assert samples and all(s[PRODUCT][0] >= 2 and s[PRODUCT][1] >= 3 for s in samples if PRODUCT in s)

    by_table = {x["table"]: x for x in reversed(first_run)}  # the first sweep of each table
    assert by_table["deadlines"]["seeds"] == 3  # D1 (alerted, still overdue), D2, D3; D4, D5 are done
    assert by_table["cases"]["seeds"] == 3 and by_table["cases"]["refed"] == 2  # E1-E3; E4, E5
    assert by_table["pass-rates"]["seeds"] == 1
    assert all(x["seeds"] == 0 and x.get("refed", 0) == 0 for x in second_run), second_run
    report_figures(
        "clean restart on an empty broker with open deadlines and cases, clock moved",
        alerts_expected=sum((expected + follow_ups).values()),
        alerts_stored=sum((await alerts_stored(store)).values()),
        alerts_published_on_new_broker=sum(on_b.values()),
        alerts_duplicated=sum(n - 1 for n in on_b.values()),
        case_events_on_new_broker=len(events_b),
        case_events_duplicated=sum(n - 1 for n in counts.values()),
        case_dead_letters=len(letters),
        seeds_empty_broker={t: x["seeds"] for t, x in by_table.items()},
        refed_inputs=by_table["cases"]["refed"],
        seeds_intact_broker=sum(x["seeds"] for x in second_run),
        table_keys_before=sizes_a,
        table_keys_after=sizes_b,
    )


async def _step_stored(store: Store, step_id: str) -> bool:
    return bool(await rows(store, "SELECT 1 FROM custody_steps WHERE step_id = $1", step_id))
