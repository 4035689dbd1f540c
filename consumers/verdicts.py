"""The verdict processor: tasks and lab results in, verdicts and dead letters out, all stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from adapters.labs import LabStore
from adapters.metrics import DEAD_LETTERS, SAMPLES_CACHED, VERDICT_LATENCY
from adapters.store import Store
from consumers.base import Batch, BatchConsumer
from spotcheck.errors import SpotcheckError
from spotcheck.events import (
    DeadLetter,
    LabResult,
    SamplingTask,
    Verdict,
    describe_validation_error,
)
from spotcheck.labs import Lab, result_refusal
from spotcheck.sample_cache import SampleCache
from spotcheck.samples import Rejected, SampleState
from spotcheck.settings import Settings
from spotcheck.specs import load_catalog
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from spotcheck.topics import LAB_RESULTS, TASKS, VERDICTS, owner_of

log = structlog.get_logger(__name__)

GROUP = "verdicts"
LAB_HEADER = "lab-id"  # a lab's own Kafka client may name itself in this record header
LABS_REFRESH_SECONDS = 5.0


@dataclass
class _Outcome:
    """What one batch produced, written out together."""

    tasks: list[SamplingTask] = field(default_factory=list)
    accepted: list[LabResult] = field(default_factory=list)
    pending: list[LabResult] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # ids of results the samples refused
    last_result_ts: dict[str, int] = field(default_factory=dict)  # task_id -> broker ms
    payloads: dict[str, str] = field(default_factory=dict)  # result_id -> JSON as received


class VerdictProcessor(BatchConsumer):
    """Consumes tasks and lab results (co-partitioned by task_id) in one group.

    Per-sample state is cached in memory and rebuilt from PostgreSQL on a miss, so a restart or a
    rebalance loses nothing; a sample whose verdict is out leaves the cache after its batch, and
    open ones beyond `sample_cache_size` too (spotcheck.sample_cache), so memory is bounded.
    Per batch: decode, apply, judge, publish, store, then commit.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        producer: AIOKafkaProducer,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.names = {
            t.name: t.full_name(settings) for t in (TASKS, LAB_RESULTS, VERDICTS, DEAD_LETTERS_TOPIC)
        }
        super().__init__(settings, store, GROUP, [self.names["tasks"], self.names["lab-results"]])
        self.producer = producer
        self.now = now
        self.zone = ZoneInfo(settings.timezone)
        self.cache = SampleCache(settings.sample_cache_size)
        self._swept_at = 0.0
        self._lab_store = LabStore(store)
        self.labs: dict[str, Lab] = {}
        self._labs_at = -LABS_REFRESH_SECONDS

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Partitions moved to another member: its state there is rebuilt from the store.
        self.cache.clear()

    async def handle(self, batch: Batch) -> None:
        try:
            out = await self._process(batch)
            await self._emit(out)
        except BaseException:
            # Applied but not stored (the store write or the publish failed, or processing did):
            # the cached samples are ahead of the store, so drop them; they are rebuilt from it.
            self.cache.clear()
            raise

    async def _process(self, batch: Batch) -> _Outcome:
        out = _Outcome()
        tasks: list[SamplingTask] = []
        results: list[tuple[LabResult, ConsumerRecord[bytes, bytes]]] = []
        for record in batch:
            event = self._decode(record, out)
            if isinstance(event, SamplingTask):
                tasks.append(event)
            elif isinstance(event, LabResult):
                results.append((event, record))

        await self._refresh_labs({r.lab_id for r, _ in results})
        wanted = {t.task_id for t in tasks} | {r.task_id for r, _ in results}
        missing = [tid for tid in wanted if tid not in self.cache]
        waiting: dict[str, list[LabResult]] = {}
        touched: dict[str, SampleState] = {}
        if missing:
            stored, waiting = await self.store.load_samples(missing)
            for sample in stored.values():
                state = SampleState.restore(sample.task, sample.results, sample.last_version)
                self._adopt(state, waiting, out, touched)
        for task in tasks:
            if task.task_id not in self.cache:
                out.tasks.append(task)
                self._adopt(SampleState(task=task), waiting, out, touched)

        for result, record in results:
            held = self.cache.get(result.task_id)
            if held is None:
                out.pending.append(result)  # waits for its task for the grace period
                continue
            if self._apply(held, result, record, out):
                touched[result.task_id] = held

        for state in touched.values():
            try:
                verdict = state.next_verdict(self.zone, self.now)
            except SpotcheckError as exc:
                out.letters.append(
                    DeadLetter.of(
                        self.names["tasks"],
                        state.task.task_id,
                        state.task.to_json(),
                        f"cannot judge task {state.task.task_id}: {exc}",
                        self.now(),
                    )
                )
                continue
            if verdict is not None:
                out.verdicts.append(verdict)
        self.cache.settle(wanted)  # closed samples go (rebuilt from the store if named again)
        SAMPLES_CACHED.set(len(self.cache))
        return out

    def _decode(self, record: ConsumerRecord[bytes, bytes], out: _Outcome) -> SamplingTask | LabResult | None:
        """The record as its topic's model (schema name and version checked by the model); one that
        does not read as such is a dead letter when this processor owns the topic (it owns both)."""
        model = SamplingTask if record.topic == self.names["tasks"] else LabResult
        try:
            if record.value is None:
                raise ValueError("empty message")
            return model.model_validate_json(record.value)
        except (ValidationError, ValueError) as exc:
            reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            if owner_of(self.settings, record.topic) != GROUP:
                log.debug("record skipped: not readable", topic=record.topic, reason=reason)
                return None
            out.letters.append(
                DeadLetter.of(
                    record.topic,
                    record.key,
                    record.value,
                    f"invalid {model.SCHEMA}: {reason}",
                    self.now(),
                    origin=f"{record.partition}@{record.offset}",
                )
            )
            return None

    def _apply(
        self,
        state: SampleState,
        result: LabResult,
        record: ConsumerRecord[bytes, bytes] | None,
        out: _Outcome,
    ) -> bool:
        try:
            if result.result_id not in state.by_id:  # a resend stays harmless whatever changed since
                refusal = self._refusal(state, result, record)
                if refusal is not None:
                    raise Rejected(refusal)
            accepted = state.apply(result)
        except Rejected as exc:
            origin = f"{record.partition}@{record.offset}" if record is not None else "pending"
            out.refused.append(result.result_id)
            out.letters.append(
                DeadLetter.of(
                    self.names["lab-results"],
                    result.task_id,
                    result.to_json(),
                    str(exc),
                    self.now(),
                    origin=origin,
                )
            )
            return False
        if accepted:
            out.accepted.append(result)
            if record is not None:
                out.last_result_ts[result.task_id] = record.timestamp
                if record.value is not None:
                    out.payloads[result.result_id] = record.value.decode()
        return accepted

    def _adopt(
        self,
        state: SampleState,
        waiting: dict[str, list[LabResult]],
        out: _Outcome,
        touched: dict[str, SampleState],
    ) -> None:
        """Cache a sample and take the results that arrived before its task."""
        self._remember(state)
        early = waiting.pop(state.task.task_id, [])
        for result in early:
            self._apply(state, result, None, out)
        if early:
            touched[state.task.task_id] = state

    def _refusal(
        self, state: SampleState, result: LabResult, record: ConsumerRecord[bytes, bytes] | None
    ) -> str | None:
        """The registry's word on this result: the lab's identity, its standing and its scope."""
        for name, value in (record.headers if record is not None else ()) or ():
            claimed = value.decode(errors="replace")
            if name == LAB_HEADER and claimed != result.lab_id:
                return f"the {LAB_HEADER} header says {claimed}, the result says {result.lab_id}"
        refusal = result_refusal(
            self.labs.get(result.lab_id), state.task, load_catalog().get(state.task.spec), result
        )
        return refusal.reason if refusal is not None else None

    async def _refresh_labs(self, lab_ids: set[str]) -> None:
        """Reload the registry when it is older than a few seconds or a lab is not known yet."""
        stale = time.monotonic() - self._labs_at > LABS_REFRESH_SECONDS
        if stale or not lab_ids <= self.labs.keys():
            self.labs = {lab.lab_id: lab for lab in await self._lab_store.all()}
            self._labs_at = time.monotonic()

    def _remember(self, state: SampleState) -> None:
        self.cache.remember(state)  # held at least until the batch is settled

    async def _emit(self, out: _Outcome) -> None:
        # Verdicts and dead letters go to the outbox in the transaction that stores the batch: the
        # relay publishes them, so a verdict exists on the topic if and only if it is stored.
        await self.store.write_batch(
            tasks=out.tasks,
            accepted=out.accepted,
            pending=out.pending,
            verdicts=out.verdicts,
            payloads=out.payloads,
            refused=out.refused,
            messages=[(self.names["verdicts"], v.task_id, v.to_json()) for v in out.verdicts]
            + [(self.names["dead-letters"], d.key, d.to_json()) for d in out.letters],
        )
        now_ms = time.time() * 1000
        for v in out.verdicts:
            if v.task_id in out.last_result_ts:
                VERDICT_LATENCY.observe(max(now_ms - out.last_result_ts[v.task_id], 0) / 1000)
        for letter in out.letters:
            DEAD_LETTERS.labels(letter.source).inc()
        if out.letters:
            log.info("inputs rejected", count=len(out.letters), first=out.letters[0].reason)

    async def idle(self) -> None:
        """Results whose task never came within the grace period become dead letters."""
        now = time.monotonic()
        if now - self._swept_at < min(5.0, max(self.settings.result_grace_seconds / 2, 0.2)):
            return
        self._swept_at = now
        cutoff = self.now() - timedelta(seconds=self.settings.result_grace_seconds)
        expired = await self.store.expire_pending(cutoff, self._expired_letters)
        if expired:
            log.info("pending results expired", count=expired)

    def _expired_letters(self, expired: list[LabResult]) -> list[tuple[str, str | None, bytes]]:
        letters = [
            DeadLetter.of(
                self.names["lab-results"],
                r.task_id,
                r.to_json(),
                f"unknown task {r.task_id}: no such task arrived within "
                f"{self.settings.result_grace_seconds:g}s",
                self.now(),
                origin="expired",
            )
            for r in expired
        ]
        for letter in letters:
            DEAD_LETTERS.labels(letter.source).inc()
        return [(self.names["dead-letters"], d.key, d.to_json()) for d in letters]
