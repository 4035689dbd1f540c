"""Helpers of the integration tests: polling, task creation, lab results on the topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from adapters.embedded import free_port
from adapters.registry import RegistryStore, publisher
from adapters.runtime import child_env
from adapters.store import Store
from spotcheck.draws import Enterprise, EnterpriseKind, Inspector
from spotcheck.settings import Settings

TOKEN = "test-admin-token"
T = TypeVar("T")

GASOLINE_ITEMS = ["ron", "sulfur", "benzene"]


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


async def create_task(http: aiohttp.ClientSession, **overrides: Any) -> dict[str, Any]:
    body = {
        "enterprise_id": "91370500MA3C000001",
        "product": "92# motor gasoline",
        "spec": "GB17930-2016:VIB:92",
        "items": GASOLINE_ITEMS,
        "lab_id": "LAB-1",
    }
    body.update(overrides)
    async with http.post("/api/v1/tasks", json=body) as resp:
        payload = await resp.json()
        assert resp.status == 201, payload
        return payload


def result(task: dict[str, Any], item: str, value: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "result_id": f"LAB1-{uuid.uuid4().hex[:10]}",
        "lab_id": task["lab_id"],
        "task_id": task["task_id"],
        "sample_id": task["sample_id"],
        "item": item,
        "value": value,
        "unit": None,
        "method": None,
        "measured_at": datetime.now(UTC).isoformat(),
        "amends": None,
        "reason": None,
    }
    body.update(overrides)
    return body


async def send(lab: AIOKafkaProducer, settings: Settings, *bodies: dict[str, Any] | bytes) -> None:
    topic = f"{settings.topic_namespace}.lab-results"
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        key = None if isinstance(body, bytes) else body["task_id"].encode()
        await lab.send_and_wait(topic, raw, key=key)


async def verdict_of(http: aiohttp.ClientSession, task_id: str, version: int = 1) -> dict[str, Any] | None:
    async with http.get(f"/api/v1/tasks/{task_id}") as resp:
        view = await resp.json()
    verdict = view.get("verdict")
    return view if verdict and verdict["version"] >= version else None


async def dead_letters(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with http.get("/api/v1/dead-letters") as resp:
        return (await resp.json())["dead_letters"]


async def _at_least(coro: Awaitable[list[Any]], n: int) -> list[Any] | None:
    items = await coro
    return items if len(items) >= n else None


async def read_topic(
    settings: Settings, name: str, done: Callable[[list[Any]], bool], timeout: float = 30.0
) -> list[Any]:
    """Records of a topic from the start, until `done(records)`."""
    consumer = AIOKafkaConsumer(
        f"{settings.topic_namespace}.{name}",
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: condition not met within {timeout}s ({len(records)} records)")
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for part in batch.values() for r in part)
    finally:
        await consumer.stop()
    return records


async def small_directory(store: Store, producer: AIOKafkaProducer, settings: Settings) -> list[str]:
    """Three filling stations and five inspectors, one of whom must stay away from station 1."""
    ids = [f"91370502MA3C{n:06d}" for n in range(1, 4)]
    enterprises = [
        Enterprise(
            enterprise_id=eid,
            name=f"Station {n}",
            district="Kenli District",
            kind=EnterpriseKind.FILLING_STATION,
            products=("motor gasoline",),
        )
        for n, eid in enumerate(ids, 1)
    ]
    inspectors = [
        Inspector(
            inspector_id=f"INS-{n}",
            name=f"Inspector {n}",
            unit="Kenli AMR",
            district="Kenli District",
            excluded_enterprises=(ids[0],) if n == 5 else (),
        )
        for n in range(1, 6)
    ]
    registry = RegistryStore(store)
    publish = publisher(settings)
    now = datetime.now(UTC)
    await registry.upsert("enterprise", enterprises, "test", now, publish)
    await registry.upsert("inspector", inspectors, "test", now, publish)
    return ids


async def topic_to_end(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every value on a topic of the test's namespace, from the beginning to its current end."""
    topic = f"{settings.topic_namespace}.{name}"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: list[dict[str, Any]] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=1000)
            found += [json.loads(r.value or b"") for records in batch.values() for r in records]
        return found
    finally:
        await consumer.stop()


@asynccontextmanager
async def streams_worker(settings: Settings, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`spotcheck run streams` as `up` runs it, in its own process; stopped with SIGTERM at the end.
    It must exit cleanly, unless the test killed it (SIGKILL)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotcheck", "run", "streams"],
            env=child_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        if code != -signal.SIGKILL:
            assert code == 0, (await asyncio.to_thread(log.read_text))[-3000:]


class CuttableProxy:
    """A TCP proxy to PostgreSQL that a test can cut (every connection dropped, new ones refused)
    and put back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()


def proxied_url(url: str, port: int) -> str:
    """`url` with its host and port replaced by the local proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
