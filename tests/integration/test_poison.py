"""One bad record stalls nothing: poison on every input topic and over HTTP becomes exactly one dead
letter (raw bytes kept), a record the database refuses is set aside while the rest of its batch is
stored, and every consumer goes on. Real broker, real PostgreSQL, the stream processor in its own
process. (Over 400 lines: one test per fault, sharing the record builders at the top.)"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from adapters.runtime import workers
from adapters.store import Store
from consumers.base import BatchConsumer
from spotcheck.settings import Settings
from tests.integration.helpers import (
    GASOLINE_ITEMS,
    TOKEN,
    eventually,
    report_figures,
    result,
    streams_worker,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SPEC = "GB17930-2016:VIB:92"


def task(task_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task_id,
        "sample_id": f"{task_id}-A",
        "enterprise_id": "91370500MA3C000001",
        "product": "92# motor gasoline",
        "spec": SPEC,
        "items": GASOLINE_ITEMS,
        "lab_id": "LAB-1",
        "inspectors": ["INS-1", "INS-2"],
        "created_at": (NOW - timedelta(days=1)).isoformat(),
    }
    body.update(kw)
    return body


def results_of(t: dict[str, Any]) -> list[dict[str, Any]]:
    return [result(t, "ron", "92.6"), result(t, "sulfur", "8.1"), result(t, "benzene", "0.62")]


def step(task_id: str, step_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "step_id": step_id,
        "task_id": task_id,
        "step": "sampling",
        "actor": "INS-1",
        "actor_role": "inspector",
        "at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def case_input(enterprise_id: str, task_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_id": f"verdict:{task_id}/1",
        "kind": "verdict",
        "enterprise_id": enterprise_id,
        "task_id": task_id,
        "verdict_id": f"{task_id}/1",
        "version": 1,
        "outcome": "unqualified",
        "failing_items": ["sulfur"],
        "product": "92# motor gasoline",
        "spec": SPEC,
        "items": GASOLINE_ITEMS,
        "lab_id": "LAB-1",
        "at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def verdict(task_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "verdict_id": f"{task_id}/1",
        "task_id": task_id,
        "sample_id": f"{task_id}-A",
        "version": 1,
        "outcome": "qualified",
        "spec": SPEC,
        "enterprise_id": "91370500MA3C000001",
        "product": "92# motor gasoline",
        "lab_id": "LAB-1",
        "items": [],
        "result_ids": [],
        "last_result_at": NOW.isoformat(),
        "decided_at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def raw(body: dict[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def publish(
    producer: AIOKafkaProducer,
    settings: Settings,
    topic: str,
    key: str,
    *bodies: dict[str, Any] | bytes,
    partition: int | None = None,
) -> None:
    for body in bodies:
        await producer.send_and_wait(
            f"{settings.topic_namespace}.{topic}", raw(body), key=key.encode(), partition=partition
        )


async def letters(store: Store) -> list[dict[str, Any]]:
    rows = await store.pool.fetch("SELECT source, key, reason, payload, raw FROM dead_letters")
    return [dict(r) for r in rows]


async def settled(store: Store, quiet: float = 4.0, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The dead letters once no new one came for `quiet` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = await letters(store)
    still_at = loop.time()
    while loop.time() - still_at < quiet:
        assert loop.time() < deadline, "dead letters still coming"
        await asyncio.sleep(0.5)
        now = await letters(store)
        if len(now) != len(seen):
            seen, still_at = now, loop.time()
    return seen


async def verdict_stored(store: Store, task_id: str) -> dict[str, Any] | None:
    view = await store.task_view(task_id)
    return view if view is not None and view["verdict"] is not None else None


@asynccontextmanager
async def platform(
    settings: Settings, roles: tuple[str, ...] = ("api", "relay", "verdicts", "sink", "push", "custody")
) -> AsyncIterator[dict[str, BatchConsumer]]:
    """The platform's in-process workers, started when the test wants (after it published); yields
    the consumers by role, each in its group."""
    async with workers(settings, roles, TOKEN) as started:
        consumers = {name: w for name, w in started.items() if isinstance(w, BatchConsumer)}
        for consumer in consumers.values():
            await asyncio.wait_for(consumer.ready.wait(), 30)
        yield consumers


async def test_a_failed_store_write_in_a_batch_loses_no_other_task(
    settings: Settings, store: Store, lab: AIOKafkaProducer
) -> None:
    """A task PostgreSQL cannot store (NUL in its product) arrives in one batch with another task and
    its three results: the other task's results and verdict are stored, the poison is one dead letter."""
    poison = task("T-2026-700001", product="92# motor\u0000 gasoline")
    other = task("T-2026-700002")
    await publish(lab, settings, "tasks", poison["task_id"], poison)
    await publish(lab, settings, "tasks", other["task_id"], other)
    sent = results_of(other)
    await publish(lab, settings, "lab-results", other["task_id"], *sent)

    async with (
        platform(settings),
        aiohttp.ClientSession(
            base_url=f"http://{settings.http_host}:{settings.http_port}",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Spotcheck-Lab": "LAB-1"},
        ) as http,
    ):
        view = await eventually(lambda: verdict_stored(store, other["task_id"]), timeout=45)
        assert sorted(r["result_id"] for r in view["results"]) == sorted(r["result_id"] for r in sent)
        assert view["verdict"]["outcome"] == "qualified"
        assert await store.task_view(poison["task_id"]) is None

        found = await settled(store)
        assert [(d["key"], d["source"]) for d in found] == [
            (poison["task_id"], f"{settings.topic_namespace}.tasks")
        ]
        assert "NUL" in found[0]["reason"] and "product" in found[0]["reason"]
        assert bytes(found[0]["raw"]) == raw(poison)

        async with http.post("/api/v1/lab-results", json=sent[0]) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
        assert answer["outcomes"][0]["status"] == "duplicate"


async def test_a_task_the_database_refuses_is_set_aside_and_the_rest_is_stored(
    settings: Settings, store: Store, lab: AIOKafkaProducer
) -> None:
    """A valid task whose sample number is another task's (the database refuses it) in the same
    batch as good tasks and results: only it is set aside, as a dead letter, and counted."""
    first = task("T-2026-710001")
    clash = task("T-2026-710002", sample_id=first["sample_id"])
    later = task("T-2026-710003")
    for t in (first, clash, later):  # one partition: the first in offset order keeps the number
        await publish(lab, settings, "tasks", t["task_id"], t, partition=0)
    await publish(lab, settings, "lab-results", first["task_id"], *results_of(first), partition=0)
    await publish(lab, settings, "lab-results", later["task_id"], *results_of(later), partition=0)

    async with platform(settings) as started:
        for done in (first, later):
            await eventually(partial(verdict_stored, store, done["task_id"]), timeout=45)
        assert await store.task_view(clash["task_id"]) is None
        found = await settled(store)
        assert [d["key"] for d in found] == [clash["task_id"]]
        assert "tasks_sample_id_key" in found[0]["reason"]
        assert bytes(found[0]["raw"]) == raw(clash)

        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://{settings.http_host}:{settings.http_port}/metrics") as resp,
        ):
            metrics = await resp.text()
        counted = (
            f'spotcheck_quarantined_total{{group="verdicts",topic="{settings.topic_namespace}.tasks"}} 1.0'
        )
        assert counted in metrics
        assert started["verdicts"].running


async def test_nul_over_http_is_refused_and_the_sink_keeps_storing(
    settings: Settings, store: Store, http: aiohttp.ClientSession
) -> None:
    """A NUL byte or a \\u0000 in a request body: 422 naming the field, its dead letter stored byte
    for byte, and the dead letters that come after are stored too."""
    headers = {"X-Spotcheck-Lab": "LAB-1", "Content-Type": "application/json"}
    target = task("T-2026-720001")
    body = result(target, "ron", "92.6", result_id="LAB1-\u0000x")
    escaped = json.dumps(body).encode()
    literal = escaped.replace(b"\\u0000", b"\x00")
    assert b"\x00" in literal and b"\x00" not in escaped

    async with http.post("/api/v1/lab-results", data=literal, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 422 and answer["field"] == "result_id", answer
    assert "NUL" in answer["error"]
    batch = json.dumps({"results": [result(target, "ron", "92.6"), body]}).encode()
    async with http.post("/api/v1/lab-results", data=batch, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 422 and answer["field"] == "results.1.result_id", answer
    nul_key = json.dumps({"enterprise_id": "E-1", "prod\u0000uct": "x"}).encode()
    async with http.post("/api/v1/tasks", data=nul_key, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 422 and answer["field"] == "prod\\u0000uct", answer

    later = json.dumps(result(target, "ron", "ninety")).encode()  # refused after the poison
    async with http.post("/api/v1/lab-results", data=later, headers=headers) as resp:
        assert resp.status == 422

    found = await eventually(lambda: _at_least(store, 4), timeout=30)
    by_raw = Counter(bytes(d["raw"]) for d in found)
    for sent in (literal, batch, nul_key, later):
        assert by_raw[sent] == 1, sent
    stored_literal = next(d for d in found if bytes(d["raw"]) == literal)
    assert "\\u0000" in stored_literal["payload"] and "\x00" not in stored_literal["payload"]

    async with http.get("/healthz") as resp:
        health = await resp.json()
    assert health["checks"]["store-sink"]["state"] == "up", health


async def _at_least(store: Store, n: int) -> list[dict[str, Any]] | None:
    found = await letters(store)
    return found if len(found) >= n else None


async def test_poison_on_every_input_topic_is_one_dead_letter_and_stalls_nothing(
    settings: Settings, store: Store, http: aiohttp.ClientSession, lab: AIOKafkaProducer, tmp_path: Path
) -> None:
    """NUL, not JSON, another schema, an unknown version and a value the database refuses, on the
    tasks, custody, lab-results and case-inputs topics (and the verdicts topic): each is one dead
    letter, from the topic's owner alone; nothing is stored or moved by them; the good records that
    follow them on the same partition are processed."""
    ns = settings.topic_namespace
    await store.pool.execute(  # values this database refuses, as a constraint added by a DBA would
        "ALTER TABLE lab_results ADD CONSTRAINT refused_here CHECK (result_id NOT LIKE 'REFUSED%');"
        "ALTER TABLE custody_steps ADD CONSTRAINT refused_here CHECK (step_id NOT LIKE 'REFUSED%')"
    )
    good, target, other = task("T-2026-730001"), task("T-2026-730002"), task("T-2026-730003")
    for t in (target, other):  # stored first: poison refers to them
        await publish(lab, settings, "tasks", t["task_id"], t, partition=0)
    await eventually(lambda: store.task_view(other["task_id"]))

    poison: dict[str, list[bytes]] = {}
    poison["tasks"] = [
        raw(task("T-2026-731001", product="92#\u0000")),
        b"{not json",
        raw({"schema": "lab-result/1", **task("T-2026-731003")}),
        raw({"schema": "task/99", **task("T-2026-731004")}),
        raw(task("T-2026-731005", sample_id=target["sample_id"])),  # the sample number is taken
    ]
    poison["lab-results"] = [
        raw(result(target, "ron", "92.6", method="GB/T\u00005487")),
        b"\x00\xff not json",
        raw({"schema": "task/1", **result(target, "ron", "92.6")}),
        raw({"schema": "lab-result/99", **result(target, "ron", "92.6", result_id="LAB1-V99")}),
        raw(result(other, "ron", "92.6", result_id="REFUSED-1")),
    ]
    poison["custody"] = [
        raw(step(target["task_id"], "S-NUL", reason="at the gate\u0000")),
        b"",
        raw({"schema": "lab-result/1", **step(target["task_id"], "S-NAME")}),
        raw({"schema": "custody/99", **step(target["task_id"], "S-V99")}),
        raw(step(target["task_id"], "REFUSED-S1")),
    ]
    enterprise = "91370500MA3C000009"
    poison["case-inputs"] = [
        raw(case_input(enterprise, "T-2026-732001", by="legal\u0000 representative")),
        b"[1, 2",
        raw({"schema": "verdict/1", **case_input(enterprise, "T-2026-732003")}),
        raw({"schema": "case-input/99", **case_input(enterprise, "T-2026-732004")}),
    ]
    poison["verdicts"] = [
        raw(verdict(other["task_id"], product="92#\u0000")),
        b"not json",
        raw({"schema": "task/1", **verdict(other["task_id"])}),
        raw({"schema": "verdict/99", **verdict(other["task_id"])}),
    ]
    keys = {"tasks": "T-2026-731000", "lab-results": target["task_id"], "custody": target["task_id"]}
    keys |= {"case-inputs": enterprise, "verdicts": other["task_id"]}

    quick = settings.model_copy(update={"case_check_seconds": 1.0})
    async with streams_worker(quick, tmp_path / "streams.log"):
        for topic, bodies in poison.items():
            await publish(lab, settings, topic, keys[topic], *bodies, partition=0)
        # good records behind the poison, on the same partitions
        await publish(lab, settings, "tasks", good["task_id"], good, partition=0)
        await publish(lab, settings, "lab-results", good["task_id"], *results_of(good), partition=0)
        await publish(
            lab, settings, "custody", target["task_id"], step(target["task_id"], "S-OK"), partition=0
        )
        opened = case_input("91370500MA3C000010", "T-2026-733001")
        await publish(lab, settings, "case-inputs", opened["enterprise_id"], opened, partition=0)

        await eventually(lambda: verdict_stored(store, good["task_id"]), timeout=60)
        await eventually(lambda: _state_is(store, target["task_id"], "sampling"), timeout=60)
        await eventually(lambda: _case(http, "C-T-2026-733001"), timeout=90)
        found = await settled(store, quiet=6.0)

    sent = {body: topic for topic, bodies in poison.items() for body in bodies}
    by_raw = Counter(bytes(d["raw"]) for d in found)
    assert {body: by_raw[body] for body in sent} == dict.fromkeys(sent, 1), [
        (d["source"], d["reason"]) for d in found
    ]
    assert sum(by_raw.values()) == len(sent), [(d["source"], d["reason"]) for d in found]
    for d in found:
        assert d["source"] == f"{ns}.{sent[bytes(d['raw'])]}", d

    # nothing stored or moved by the poison
    for task_id in ("T-2026-731001", "T-2026-731003", "T-2026-731004", "T-2026-731005"):
        assert await store.task_view(task_id) is None, task_id
    seen = await store.task_view(target["task_id"])
    assert seen is not None and seen["results"] == [] and seen["state"] == "sampling"
    steps = await store.pool.fetch("SELECT step_id FROM custody_steps WHERE task_id = $1", target["task_id"])
    assert [r["step_id"] for r in steps] == ["S-OK"]
    refused = await store.pool.fetchval("SELECT count(*) FROM lab_results WHERE result_id = 'REFUSED-1'")
    assert refused == 0
    for task_id in ("T-2026-732001", "T-2026-732003", "T-2026-732004"):
        assert await _case(http, f"C-{task_id}") is None
    report_figures(
        "poison on every input topic (not JSON, wrong schema, unknown version, NUL, refused by the database)",
        poison_sent=len(sent),
        by_topic=dict(Counter(sent.values())),
        dead_letters=len(found),
        dead_letters_per_record=sorted(set(by_raw.values())),
    )


async def _state_is(store: Store, task_id: str, state: str) -> bool:
    view = await store.task_view(task_id)
    return view is not None and view["state"] == state


async def _case(http: aiohttp.ClientSession, case_id: str) -> dict[str, Any] | None:
    async with http.get(f"/api/v1/cases/{case_id}") as resp:
        return await resp.json() if resp.status == 200 else None


async def test_a_database_outage_sets_nothing_aside(
    settings: Settings, store: Store, lab: AIOKafkaProducer, server_url: str, database_url: str
) -> None:
    """The database refuses every connection for a while, far longer than the retry limit: the
    records that came meanwhile are waited for, then stored; none is set aside."""
    name = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(server_url)
    down = task("T-2026-740001")
    try:
        async with platform(settings, ("verdicts", "sink")) as started:
            for consumer in started.values():
                consumer.retry_limit_seconds = 0.5
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await publish(lab, settings, "tasks", down["task_id"], down)
            await publish(lab, settings, "lab-results", down["task_id"], *results_of(down))
            await publish(lab, settings, "dead-letters", "k", b"{not a dead letter")
            await asyncio.sleep(8)  # 16 times the retry limit
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            view = await eventually(lambda: verdict_stored(store, down["task_id"]), timeout=60)
            assert len(view["results"]) == 3
            found = await settled(store)
            assert [d["reason"][:20] for d in found] == ["invalid dead letter:"]  # only the bad one
            assert all(consumer.running for consumer in started.values())
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_a_record_failing_past_the_retry_limit_is_set_aside(
    settings: Settings, store: Store, lab: AIOKafkaProducer, server_url: str, database_url: str
) -> None:
    """A retriable error of one record (its row locked by another transaction, so its write times
    out) that lasts past the retry limit while the database answers: that record is set aside, the
    rest of its batch is stored."""
    name = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '300ms'")  # new sessions
    finally:
        await admin.close()
    orphan = task("T-2026-750009")  # never sent: its result waits as pending
    waiting = result(orphan, "ron", "92.6")
    await publish(lab, settings, "lab-results", orphan["task_id"], waiting, partition=0)
    good = task("T-2026-750001")
    async with platform(settings, ("verdicts", "sink")) as started:
        await eventually(
            lambda: store.pool.fetchval(
                "SELECT 1 FROM lab_results WHERE result_id = $1", waiting["result_id"]
            )
        )
        started["verdicts"].retry_limit_seconds = 1.0
        holder = await asyncpg.connect(database_url)
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM lab_results WHERE result_id = $1 FOR UPDATE", waiting["result_id"]
            )
            await publish(lab, settings, "tasks", good["task_id"], good, partition=0)
            await publish(lab, settings, "lab-results", orphan["task_id"], waiting, partition=0)  # resent
            await publish(lab, settings, "lab-results", good["task_id"], *results_of(good), partition=0)
            await eventually(lambda: verdict_stored(store, good["task_id"]), timeout=60)
            found = await eventually(lambda: _at_least(store, 1), timeout=30)
            await lock.rollback()
        finally:
            await holder.close()
    assert [(d["key"], bytes(d["raw"])) for d in found] == [(orphan["task_id"], raw(waiting))]
    assert "lock timeout" in found[0]["reason"]
