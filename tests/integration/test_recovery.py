"""Nothing is lost across restarts or a killed worker; results whose task never comes are dead-lettered."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from adapters.runtime import child_env, workers
from adapters.store import Store
from producers import bench
from spotcheck.settings import Settings
from tests.integration.helpers import (
    TOKEN,
    create_task,
    dead_letters,
    eventually,
    report_figures,
    result,
    send,
    topic_to_end,
    verdict_of,
)

pytestmark = pytest.mark.integration


async def _client(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


async def _ready(started: dict[str, object]) -> None:
    for name in ("verdicts", "sink"):
        await asyncio.wait_for(started[name].ready.wait(), 30)  # type: ignore[attr-defined]


async def test_a_restarted_processor_rebuilds_samples_from_the_store(
    settings: Settings, store: Store, lab: AIOKafkaProducer
) -> None:
    async with workers(settings, ("api", "relay", "verdicts", "sink"), TOKEN) as started:
        await _ready(started)
        async with await _client(settings) as http:
            task = await create_task(http)
            sulfur = result(task, "sulfur", "10.4")
            await send(lab, settings, result(task, "ron", "92.6"), sulfur)
            await eventually(lambda: _stored_results(store, task["task_id"], 2))
    # the processor is gone; the rest of the sample arrives while nothing runs
    await send(lab, settings, result(task, "benzene", "0.62"))
    async with workers(settings, ("api", "relay", "verdicts", "sink"), TOKEN) as started:
        await _ready(started)
        async with await _client(settings) as http:
            first = await eventually(lambda: verdict_of(http, task["task_id"]))
            assert first["verdict"]["outcome"] == "unqualified"
            assert len(first["verdict"]["result_ids"]) == 3
            fix = result(task, "sulfur", "9.6", amends=sulfur["result_id"], reason="re-measured")
            await send(lab, settings, fix, sulfur)  # the old one again is harmless
            second = await eventually(lambda: verdict_of(http, task["task_id"], version=2))
            assert second["verdict"]["outcome"] == "qualified"
            assert await dead_letters(http) == []


async def test_a_verdict_worker_killed_mid_stream_leaves_every_verdict_stored_once(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    """Two `spotcheck run verdicts` processes share the group; one is killed (SIGKILL) while lab
    results stream in, whatever it was doing; the survivor takes its partitions over."""
    load = bench.workload(120, 0.1, ZoneInfo(settings.timezone), seed=5)
    run = await bench.failover(settings, tmp_path, load, rate=30.0)
    assert run.killed, "the killed worker held no partition"
    assert run.first_verdict >= 0, "no verdict on the killed worker's partitions after the kill"
    stored = await store.list_verdicts(all_versions=True, limit=10 * len(load.tasks))
    assert Counter(v["task_id"] for v in stored) == {t.task_id: 1 for t in load.tasks}
    items = {t.task_id: len(t.items) for t in load.tasks}
    assert all(v["version"] == 1 and len(v["result_ids"]) == items[v["task_id"]] for v in stored)
    assert await store.dead_letters() == []
    report_figures(
        "a verdict worker killed mid-stream (two workers, SIGKILL)",
        samples=run.expected,
        verdicts_stored=run.stored,
        duplicated=run.duplicated,
        lost=run.expected - run.stored,
        verdict_messages_repeated=run.resent,
        kill_to_reassigned_s=round(run.reassigned, 1),
        kill_to_first_verdict_s=round(run.first_verdict, 1),
    )


async def _stored_results(store: Store, task_id: str, n: int) -> bool:
    view = await store.task_view(task_id)
    return view is not None and len(view["results"]) >= n


async def test_results_for_a_task_that_never_comes_are_dead_lettered(
    settings: Settings, store: Store, lab: AIOKafkaProducer
) -> None:
    quick = settings.model_copy(update={"result_grace_seconds": 1.0})
    async with workers(quick, ("api", "relay", "verdicts", "sink"), TOKEN) as started:
        await _ready(started)
        async with await _client(quick) as http:
            ghost = {"task_id": "T-2026-777777", "sample_id": "T-2026-777777-A", "lab_id": "LAB-1"}
            await send(lab, quick, result(ghost, "sulfur", "5.0"))
            letters = await eventually(lambda: dead_letters(http), timeout=30)
    assert len(letters) == 1
    assert "unknown task T-2026-777777" in letters[0]["reason"]
    assert json.loads(letters[0]["payload"])["value"] == "5.0"
    view = await store.task_view("T-2026-777777")
    assert view is None


async def test_stream_processor_keeps_pass_rates_and_leaves_bad_verdicts_to_their_owner(
    settings: Settings, store: Store, lab: AIOKafkaProducer, tmp_path: Path
) -> None:
    """The faust worker as `up` runs it: its own process, against the real broker and database."""
    log = tmp_path / "streams.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "run", "streams"],
            env=child_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        verdicts = f"{settings.topic_namespace}.verdicts"

        def verdict(task_id: str, version: int, product: str, outcome: str) -> bytes:
            return json.dumps(
                {
                    "verdict_id": f"{task_id}/v{version}",
                    "task_id": task_id,
                    "sample_id": f"{task_id}-A",
                    "version": version,
                    "supersedes": None,
                    "outcome": outcome,
                    "spec": "GB19147-2016:VI:0",
                    "enterprise_id": "E-1",
                    "product": product,
                    "lab_id": "LAB-1",
                    "items": [],
                    "result_ids": [],
                    "last_result_at": "2026-11-24T10:00:00+08:00",
                    "decided_at": "2026-11-24T10:00:01+08:00",
                }
            ).encode()

        for key, value in (
            ("T-1", verdict("T-1", 1, "diesel", "unqualified")),
            ("T-2", verdict("T-2", 1, "diesel", "qualified")),
            ("T-3", verdict("T-3", 1, "gasoline", "qualified")),
            ("T-1", verdict("T-1", 2, "diesel", "qualified")),  # a correction
            ("T-2", verdict("T-2", 1, "diesel", "qualified")),  # a re-delivery
            ("T-4", b'{"schema": "verdict/1"}'),
            ("T-4", verdict("T-4", 1, "gasoline", "qualified")),
        ):
            await lab.send_and_wait(verdicts, value, key=key.encode(), partition=0)

        async def rates() -> dict[str, tuple[int, int]] | None:
            got = {r["product"]: (r["qualified"], r["unqualified"]) for r in await store.pass_rates()}
            return got if got == {"diesel": (2, 0), "gasoline": (2, 0)} else None

        assert await eventually(rates, timeout=90)  # so it went past the bad one (one partition)
        # the verdicts' owner (the center push, not running here) dead-letters a bad verdict, once
        assert await topic_to_end(settings, "dead-letters") == []
        assert "streams" in await store.live_components(30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-3000:]
