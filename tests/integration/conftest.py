"""One real broker and one real PostgreSQL per test session; a fresh database and topics per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from adapters import kafka
from adapters.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from adapters.store import Store
from spotcheck.settings import Settings

pytestmark = pytest.mark.integration


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


@pytest.fixture
async def database_url(server_url: str) -> AsyncIterator[str]:
    name = f"sc_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
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
        session_timeout_ms=6000,
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
    assert settings.database_url is not None
    async with Store(settings.database_url.get_secret_value()) as s:
        await s.migrate()
        yield s
