"""A 30 s database outage in the middle of a stream of results: the workers wait it out (retriable),
nothing is set aside, and once it is back every result is stored and every sample judged once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from adapters.runtime import workers
from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import (
    GASOLINE_ITEMS,
    TOKEN,
    CuttableProxy,
    create_task,
    eventually,
    proxied_url,
    read_topic,
    result,
    send,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30.0
TASKS = 40
VALUES = {"ron": "92.6", "sulfur": "8.3", "benzene": "0.62"}


async def _count(store: Store, sql: str) -> int:
    async with store.transaction() as conn:
        return int(await conn.fetchval(sql))


@pytest.mark.timeout(300)
async def test_a_database_outage_mid_stream_loses_nothing_and_judges_each_sample_once(
    settings: Settings, store: Store, lab: AIOKafkaProducer
) -> None:
    assert settings.database_url is not None
    real = urlsplit(settings.database_url.get_secret_value())
    proxy = CuttableProxy(real.hostname or "127.0.0.1", real.port or 5432)
    await proxy.start()
    proxied = settings.model_copy(
        update={"database_url": SecretStr(proxied_url(settings.database_url.get_secret_value(), proxy.port))}
    )
    try:
        async with workers(
            proxied, ("api", "relay", "verdicts", "sink", "push", "custody"), TOKEN
        ) as started:
            for worker in started.values():
                if hasattr(worker, "ready"):
                    await asyncio.wait_for(worker.ready.wait(), 30)
            async with aiohttp.ClientSession(
                base_url=f"http://{proxied.http_host}:{proxied.http_port}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as http:
                tasks = [await create_task(http) for _ in range(TASKS)]
            sent = [result(task, item, VALUES[item]) for task in tasks for item in GASOLINE_ITEMS]
            half = len(sent) // 2
            await send(lab, settings, *sent[:half])
            await asyncio.sleep(1.0)  # the workers are in the middle of it
            await proxy.cut()
            cut_at = time.monotonic()
            await send(lab, settings, *sent[half:])  # the broker takes them; the database is gone
            await asyncio.sleep(OUTAGE_SECONDS)
            await proxy.restore()
            back_at = time.monotonic()

            async def all_judged() -> bool:
                return await _count(store, "SELECT count(DISTINCT task_id) FROM verdicts") >= TASKS

            await eventually(all_judged, timeout=120)
            recovered = time.monotonic() - back_at
            stored = await _count(store, "SELECT count(*) FROM lab_results WHERE state = 'accepted'")
            versions = await _count(store, "SELECT count(*) FROM verdicts")
            set_aside = await _count(
                store, "SELECT count(*) FROM dead_letters WHERE reason LIKE 'set aside%'"
            )
            letters = await _count(store, "SELECT count(*) FROM dead_letters")
            on_topic = await read_topic(settings, "verdicts", lambda records: len(records) >= TASKS)
            await asyncio.sleep(2.0)
            on_topic = await read_topic(settings, "verdicts", lambda records: len(records) >= len(on_topic))
            repeats = sum(
                n - 1 for n in Counter(json.loads(r.value)["verdict_id"] for r in on_topic).values()
            )
            print(
                f"figures database outage {OUTAGE_SECONDS:.0f}s: sent={len(sent)} stored={stored} "
                f"lost={len(sent) - stored} verdicts={versions} samples={TASKS} dead_letters={letters} "
                f"set_aside={set_aside} verdict_messages_repeated={repeats} "
                f"outage={back_at - cut_at:.1f}s recovered_in={recovered:.1f}s"
            )
            assert stored == len(sent), f"{len(sent) - stored} results lost"
            assert versions == TASKS, "a sample judged more than once"
            assert set_aside == 0 and letters == 0, "good records set aside during an outage"
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.cut()
