"""The outbox relay: publishes the outbox's rows in order, finds the ones every reader has processed,
and publishes again what a broker that forgot its data never had processed.

One relay leads at a time (a PostgreSQL advisory lock), so rows reach the broker in `seq` order and
a key's messages keep their order; other instances wait as standbys. A row is processed once every
consumer group that reads its topic (spotcheck.topics.READERS) has committed past its offset: those
groups store what they consumed before they commit, so the row's effect is in PostgreSQL by then.
When the broker lost the relay's last mark (an embedded broker keeps nothing across a restart), the
rows its readers had not processed are published again; every reader is idempotent, so a message
seen twice changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from adapters.metrics import EVENTS_OUT, OUTBOX_FORGOTTEN, OUTBOX_UNPUBLISHED
from adapters.outbox import CHANNEL
from adapters.store import Heartbeat, Store
from spotcheck.errors import TransientError
from spotcheck.settings import Settings
from spotcheck.topics import CATALOG, RELAY_EPOCHS, reader_groups

log = structlog.get_logger(__name__)

COMPONENT = "relay"
_LEADER_LOCK = 0x5C0_0B0C5  # pg_advisory_lock key: one leading relay per database


class Relay:
    """Publishes the outbox; `start()` and `stop()` own its task. `ready` is set once it leads."""

    def __init__(self, settings: Settings, store: Store, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.ready = asyncio.Event()
        self._groups: dict[str, tuple[str, ...]] = {
            t.full_name(settings): reader_groups(settings, t) for t in CATALOG
        }
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._tracked_at = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Until woken (a notice, a stop) or `seconds` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _run(self) -> None:
        beat = Heartbeat(self.store, COMPONENT, f"{socket.gethostname()}:{os.getpid()}")
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await self._lead(beat)
                delay = 0.2
            except Exception as exc:  # noqa: BLE001 - the database or the broker may come back
                log.warning("relay waits for the database and the broker", error=repr(exc))
                await self._pause(delay)
                delay = min(delay * 2, 5.0)

    async def _lead(self, beat: Heartbeat) -> None:
        """Lead while holding the lock; a standby looks again every poll interval."""
        async with self.store.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK):
                await beat.maybe()
                await self._pause(self.settings.outbox_poll_seconds)
                return
            try:
                await conn.add_listener(CHANNEL, self._notified)
                await self.recover()
                self.ready.set()
                log.info("relay leads")
                while not self._stopping.is_set():
                    await beat.maybe()
                    sent = await self.publish_once()
                    if time.monotonic() - self._tracked_at >= self.settings.outbox_track_seconds:
                        await self.track()
                    if sent < self.settings.outbox_batch:
                        await self._pause(self.settings.outbox_poll_seconds)
            finally:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(CHANNEL, self._notified)
                    await conn.execute("SELECT pg_advisory_unlock($1)", _LEADER_LOCK)

    # --- publishing -------------------------------------------------------------------------

    async def publish_once(self) -> int:
        """Publish the oldest unpublished rows (one batch) and record where they landed."""
        async with self.store.transaction() as conn:
            rows = await conn.fetch(
                'SELECT seq, topic, key, value FROM outbox WHERE published_at IS NULL AND failed_at IS NULL'
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.settings.outbox_batch,
            )
            if not rows:
                OUTBOX_UNPUBLISHED.set(0)
                return 0
            landed, failed = await self._send(rows)
            if landed:
                topic_of = {r["seq"]: r["topic"] for r in rows}
                seqs, parts, offsets = zip(*landed, strict=True)
                read = [bool(self._groups.get(topic_of[seq])) for seq in seqs]
                await conn.execute(
                    "UPDATE outbox o SET published_at = now(), partition = m.p, \"offset\" = m.o,"
                    " processed_at = CASE WHEN m.r THEN NULL ELSE now() END"
                    " FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bool[]) AS m(seq, p, o, r)"
                    " WHERE o.seq = m.seq",
                    list(seqs),
                    list(parts),
                    list(offsets),
                    read,
                )
            for seq, reason in failed:
                log.error("outbox message cannot be published; kept in the outbox", seq=seq, error=reason)
                await conn.execute(
                    "UPDATE outbox SET failed_at = now(), failure = $2 WHERE seq = $1", seq, reason
                )
        for topic, n in Counter(r["topic"] for r in rows).items():
            EVENTS_OUT.labels(topic).inc(n)
        return len(rows)

    async def _send(
        self, rows: Sequence[asyncpg.Record]
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, str]]]:
        """Send the rows in order; (seq, partition, offset) of those the broker has, and (seq, why) of
        those it can never take (too large, say). A retriable failure fails the whole batch."""
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        failed: list[tuple[int, str]] = []
        try:
            for r in rows:
                try:
                    futures.append((r["seq"], await self.producer.send(r["topic"], r["value"], key=r["key"])))
                except KafkaError as exc:
                    if exc.retriable:
                        raise
                    failed.append((r["seq"], f"{type(exc).__name__}: {exc}"))
            landed: list[tuple[int, int, int]] = []
            for (seq, _), outcome in zip(
                futures, await asyncio.gather(*(f for _, f in futures), return_exceptions=True), strict=True
            ):
                if isinstance(outcome, KafkaError) and not outcome.retriable:
                    failed.append((seq, f"{type(outcome).__name__}: {outcome}"))
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    landed.append((seq, outcome.partition, outcome.offset))
        except (TimeoutError, KafkaError, OSError) as exc:
            raise TransientError(f"broker unavailable: {exc}") from exc
        return landed, failed

    # --- processed rows, and a broker that forgot -------------------------------------------

    async def _committed(self, group: str, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
            await self._admin.start()
        found = await self._admin.list_consumer_group_offsets(group, partitions=parts)
        return {tp: meta.offset for tp, meta in found.items() if meta is not None and meta.offset >= 0}

    async def track(self) -> int:
        """Mark the rows every reader group committed past as processed; drop old processed rows.
        Returns how many rows were marked."""
        self._tracked_at = time.monotonic()
        async with self.store.transaction() as conn:
            open_parts = await conn.fetch(
                'SELECT topic, partition FROM outbox WHERE published_at IS NOT NULL AND processed_at IS NULL'
                " GROUP BY topic, partition"
            )
        by_topic: dict[str, list[TopicPartition]] = {}
        for r in open_parts:
            by_topic.setdefault(r["topic"], []).append(TopicPartition(r["topic"], r["partition"]))
        marks: list[tuple[str, int, int]] = []
        for topic, parts in by_topic.items():
            groups = self._groups.get(topic, ())
            low: dict[TopicPartition, int] | None = None
            for group in groups:
                committed = await self._committed(group, parts)
                low = committed if low is None else {
                    tp: min(off, committed[tp]) for tp, off in low.items() if tp in committed
                }
            for tp in parts:
                past = (low or {}).get(tp) if groups else 2**62
                if past is not None:
                    marks.append((tp.topic, tp.partition, past))
        marked = 0
        async with self.store.transaction() as conn:
            if marks:
                topics, parts_, upto = (list(column) for column in zip(*marks, strict=True))
                done = await conn.execute(
                    "UPDATE outbox o SET processed_at = now()"
                    " FROM unnest($1::text[], $2::int[], $3::bigint[]) AS m(t, p, c)"
                    ' WHERE o.topic = m.t AND o.partition = m.p AND o."offset" < m.c'
                    " AND o.published_at IS NOT NULL AND o.processed_at IS NULL",
                    topics,
                    parts_,
                    upto,
                )
                marked = int(done.split()[-1])
            await conn.execute(
                "DELETE FROM outbox WHERE processed_at < now() - make_interval(secs => $1)",
                self.settings.outbox_keep_seconds,
            )
            dropped = await conn.fetch(
                "DELETE FROM outbox WHERE processed_at IS NULL"
                " AND created_at < now() - make_interval(secs => $1) RETURNING topic",
                self.settings.outbox_max_age_hours * 3600,
            )
            unpublished = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"
            )
        OUTBOX_UNPUBLISHED.set(unpublished)
        if dropped:
            log.warning(
                "outbox rows no reader processed in time were dropped",
                count=len(dropped),
                topics=sorted({r["topic"] for r in dropped}),
                hours=self.settings.outbox_max_age_hours,
            )
        return marked

    async def recover(self) -> int:
        """Make sure the broker still holds what the relay put there: its last mark (on the
        relay-epochs topic) must be the one PostgreSQL remembers. A broker without it lost everything
        (an embedded broker keeps nothing across a restart): every published row its readers had not
        processed is published again. Then a new mark. Returns how many rows go again."""
        marks = RELAY_EPOCHS.full_name(self.settings)
        async with self.store.transaction() as conn:
            known = await conn.fetchval("SELECT epoch FROM relay_epochs ORDER BY marked_at DESC LIMIT 1")
        seen = await self._last_mark(marks)
        if known is not None and seen == known:
            return 0
        again = 0
        if known is not None:
            async with self.store.transaction() as conn:
                done = await conn.execute(
                    'UPDATE outbox SET published_at = NULL, partition = NULL, "offset" = NULL'
                    " WHERE published_at IS NOT NULL AND processed_at IS NULL"
                )
            again = int(done.split()[-1])
            OUTBOX_FORGOTTEN.inc(again)
            log.warning(
                "the broker lost what the relay had published; what its readers had not processed goes again",
                messages=again,
            )
        epoch = uuid.uuid4().hex
        try:  # alone in its batch, so that the topic's end offset is right on every broker
            await self.producer.send_and_wait(marks, b"", key=epoch.encode(), partition=0)
        except KafkaError as exc:
            raise TransientError(f"broker unavailable: {exc}") from exc
        async with self.store.transaction() as conn:
            await conn.execute("INSERT INTO relay_epochs (epoch) VALUES ($1)", epoch)
        return again

    async def _last_mark(self, topic: str) -> str | None:
        """The key of the last record on partition 0 of `topic`, None when it holds none."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            part = TopicPartition(topic, 0)
            if topic not in await consumer.topics():
                return None
            consumer.assign([part])
            end = (await consumer.end_offsets([part]))[part]
            if end == 0:
                return None
            consumer.seek(part, end - 1)
            for _ in range(50):
                records = (await consumer.getmany(part, timeout_ms=200)).get(part, [])
                if records:
                    key = records[-1].key
                    return key.decode() if key is not None else None
            raise TransientError(f"the last mark on {topic} could not be read")
        finally:
            await consumer.stop()
