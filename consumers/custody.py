"""The custody processor: custody steps and verdicts in, task states and steps stored, refusals out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from adapters import outbox
from adapters.custody import CustodyStore
from adapters.metrics import DEAD_LETTERS
from adapters.store import Store
from consumers.base import Batch, BatchConsumer
from spotcheck.custody import CustodyStep, TaskCustody, verdict_steps
from spotcheck.errors import InvalidInput
from spotcheck.events import DeadLetter, Outcome, Verdict, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.topics import CUSTODY, VERDICTS, owner_of
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC

log = structlog.get_logger(__name__)

GROUP = "custody"

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass
class _Outcome:
    steps: list[tuple[CustodyStep, str]] = field(default_factory=list)  # taken, with their JSON
    touched: dict[str, TaskCustody] = field(default_factory=dict)
    letters: list[DeadLetter] = field(default_factory=list)


class CustodyProcessor(BatchConsumer):
    """The authority on task states. Per batch, in one transaction: lock the tasks it names, load
    their custody, take each step in offset order, store what was taken with the new states, and
    publish the refusals as dead letters before the commit. A resent step changes nothing; a bad
    one is a dead letter, never a dead consumer."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        producer: AIOKafkaProducer,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.custody_topic = CUSTODY.full_name(settings)
        self.verdicts_topic = VERDICTS.full_name(settings)
        self.letters_topic = DEAD_LETTERS_TOPIC.full_name(settings)
        super().__init__(settings, store, GROUP, [self.custody_topic, self.verdicts_topic])
        self.producer = producer
        self.now = now
        self.custody = CustodyStore(store)

    async def handle(self, batch: Batch) -> None:
        out = _Outcome()
        events: list[tuple[Record, CustodyStep | Verdict]] = []
        for record in batch:
            event = self._decode(record, out)
            if event is not None:
                events.append((record, event))
        task_ids = {event.task_id for _, event in events}
        async with self.custody.transaction() as conn:
            await self.custody.lock(conn, task_ids)
            held = await self.custody.load(task_ids, conn)
            for record, event in events:
                if isinstance(event, CustodyStep):
                    self._take(held, event, record, out)
                else:
                    self._judge(held, event, record, out)
            await self.custody.save(conn, out.steps, out.touched.values())
            # the refusals go out through the outbox with the steps and states they refused
            await outbox.add(conn, [(self.letters_topic, d.key, d.to_json()) for d in out.letters])
        for letter in out.letters:
            DEAD_LETTERS.labels(letter.source).inc()
        if out.letters:
            log.info("custody steps refused", count=len(out.letters), first=out.letters[0].reason)

    def _decode(self, record: Record, out: _Outcome) -> CustodyStep | Verdict | None:
        """The record as its topic's model (schema name and version checked by the model). One that
        does not read as such is a dead letter from the topic's owner: this processor owns the
        custody topic; a bad verdict is skipped here (the verdicts' owner dead-letters it)."""
        model: type[CustodyStep] | type[Verdict] = (
            CustodyStep if record.topic == self.custody_topic else Verdict
        )
        try:
            if record.value is None:
                raise ValueError("empty message")
            return model.model_validate_json(record.value)
        except (ValidationError, ValueError) as exc:
            reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            if owner_of(self.settings, record.topic) != GROUP:
                log.debug("record skipped: not readable", topic=record.topic, reason=reason)
                return None
            self._refuse(record, f"invalid {model.SCHEMA}: {reason}", out)
            return None

    def _refuse(self, record: Record, reason: str, out: _Outcome) -> None:
        out.letters.append(
            DeadLetter.of(
                record.topic,
                record.key,
                record.value,
                reason,
                self.now(),
                origin=f"{record.partition}@{record.offset}",
            )
        )

    def _take(self, held: dict[str, TaskCustody], step: CustodyStep, record: Record, out: _Outcome) -> None:
        custody = held.get(step.task_id)
        if custody is None:
            self._refuse(record, f"unknown task {step.task_id}", out)
            return
        if record.key is not None and record.key.decode(errors="replace") != step.task_id:
            self._refuse(record, f"keyed {record.key!r}, but the step is of task {step.task_id}", out)
            return
        try:
            taken = custody.apply(step)
        except InvalidInput as exc:  # IllegalTransition, NotPermitted, a reused step_id
            self._refuse(record, str(exc), out)
            return
        if taken:
            assert record.value is not None
            out.steps.append((step, record.value.decode()))
            out.touched[step.task_id] = custody

    def _judge(self, held: dict[str, TaskCustody], verdict: Verdict, record: Record, out: _Outcome) -> None:
        """A verdict closes the lab's part of a task whose sample is at the lab; a task with no
        custody trail that far (or past it) is left as it is."""
        custody = held.get(verdict.task_id)
        if custody is None or verdict.outcome is Outcome.INCOMPLETE:
            return
        for step in verdict_steps(custody.state, verdict.task_id, verdict.verdict_id, verdict.decided_at):
            try:
                taken = custody.apply(step)
            except InvalidInput as exc:
                self._refuse(record, f"cannot record {step.step} for task {verdict.task_id}: {exc}", out)
                return
            if taken:
                out.steps.append((step, step.to_json().decode()))
                out.touched[verdict.task_id] = custody
