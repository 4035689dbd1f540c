"""Enforcement cases end to end: the faust worker (its own process) on the real broker, a clock moved
by rewriting a file, case events stored by the sink and served by the API. Whole case histories run
side by side for six enterprises; the worker is killed (SIGKILL) with deadlines pending and again
after they fired, and every case event is on the actions topic exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from adapters.draws import DrawStore
from adapters.registry import RegistryStore, publisher
from adapters.runtime import child_env
from adapters.store import Store
from spotcheck.custody import CustodyStep, Role, TaskState
from spotcheck.draws import Enterprise, EnterpriseKind, Inspector
from spotcheck.events import Comparison, ItemJudgement, LimitView, Outcome, SamplingTask, TaskKind, Verdict
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, eventually, streams_worker, topic_to_end

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0)
SPEC = "GB17930-2016:VIB:92"
PRODUCT = "92# motor gasoline"
ITEMS = ("ron", "sulfur", "benzene")
E = {n: f"91370502MA3C{n:06d}" for n in (11, 12, 13, 14, 15, 16, 21, 22)}
DEPOT, REFINERY = E[21], E[22]


@pytest.fixture
async def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared test settings with a clock file (read by the API and the stream) and quick checks."""
    clock = tmp_path / "clock"
    clock.write_text(T0.isoformat())
    return settings.model_copy(update={"clock_file": clock, "case_check_seconds": 1.0})


def set_clock(settings: Settings, moment: datetime) -> None:
    assert settings.clock_file is not None
    settings.clock_file.write_text(moment.isoformat())


async def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 30)


def task(n: int, **kw: Any) -> SamplingTask:
    task_id = f"T-2026-9{n:05d}"
    fields: dict[str, Any] = dict(
        task_id=task_id,
        sample_id=f"{task_id}-A",
        enterprise_id=E[n],
        product=PRODUCT,
        spec=SPEC,
        items=ITEMS,
        lab_id="LAB-1",
        inspectors=("INS-1", "INS-2"),
        created_at=T0 - timedelta(days=10),
        sampling_due=T0 + timedelta(days=20),
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


def verdict(t: SamplingTask, outcome: Outcome, failing: tuple[str, ...] = ("benzene",)) -> Verdict:
    judged = tuple(
        ItemJudgement(
            item=item,
            value=Decimal("1.5"),
            limit=LimitView(max="1", text="≤ 1"),
            comparison=Comparison.WHOLE,
            compared_value=Decimal("1.5"),
            judgement="fail" if item in failing and outcome is Outcome.UNQUALIFIED else "pass",
        )
        for item in t.items
    )
    return Verdict(
        verdict_id=f"{t.task_id}/1",
        task_id=t.task_id,
        sample_id=t.sample_id,
        version=1,
        outcome=outcome,
        spec=t.spec,
        enterprise_id=t.enterprise_id,
        product=t.product,
        lab_id=t.lab_id,
        items=judged,
        result_ids=(f"R-{t.task_id}",),
        last_result_at=datetime.now(UTC),
        decided_at=datetime.now(UTC),
    )


def refusal(task_id: str, inspector: str) -> CustodyStep:
    return CustodyStep(
        step_id=f"{task_id}-refused",
        task_id=task_id,
        step=TaskState.REFUSED,
        actor=inspector,
        actor_role=Role.INSPECTOR,
        at=datetime.now(UTC),
        reason="the manager refused to let us sample",
    )


async def send(
    producer: AIOKafkaProducer, settings: Settings, *events: SamplingTask | Verdict | CustodyStep
) -> None:
    topics = {SamplingTask: "tasks", Verdict: "verdicts", CustodyStep: "custody"}
    for e in events:
        topic = f"{settings.topic_namespace}.{topics[type(e)]}"
        await producer.send_and_wait(topic, e.to_json(), key=e.task_id.encode())


async def directory(store: Store, producer: AIOKafkaProducer, settings: Settings) -> None:
    """Six enterprises (14 a filling station supplied by a depot supplied by a refinery), six inspectors
    (INS-6 must stay away from enterprise 13)."""
    kinds = {14: EnterpriseKind.FILLING_STATION, 21: EnterpriseKind.DEPOT, 22: EnterpriseKind.PRODUCER}
    supply = {14: (DEPOT,), 21: (REFINERY,)}
    enterprises = [
        Enterprise(
            enterprise_id=eid,
            name=f"Enterprise {n}",
            district="Kenli District",
            kind=kinds.get(n, EnterpriseKind.FILLING_STATION if n == 16 else EnterpriseKind.PRODUCER),
            products=("motor gasoline",),
            supplied_by=supply.get(n, ()),
        )
        for n, eid in E.items()
    ]
    inspectors = [
        Inspector(
            inspector_id=f"INS-{n}",
            name=f"Inspector {n}",
            unit="Kenli AMR",
            district="Kenli District",
            excluded_enterprises=(E[13],) if n == 6 else (),
        )
        for n in range(1, 7)
    ]
    registry = RegistryStore(store)
    publish = publisher(settings)
    await registry.upsert("enterprise", enterprises, "test", datetime.now(UTC), publish)
    await registry.upsert("inspector", inspectors, "test", datetime.now(UTC), publish)


async def case_of(
    http: aiohttp.ClientSession, case_id: str, state: str | None = None
) -> dict[str, Any] | None:
    async with http.get(f"/api/v1/cases/{case_id}") as resp:
        if resp.status == 404:
            return None
        body = await resp.json()
        assert resp.status == 200, body
    return body if state is None or body["state"] == state else None


async def in_state(http: aiohttp.ClientSession, case_id: str, state: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        return await case_of(http, case_id, state)

    return await eventually(probe, timeout=90)


async def stored_task(store: Store, task_id: str) -> SamplingTask:
    async def probe() -> SamplingTask | None:
        found = await DrawStore(store).tasks([task_id])
        return found[0] if found else None

    return await eventually(probe, timeout=90)


async def actions_on_topic(settings: Settings) -> list[dict[str, Any]]:
    return await topic_to_end(settings, "actions")


def kinds(case: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in case["events"]]


OPENING = ["case-opened", "stop-sale", "notice-issued"]
FINAL = ["result-final", "rectification-ordered"]


async def test_whole_case_histories_with_a_moving_clock_and_a_killed_worker(
    settings: Settings,
    store: Store,
    platform: dict[str, Any],
    http: aiohttp.ClientSession,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    await directory(store, producer, settings)
    tasks = {n: task(n) for n in (11, 12, 13, 14, 15, 16)}
    await store.save_tasks(list(tasks.values()))
    await send(producer, settings, *tasks.values())
    cid = {n: f"C-{t.task_id}" for n, t in tasks.items()}
    log = tmp_path / "streams.log"

    async with streams_worker(settings, log) as first:
        await send(
            producer,
            settings,
            verdict(tasks[11], Outcome.UNQUALIFIED),
            verdict(tasks[12], Outcome.UNQUALIFIED),
            verdict(tasks[13], Outcome.UNQUALIFIED),
            verdict(tasks[14], Outcome.UNQUALIFIED),
            refusal(tasks[15].task_id, "INS-1"),
            verdict(tasks[16], Outcome.UNQUALIFIED, failing=("sulfur", "benzene")),  # sulfur is critical
        )
        for n in (11, 12, 13, 14, 16):
            await in_state(http, cid[n], "objection-window")
        refused = await in_state(http, cid[15], "rectification")  # a refusal is final at once
        assert kinds(refused) == OPENING + FINAL

        # critical failure: referred, and the draw's risk weight counts it
        critical = await case_of(http, cid[16])
        assert critical and critical["referred"] and "referral" in kinds(critical)
        facts = await DrawStore(store).enterprise_facts(
            datetime.now(UTC) + timedelta(seconds=1), settings.timezone
        )
        # the verdicts went straight onto the topic (none stored): what counts is the referral
        assert facts[E[16]].failures == 1 and facts[E[11]].failures == 0

        # the station's suppliers get follow-up tasks, new inspectors
        upstream = [await stored_task(store, f"{tasks[14].task_id}.U{i}") for i in (1, 2)]
        assert [(u.enterprise_id, u.kind) for u in upstream] == [
            (DEPOT, TaskKind.FOLLOW_UP),
            (REFINERY, TaskKind.FOLLOW_UP),
        ]
        assert all(u.items == ITEMS and not set(u.inspectors) & {"INS-1", "INS-2"} for u in upstream)

        # objection within the window: a re-test of the retained sample at another lab
        async with http.post(f"/api/v1/cases/{cid[12]}/objection", json={"by": "legal rep"}) as resp:
            assert resp.status == 202, await resp.text()
        retest = await stored_task(store, f"{tasks[12].task_id}.R")
        assert retest.kind is TaskKind.RETEST and retest.lab_id == "LAB-2" and retest.sample_id.endswith("-B")
        await send(producer, settings, verdict(retest, Outcome.QUALIFIED))
        closed = await in_state(http, cid[12], "closed")
        assert kinds(closed) == OPENING + [
            "objection-filed",
            "retest-ordered",
            "retest-result",
            "result-final",
            "back-on-sale",
            "case-closed",
        ]

        # refused: an objection where the case is not in its window, a bad body, an unknown case
        async with http.post(f"/api/v1/cases/{cid[15]}/objection", json={"by": "x"}) as resp:
            body = await resp.json()
            assert resp.status == 409 and body["state"] == "rectification", body
        async with http.post(f"/api/v1/cases/{cid[11]}/objection", json={"who": "x"}) as resp:
            assert resp.status == 422 and (await resp.json())["field"] in ("by", "who")
        async with http.post("/api/v1/cases/C-nothing/objection", json={"by": "x"}) as resp:
            assert resp.status == 404

        # the notice reached enterprise 16 two days later: its window moves
        set_clock(settings, T0 + timedelta(days=2))
        got = {"received_at": (T0 + timedelta(days=2)).isoformat(), "by": "clerk"}
        async with http.post(f"/api/v1/cases/{cid[16]}/notice-received", json=got) as resp:
            assert resp.status == 202, await resp.text()
        await eventually(lambda: _has(http, cid[16], "notice-received"), timeout=60)
        await kill(first)  # killed with the objection windows pending

    # a new worker takes over from the changelogs: no deadline lost
    async with streams_worker(settings, log) as second:
        set_clock(settings, T0 + timedelta(days=16, hours=1))
        for n in (11, 13, 14):
            assert (
                kinds(await in_state(http, cid[n], "rectification"))
                == OPENING[:2] + (["upstream-follow-up-ordered"] * 2 if n == 14 else []) + OPENING[2:] + FINAL
            )
        assert (await case_of(http, cid[16]))["state"] == "objection-window"  # type: ignore[index]

        async with aiohttp.ClientSession(base_url=str(http._base_url)) as anyone:  # no token
            async with anyone.get("/public/results") as resp:
                public = await resp.json()
                assert resp.status == 200, public
            async with anyone.get("/public") as resp:
                page = await resp.text()
                assert resp.status == 200 and "width=device-width" in page
            async with anyone.get("/api/v1/cases") as resp:
                assert resp.status == 401
        shown = {r["task_number"]: r for r in public["results"]}
        assert set(shown) == {tasks[n].task_id for n in (11, 12, 13, 14, 15)}  # 16 is still in its window
        assert shown[tasks[12].task_id]["outcome"] == "qualified"  # the re-test replaced the first verdict
        assert shown[tasks[11].task_id]["failing_items"] == ["benzene"]
        assert shown[tasks[11].task_id]["enterprise"] == "Enterprise 11"
        assert all(set(r) == set(shown[tasks[11].task_id]) for r in public["results"])
        assert "INS-" not in json.dumps(public) and E[11] not in json.dumps(public) and "INS-" not in page
        await kill(second)  # killed after the deadlines fired

    async with streams_worker(settings, log):
        set_clock(settings, T0 + timedelta(days=77))  # rectification ended: follow-ups
        follow = {n: await stored_task(store, f"{tasks[n].task_id}.F1") for n in (11, 13, 14, 15)}
        for f in follow.values():
            assert (
                f.kind is TaskKind.FOLLOW_UP
                and f.items == ITEMS
                and not set(f.inspectors) & {"INS-1", "INS-2"}
            )
        assert "INS-6" not in follow[13].inspectors  # excluded from enterprise 13
        await send(
            producer,
            settings,
            verdict(follow[11], Outcome.QUALIFIED),
            verdict(follow[13], Outcome.UNQUALIFIED),
        )
        passed = await in_state(http, cid[11], "closed")
        assert kinds(passed)[-4:] == ["follow-up-ordered", "follow-up-result", "back-on-sale", "case-closed"]
        await in_state(http, cid[13], "announced")
        await in_state(http, cid[16], "rectification")  # its window ran two days longer

        set_clock(settings, T0 + timedelta(days=77 + 61))  # second follow-up from announcement + 60 days
        second_follow_up = await stored_task(store, f"{tasks[13].task_id}.F2")
        await send(producer, settings, refusal(second_follow_up.task_id, second_follow_up.inspectors[0]))
        suspended = await in_state(http, cid[13], "suspended")
        assert kinds(suspended) == OPENING + FINAL + [
            "follow-up-ordered",
            "follow-up-result",
            "announced",
            "follow-up-ordered",
            "follow-up-result",
            "suspension-ordered",
        ]

        async with http.get("/api/v1/cases", params={"state": "follow-up"}) as resp:
            listed = await resp.json()
        assert {c["case_id"] for c in listed["cases"]} == {cid[14], cid[15], cid[16]}

    on_topic = await actions_on_topic(settings)
    counts = Counter(e["event_id"] for e in on_topic)
    assert counts and set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
    stored = 0
    for n in (11, 12, 13, 14, 15, 16):
        case = await case_of(http, cid[n])
        assert case is not None
        assert [e["event_id"] for e in case["events"]] == [
            f"{cid[n]}#{i}" for i in range(1, len(case["events"]) + 1)
        ]
        stored += len(case["events"])
    assert stored == len(on_topic)


async def _has(http: aiohttp.ClientSession, case_id: str, kind: str) -> bool:
    case = await case_of(http, case_id)
    return case is not None and kind in kinds(case)


async def test_the_cases_api_refuses_bad_filters(http: aiohttp.ClientSession) -> None:
    for query, field in (
        ({"state": "open"}, "state"),
        ({"color": "red"}, "color"),
        ({"limit": "0"}, "limit"),
    ):
        async with http.get("/api/v1/cases", params=query) as resp:
            body = await resp.json()
        assert resp.status == 422 and body["field"] == field, body
    async with http.get("/api/v1/cases/C-none") as resp:
        assert resp.status == 404


async def test_the_cli_lists_and_shows_cases_of_the_running_platform(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    base = f"http://{settings.http_host}:{settings.http_port}"
    env = child_env(settings) | {"SPOTCHECK_ADMIN_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "spotcheck", "cases", *args, "--api", base]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)

    listed = await asyncio.to_thread(cli, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    missing = await asyncio.to_thread(cli, "show", "C-none")
    assert missing.returncode == 2 and "404" in missing.stderr
    late = await asyncio.to_thread(cli, "object", "C-none", "--by", "legal rep")
    assert late.returncode == 2 and "no case C-none" in late.stderr
