"""The batch consumer loop shared by every aiokafka consumer: take a batch, handle it, then commit;
a record that cannot be handled is set aside as a dead letter, never a stalled partition."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from adapters import kafka
from adapters.metrics import BATCH_SECONDS, CONSUMER_LAG, DEAD_LETTERS, EVENTS_IN, QUARANTINED
from adapters.store import Heartbeat, Store, translate
from spotcheck.errors import SpotcheckError, is_retriable
from spotcheck.events import DeadLetter, describe_validation_error
from spotcheck.settings import Settings

log = structlog.get_logger(__name__)

Batch = Sequence[ConsumerRecord[bytes, bytes]]

RETRY_LIMIT_SECONDS = 30 * 60.0
"""How long a retriable error may last, with the database and the broker answering, before it is
taken to be the batch's own fault. While either does not answer it is an outage: waited out."""
IDLE_PAUSE_SECONDS = 10.0  # after the idle step failed, the next try waits this long
CHECK_TIMEOUT_SECONDS = 10.0  # for the database's and the broker's answer


def retriable(exc: BaseException) -> bool:
    """Whether trying again may help, as the project's errors say; a driver error that escaped its
    adapter is translated here first (anything not known to be transient is not retriable)."""
    if isinstance(exc, KafkaError):
        return is_retriable(kafka.translate(exc))
    if not isinstance(exc, SpotcheckError):
        return is_retriable(translate(exc))
    return is_retriable(exc)


def describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, SpotcheckError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def backoff(attempt: int) -> float:
    """Seconds to wait before try `attempt` + 1: 0.2 s doubling up to 15 s, with jitter."""
    return min(15.0, 0.2 * 2 ** min(attempt - 1, 10)) + random.uniform(0, 0.2)


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
    """Consumes `topics` in group `group`; `handle(batch)` must be idempotent and, when it fails,
    leave nothing behind (no cached state of the batch).

    Offsets are committed only after the batch is handled, so a crash re-delivers it. Bad records
    it can read are the handler's to dead-letter. When `handle` fails, an error marked retriable is
    retried with backoff: for as long as the database or the broker does not answer (an outage),
    and up to `retry_limit_seconds` while they do. Any other error, or a retriable one past that
    limit, is the batch's own: the batch is handled again in halves, down to the records at fault,
    and each of those is set aside as a dead letter (its raw bytes, the reason) in the store, logged
    at error level and counted, while the rest goes on. A record is set aside only while the
    database and the broker answer, and only once its dead letter is stored.
    """

    retry_limit_seconds: float = RETRY_LIMIT_SECONDS

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
        self._idle_after = 0.0

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
                    await self._take_batch(batch)
                    await self._commit(consumer, {tp: part[-1].offset + 1 for tp, part in records.items()})
                    BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
                    for tp, part in records.items():
                        EVENTS_IN.labels(tp.topic).inc(len(part))
                await self._idle()
                await self._record_lag(consumer)
        except Exception:
            log.exception("consumer stopped by an error", group=self.group)
            raise

    async def _take_batch(self, batch: Batch, started: float | None = None) -> None:
        """Handle `batch`; the records at fault are found by halves and set aside, the rest goes on.
        `started`: when the handling of the batch this one is part of began (the retry limit's start)."""
        started = time.monotonic() if started is None else started
        failure = await self._attempt(self.handle, batch, started=started)
        if failure is None:
            return
        if len(batch) > 1:
            log.warning(
                "batch failed; handling it in halves to find the records at fault",
                group=self.group,
                records=len(batch),
                error=describe(failure),
            )
            half = len(batch) // 2
            await self._take_batch(batch[:half], started)
            await self._take_batch(batch[half:], started)
            return
        attempt = 0
        while not await self._answering():  # then the failure may be theirs, not the record's
            attempt += 1
            log.warning(
                "record failed while the database or broker does not answer; waiting", group=self.group
            )
            await self._pause(backoff(attempt))
            failure = await self._attempt(self.handle, batch, started=time.monotonic())
            if failure is None:
                return
        await self._set_aside(batch[0], failure)

    async def _attempt(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, started: float
    ) -> Exception | None:
        """`fn(*args)`, retried while it fails with a retriable error. None once it passed; else the
        error that ends the trying: one not retriable, or a retriable one still failing
        `retry_limit_seconds` after `started` while the database and the broker answer."""
        attempt = 0
        while True:
            try:
                await fn(*args)
                return None
            except Exception as exc:  # noqa: BLE001 - sorted below: retried, or handed back
                if not retriable(exc):
                    return exc
                attempt += 1
                if time.monotonic() - started >= self.retry_limit_seconds and await self._answering():
                    return exc
                log.warning("retrying after an error", group=self.group, attempt=attempt, error=repr(exc))
                await self._pause(backoff(attempt))

    async def _set_aside(self, record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        """Keep a record that cannot be handled as a dead letter in the store (raw bytes and reason);
        until the store has it the record is not let go."""
        # its id depends on the record and this consumer only, so setting it aside again after a
        # re-delivery stores it once, whatever the details of the error were the second time
        letter = DeadLetter.of(
            record.topic,
            record.key,
            record.value,
            f"set aside by {self.group}",
            datetime.now(UTC),
            origin=f"{record.partition}@{record.offset}",
        ).model_copy(update={"reason": f"set aside by {self.group}: {describe(error)}"})
        log.error(
            "record set aside as a dead letter",
            group=self.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=letter.reason,
        )
        attempt = 0
        while True:
            try:
                await self.store.save_dead_letters([letter])
                break
            except Exception as exc:  # noqa: BLE001 - never let the record go unkept: wait for the store
                attempt += 1
                log.error("dead letter not stored yet; trying again", group=self.group, error=repr(exc))
                await self._pause(backoff(attempt))
        QUARANTINED.labels(self.group, record.topic).inc()
        DEAD_LETTERS.labels(record.topic).inc()

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        failure = await self._attempt(consumer.commit, offsets, started=time.monotonic())
        if failure is not None:  # e.g. a rebalance took the partitions: their new owner re-reads
            log.warning(
                "offsets not committed; the batch will be delivered again",
                group=self.group,
                error=repr(failure),
            )

    async def _idle(self) -> None:
        if time.monotonic() < self._idle_after:
            return
        failure = await self._attempt(self.idle, started=time.monotonic())
        if failure is not None:
            log.error("idle step failed; tried again later", group=self.group, error=repr(failure))
            self._idle_after = time.monotonic() + IDLE_PAUSE_SECONDS

    async def _answering(self) -> bool:
        """Whether the database and the broker answer now."""
        consumer = self._consumer
        try:
            await asyncio.wait_for(self.store.ping(), CHECK_TIMEOUT_SECONDS)
            if consumer is not None:
                await asyncio.wait_for(consumer.topics(), CHECK_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the consumer is being stopped (then stop trying)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
        raise asyncio.CancelledError

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
