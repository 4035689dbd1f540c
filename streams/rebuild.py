"""Rebuilding the stream processor's tables from PostgreSQL when the broker lost their changelogs.

After every recovery of a table (faust read its changelog back for the partitions this worker was
assigned), a sweep compares the table with the record for the keys of those partitions and sends a
seed, through a topic, to the partition of each key the table lacks or holds behind the record (the
partition the platform's producers give the key: the Java murmur2 partitioner). The agent that owns
the table merges the seed inside stream iteration, where faust allows table writes. A table that
already holds what PostgreSQL says gets nothing: on a broker that kept the changelogs (Apache Kafka,
or a restart that lost nothing) the changelogs remain the only path. Every sweep logs
"stream state seeded" with its figures (`seeds`: what it sent).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import faust
import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP, TableT
from mode import Service

from adapters.store import Store
from spotcheck.errors import StoreError, TransientError
from spotcheck.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sweep = Callable[[set[int], int], Awaitable[dict[str, int]]]
"""(active partitions of the table's source topic, its partition count) -> figures, `seeds` among them"""

DB_ATTEMPTS = 30  # about two minutes of waiting for the database


def partition_of(key: str, partitions: int) -> int:
    """The partition the platform's producers (and faust's) put `key` on."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key.encode(), every, every))


def partition_count(app: faust.App, topic: str, settings: Settings) -> int:
    return app.consumer.topic_partitions(topic) or settings.topic_partitions


async def patiently(what: str, action: Callable[[], Awaitable[T]], **context: Any) -> T:
    """`action`, tried again while the database is unavailable (about two minutes), then its error."""
    for attempt in range(DB_ATTEMPTS - 1):
        try:
            return await action()
        except (TransientError, StoreError, OSError) as exc:
            log.warning(f"{what} waits for the database", error=str(exc), **context)
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
    return await action()


class Backlog:
    """What the worker had yet to consume of some topics when its partitions were last assigned. A
    timer acting on a table those topics feed waits until it is processed: a table just seeded from
    the record, or recovered from its changelog, may be about to learn from it that a deadline is met.
    It stops waiting after `patience` seconds, with a warning."""

    def __init__(self, app: faust.App, settings: Settings, topics: Sequence[str], patience: float) -> None:
        self.app, self.settings, self.topics, self.patience = app, settings, tuple(topics), patience
        self.processed: dict[TP, int] = {}  # the next offset to process, per partition
        self.ends: dict[TP, int] = {}
        self.since = 0.0

    def seen(self, event: faust.EventT) -> None:
        message = event.message
        self.processed[TP(message.topic, message.partition)] = message.offset + 1

    async def measure(self, active: set[int]) -> int:
        """Note the end of each active partition not committed up to it; returns the records left."""
        parts = [TP(topic, p) for topic in self.topics for p in sorted(active)]
        if not parts:
            self.ends = {}
            return 0
        ends = await self.app.consumer.highwaters(*parts)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(
                self.settings.streams_app_id,
                partitions=[TopicPartition(tp.topic, tp.partition) for tp in parts],
            )
        finally:
            await admin.close()
        committed = {
            TP(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta is not None
        }
        self.ends = {
            tp: end for tp, end in ends.items() if end > max(committed.get(tp, 0), self.processed.get(tp, 0))
        }
        self.since = time.monotonic()
        return sum(end - max(committed.get(tp, 0), 0) for tp, end in self.ends.items())

    def caught_up(self) -> bool:
        left = sorted(
            f"{tp.topic}:{tp.partition}" for tp, end in self.ends.items() if self.processed.get(tp, 0) < end
        )
        if left and time.monotonic() - self.since < self.patience:
            return False
        if left:
            log.warning("timers go on before the backlog is processed", partitions=left, waited=self.patience)
        self.ends = {}
        return True


_STARTED: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()


async def started(store: Store) -> Store:
    """`store`, started once by whoever needs it first: the app's service, or a rebuild that runs at
    the first recovery, which may come before the app's services start."""
    lock = _STARTED.setdefault(store, asyncio.Lock())
    async with lock:
        try:
            store.pool  # noqa: B018 - raises while the store is not started
        except StoreError:
            await store.start()
    return store


class Rebuild:
    """Runs `sweep` after each recovery of `table`: once before the streams resume (so seeds precede
    what the worker consumes next), then, if that failed (the database may be down), in the
    background until it succeeds; a newer recovery replaces a sweep still running. `reset` is called
    at each recovery, before the sweep."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        store: Store,
        table: TableT[Any, Any],
        topic: str,
        sweep: Sweep,
        reset: Callable[[], None] | None = None,
    ) -> None:
        self.app, self.settings, self.store = app, settings, store
        self.name, self.topic = table.name, topic
        self.sweep, self.reset = sweep, reset
        self._task: asyncio.Future[None] | None = None
        table.on_recover(self._recovered)
        rebuild = self

        @app.service
        class StopRebuild(Service):  # noqa: F841 - registered by the decorator
            async def on_stop(self) -> None:
                rebuild.cancel()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _recovered(self) -> None:
        self.cancel()
        if self.reset is not None:
            self.reset()
        if not await self._attempt():
            self._task = asyncio.ensure_future(self._retry())

    async def _attempt(self) -> bool:
        active = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.topic}
        try:
            await started(self.store)
            figures = await self.sweep(active, partition_count(self.app, self.topic, self.settings))
        except Exception as exc:  # noqa: BLE001 - the database may come back; tried again
            log.warning("stream state not rebuilt yet; trying again", table=self.name, error=repr(exc))
            return False
        log.info("stream state seeded", table=self.name, partitions=sorted(active), **figures)
        return True

    async def _retry(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                return
            delay = min(delay * 2, 10.0)
