"""Kafka clients built from the settings: topic creation, producers, consumers, error translation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from spotcheck.errors import SpotcheckError, TransientError
from spotcheck.settings import Settings
from spotcheck.topics import CATALOG

log = structlog.get_logger(__name__)


def translate(exc: BaseException) -> SpotcheckError:
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return TransientError(f"broker unavailable: {exc}")
    if isinstance(exc, KafkaConnectionError | OSError | asyncio.TimeoutError):
        return TransientError(f"broker unavailable: {exc}")
    return SpotcheckError(f"broker error: {exc}")


async def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every topic of the catalog that does not exist yet; return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=10_000)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise TransientError(f"broker {settings.bootstrap} did not answer") from None
            await asyncio.sleep(0.5)
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=10_000)
    created = []
    try:
        existing = set(await admin.list_topics())
        wanted = [t.full_name(settings) for t in CATALOG]
        new = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in wanted
            if name not in existing
        ]
        for topic in new:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    if created:
        log.info("topics created", topics=created, partitions=settings.topic_partitions)
    return created


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer for the platform's topics (at-least-once; sinks are idempotent)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "enable_idempotence": False,  # tansu's memory engine rejects InitProducerId
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, topics: Sequence[str], group: str, **overrides: Any) -> AIOKafkaConsumer:
    """A group consumer with manual commits and the settings' session timeouts."""
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "group_id": settings.group_id(group),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "rebalance_timeout_ms": settings.rebalance_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        # co-partitioned topics (tasks, custody, lab-results) land on the same member
        "partition_assignment_strategy": (RangePartitionAssignor,),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_wait_ms": 100,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def publish(prod: AIOKafkaProducer, topic: str, messages: Sequence[tuple[str | None, bytes]]) -> None:
    """Send a batch to one topic and wait until the broker has all of it."""
    await publish_all(prod, [(topic, key, value) for key, value in messages])


async def publish_all(prod: AIOKafkaProducer, messages: Sequence[tuple[str, str | None, bytes]]) -> None:
    """Send (topic, key, value) messages and wait until the broker has all of them."""
    if not messages:
        return
    try:
        futures = [
            await prod.send(topic, value, key=key.encode() if key is not None else None)
            for topic, key, value in messages
        ]
        await asyncio.gather(*futures)
    except KafkaError as exc:
        raise translate(exc) from exc


async def broker_reachable(prod: AIOKafkaProducer) -> bool:
    try:
        await asyncio.wait_for(prod.client.force_metadata_update(), timeout=3)
    except Exception:  # noqa: BLE001 - any failure means "not reachable" for health
        return False
    return bool(prod.client.cluster.brokers())
