"""One real broker and one real PostgreSQL per test session; a fresh database and topics per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from adapters import kafka
from adapters.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from adapters.labs import LabStore
from adapters.runtime import workers
from adapters.store import Store
from spotcheck.labs import Lab, ScopeEntry
from spotcheck.settings import Settings

pytestmark = pytest.mark.integration

from tests.integration.helpers import TOKEN  # noqa: E402


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    b = EmbeddedBroker("127.0.0.1", free_port(), tmp_path_factory.mktemp("broker") / "tansu.log")
    b.start()
    yield b.bootstrap
    b.stop()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: SPOTCHECK_TEST_DATABASE_URL (CI: 127.0.0.1:5432), else embedded."""
    url = os.environ.get("SPOTCHECK_TEST_DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata", free_port(), durable=False)
    pg.start()
    yield pg.url
    pg.stop()


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def migrated_template(server_url: str) -> AsyncIterator[str]:
    """A database with every migration applied, copied for each test (a copy is much quicker than
    applying the migrations again)."""
    name = f"sc_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    async with Store(_with_database(server_url, name), max_size=1) as template:
        await template.migrate()
    yield name
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """The test's own database, migrated."""
    name = f"sc_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    finally:
        await admin.close()
    yield _with_database(server_url, name)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def settings(broker: str, database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic namespace, groups and database; short timeouts."""
    s = Settings(
        kafka_bootstrap=broker,
        database_url=SecretStr(database_url),
        state_dir=tmp_path / "state",
        topic_namespace=f"t{uuid.uuid4().hex[:10]}",
        topic_partitions=3,
        session_timeout_ms=2000,  # tansu holds a join back half of it, rounded up to a second
        rebalance_timeout_ms=3000,
        heartbeat_interval_ms=500,
        batch_timeout_ms=50,
        result_grace_seconds=300,
        http_port=free_port(),
        one_record_batches=True,
    )
    await kafka.create_topics(s)
    return s


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """The test's database, migrated, with two labs accredited for everything: LAB-1 and LAB-2."""
    assert settings.database_url is not None
    async with Store(settings.database_url.get_secret_value()) as s:
        await s.migrate()
        labs = LabStore(s)
        for lab_id in ("LAB-1", "LAB-2"):
            await labs.save(Lab(lab_id=lab_id, name=f"test lab {lab_id}", scope=(ScopeEntry(spec="*"),)))
        yield s


@pytest.fixture
async def platform(settings: Settings, store: Store) -> AsyncIterator[dict[str, Any]]:
    async with workers(settings, ("api", "relay", "verdicts", "sink", "push", "custody"), TOKEN) as started:
        for name in ("relay", "verdicts", "sink", "push", "custody"):
            await asyncio.wait_for(started[name].ready.wait(), 30)  # type: ignore[attr-defined]
        yield started


@pytest.fixture
async def http(settings: Settings, platform: dict[str, Any]) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as session:
        yield session


@pytest.fixture
async def lab(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A lab's own plain Kafka client."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, enable_idempotence=False)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A producer made like the platform's own (for loaders that publish, e.g. the demo directory)."""
    p = kafka.producer(settings)
    await p.start()
    yield p
    await p.stop()
