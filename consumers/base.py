"""The batch consumer loop shared by every aiokafka consumer: take a batch, handle it, then commit."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from adapters import kafka
from adapters.metrics import BATCH_SECONDS, CONSUMER_LAG, EVENTS_IN
from adapters.store import Heartbeat, Store
from spotcheck.settings import Settings

log = structlog.get_logger(__name__)

Batch = Sequence[ConsumerRecord[bytes, bytes]]


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned",
            group=self._owner.group,
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


class BatchConsumer:
    """Consumes `topics` in group `group`; `handle(batch)` must be idempotent.

    Offsets are committed only after `handle` returned, so a crash re-delivers the batch. A
    failing batch is retried with backoff until it passes or the consumer is stopped: nothing
    is skipped (bad records are the handler's to dead-letter).
    """

    def __init__(self, settings: Settings, store: Store, group: str, topics: Sequence[str]) -> None:
        self.settings = settings
        self.store = store
        self.group = group
        self.topics = list(topics)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the first assignment is done
        self._lag_at = 0.0

    async def handle(self, batch: Batch) -> None:
        raise NotImplementedError

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hook: drop state kept for partitions this member no longer owns."""

    async def idle(self) -> None:
        """Hook: called after every poll, with or without records."""

    async def start(self) -> None:
        self._consumer = kafka.consumer(
            self.settings, self.topics, self.group, max_poll_records=self.settings.batch_max_records
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.group}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        beat = Heartbeat(self.store, self.group, instance_name())
        try:
            while not self._stopping.is_set():
                await beat.maybe()
                records = await consumer.getmany(
                    timeout_ms=self.settings.batch_timeout_ms,
                    max_records=self.settings.batch_max_records,
                )
                if consumer.assignment():
                    self.ready.set()
                batch = [r for part in records.values() for r in part]
                if batch:
                    started = time.perf_counter()
                    await self._retrying(self.handle, batch)
                    offsets = {tp: part[-1].offset + 1 for tp, part in records.items()}
                    await self._retrying(consumer.commit, offsets)
                    BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
                    for tp, part in records.items():
                        EVENTS_IN.labels(tp.topic).inc(len(part))
                await self._retrying(self.idle)
                await self._record_lag(consumer)
        except Exception:
            log.exception("consumer stopped by an error", group=self.group)
            raise

    async def _retrying(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(multiplier=0.2, max=15, jitter=0.2),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "retrying after an error",
                group=self.group,
                attempt=rs.attempt_number,
                error=repr(rs.outcome.exception()) if rs.outcome else None,
            ),
        ):
            with attempt:
                if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                    raise asyncio.CancelledError
                await fn(*args)

    async def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = await consumer.position(tp)
            CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(max(high - position, 0))
