"""The store sink: the topics that only need recording (dead letters for now) into PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from adapters.alerts import AlertStore
from adapters.cases import CaseStore
from adapters.store import Store
from consumers.base import Batch, BatchConsumer
from spotcheck.case_model import CaseEvent
from spotcheck.deadlines import OverdueAlert
from spotcheck.events import DeadLetter, Event, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.topics import ACTIONS, ALERTS, DEAD_LETTERS

log = structlog.get_logger(__name__)

GROUP = "store-sink"

E = TypeVar("E", bound=Event)
Writer = Callable[[Store, list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


async def write_dead_letters(store: Store, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    letters = []
    for record in records:
        try:
            letters.append(DeadLetter.model_validate_json(record.value or b""))
        except (ValidationError, ValueError) as exc:
            # Even a malformed dead letter is kept, as a dead letter of the dead-letter topic.
            letters.append(
                DeadLetter.of(
                    record.topic,
                    record.key,
                    record.value,
                    f"invalid dead letter: {describe_validation_error(exc)}",
                    datetime.now(UTC),
                    origin=f"{record.partition}@{record.offset}",
                )
            )
    await store.save_dead_letters(letters)


def _read(
    records: list[ConsumerRecord[bytes, bytes]], model: type[E], what: str
) -> tuple[list[E], list[DeadLetter]]:
    """The records as `model` in offset order; one that does not read as such becomes a dead letter."""
    events: list[E] = []
    letters: list[DeadLetter] = []
    for record in records:
        try:
            events.append(model.from_json(record.value or b""))
        except ValueError as exc:
            letters.append(
                DeadLetter.of(
                    record.topic,
                    record.key,
                    record.value,
                    f"invalid {what}: {describe_validation_error(exc)}",
                    datetime.now(UTC),
                    origin=f"{record.partition}@{record.offset}",
                )
            )
    return events, letters


async def write_alerts(store: Store, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """Overdue alerts into `alerts`."""
    alerts, letters = _read(records, OverdueAlert, "alert")
    await AlertStore(store).save(alerts)
    await store.save_dead_letters(letters)


async def write_case_events(store: Store, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """Case events into `case_events` and `cases`, in offset order."""
    events, letters = _read(records, CaseEvent, "case event")
    await CaseStore(store).save(events)
    await store.save_dead_letters(letters)


class StoreSink(BatchConsumer):
    """Writes each batch with the writer registered for its topic, then commits."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.writers: dict[str, Writer] = {
            DEAD_LETTERS.full_name(settings): write_dead_letters,
            ALERTS.full_name(settings): write_alerts,
            ACTIONS.full_name(settings): write_case_events,
        }
        super().__init__(settings, store, GROUP, list(self.writers))

    async def handle(self, batch: Batch) -> None:
        by_topic: dict[str, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in batch:
            by_topic.setdefault(record.topic, []).append(record)
        for topic, records in by_topic.items():
            await self.writers[topic](self.store, records)
