"""The stream processor's agents, tables and timers (monitors: live pass rates per product, deadlines).

Pass rates: each verdict is re-keyed by product onto an internal topic; one agent keeps the table
`pass-rates` (product -> {outcome: tasks whose latest verdict has it}) and, on the same partitions,
`recent-outcomes` (task_id -> the latest version counted), so that a verdict delivered again is not
counted twice. A task is remembered for `stream_outcome_window_hours` after it was counted (a
verdict is not in flight longer: the outbox gives up on a message after as long); a later version
of a task forgotten takes its previous outcome from PostgreSQL. After each recovery the products
whose counts differ from what the stored verdicts say (latest version per task) get a seed, and the
agent sets their counts and recent tasks from PostgreSQL; until then their counts are not published.
"""

from __future__ import annotations

import functools
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import structlog
from mode import Service

from adapters.store import Heartbeat, Store
from adapters.stream_state import StreamRecord
from spotcheck.events import DeadLetter, Verdict, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.topics import DEAD_LETTERS, STREAM_PROCESSOR, VERDICTS, owner_of
from streams import cases, deadlines
from streams.rebuild import Rebuild, partition_count, partition_of, patiently, started

log = structlog.get_logger(__name__)

COMPONENT = STREAM_PROCESSOR


def attach(app: faust.App, settings: Settings) -> None:
    """Register the monitors on `app`."""
    if settings.database_url is None:
        raise ValueError("the stream processor needs SPOTCHECK_DATABASE_URL")
    store = Store(settings.database_url.get_secret_value(), max_size=4)
    beat = Heartbeat(store, COMPONENT, f"{socket.gethostname()}:{app.conf.id}")

    @app.service
    class StoreService(Service):  # noqa: F841 - registered by the decorator
        async def on_start(self) -> None:
            await started(store)

        async def on_stop(self) -> None:
            await store.stop()

    verdicts = app.topic(VERDICTS.full_name(settings), key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(DEAD_LETTERS.full_name(settings), key_serializer="raw", value_serializer="raw")
    outcomes_name = f"{settings.topic_namespace}-streams-outcomes"
    outcomes = app.topic(outcomes_name, internal=True, key_serializer="raw", value_serializer="json")
    recent = app.Table("recent-outcomes")  # task_id -> {"partition", "version", "outcome", "at": counted}
    pass_rates = app.Table("pass-rates", default=dict)  # product -> {outcome: count}
    record = StreamRecord(store)
    window = timedelta(hours=settings.stream_outcome_window_hours)
    seeding: set[str] = set()  # products whose seed is on its way: their counts are not published
    swept: list[bool] = [False]  # set once the latest recovery's sweep ran
    pruned: dict[int, float] = {}  # partition -> when its old recent outcomes were last dropped

    async def dead_letter(event: faust.EventT, reason: str) -> None:
        """A dead letter of an input of a topic this processor owns (the catalog says which). A record
        of a topic it only reads is that topic's owner's to dead-letter: skipped here, logged."""
        message = event.message
        if owner_of(settings, message.topic) != COMPONENT:
            log.debug("record skipped: its topic's owner dead-letters it", topic=message.topic, reason=reason)
            return
        letter = DeadLetter.of(
            message.topic,
            event.key,
            event.value,
            reason,
            datetime.now(UTC),
            origin=f"{message.partition}@{message.offset}",
        )
        await dead_letters.send(key=event.key, value=letter.to_json())

    deadlines.attach(app, settings, store)
    cases.attach(app, settings, store, dead_letter)

    async def track(verdict: Verdict) -> None:
        change = {"task_id": verdict.task_id, "version": verdict.version, "outcome": verdict.outcome.value}
        partitions = partition_count(app, outcomes_name, settings)
        await outcomes.send(
            key=verdict.product.encode(), value=change, partition=partition_of(verdict.product, partitions)
        )

    @app.agent(verdicts)
    async def track_outcomes(stream: faust.StreamT[bytes]) -> None:
        """Re-key each verdict's outcome by product."""
        async for event in stream.events():
            try:
                verdict = Verdict.from_json(event.value)
            except ValueError as exc:  # the verdicts' owner dead-letters it
                log.debug("verdict skipped: not readable", reason=describe_validation_error(exc))
                continue
            try:
                await track(verdict)
            except Exception:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("verdict not counted in the pass rates", task_id=verdict.task_id)

    def remember(task_id: str, version: int, outcome: str, partition: int) -> None:
        known = recent.get(task_id)
        if known is None or known["version"] < version:
            at = time.time()
            recent[task_id] = {"partition": partition, "version": version, "outcome": outcome, "at": at}

    async def count(product: str, change: dict[str, Any], partition: int) -> None:
        """A verdict's outcome replaces its task's previous one in the product's counts (once)."""
        task_id, version = change["task_id"], int(change["version"])
        known = recent.get(task_id)
        if known is not None and known["version"] >= version:
            return  # a re-delivery or an older version
        previous = known["outcome"] if known is not None else None
        if known is None and version > 1:
            previous = await patiently(
                "pass-rate monitor", functools.partial(record.previous_outcome, task_id, version)
            )
        counts = dict(pass_rates[product])
        if previous is not None:
            counts[previous] = counts.get(previous, 0) - 1
        counts[change["outcome"]] = counts.get(change["outcome"], 0) + 1
        pass_rates[product] = counts
        remember(task_id, version, change["outcome"], partition)

    async def reseed(product: str, partition: int) -> None:
        """The product's counts as the stored verdicts say, and its tasks decided within the window."""
        latest = await patiently("pass-rate monitor", functools.partial(record.product_outcomes, product))
        counts: dict[str, int] = {}
        since = (datetime.now(UTC) - window).timestamp()
        for task_id, version, outcome, decided_at in latest:
            counts[outcome] = counts.get(outcome, 0) + 1
            if decided_at.timestamp() >= since:  # it may still be on its way
                remember(task_id, version, outcome, partition)
        pass_rates[product] = counts
        seeding.discard(product)

    def prune(partition: int) -> None:
        """Forget, at most every ten minutes, the tasks of `partition` counted longer than the window ago."""
        if time.monotonic() - pruned.get(partition, -600.0) < 600.0:
            return
        pruned[partition] = time.monotonic()
        since = time.time() - window.total_seconds()
        for task_id, known in list(recent.items()):
            if known.get("partition") == partition and known["at"] < since:
                del recent[task_id]

    @app.agent(outcomes)
    async def count_outcomes(stream: faust.StreamT[dict[str, Any]]) -> None:
        async for event in stream.events():
            product = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            partition = event.message.partition
            try:
                if event.value.get("seed"):
                    await reseed(product, partition)
                else:
                    await count(product, event.value, partition)
                prune(partition)
            except Exception:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("pass rates not updated", product=product)

    async def sweep(active: set[int], partitions: int) -> dict[str, int]:
        """A seed for each product of `active` partitions whose counts are not what the verdicts say."""
        if not active:
            swept[0] = True
            return {"keys": len(pass_rates), "seeds": 0}
        stored = await record.pass_counts()
        sent = 0
        for product, counts in stored.items():
            partition = partition_of(product, partitions)
            if partition not in active:
                continue
            held = {k: v for k, v in (pass_rates[product] if product in pass_rates else {}).items() if v}
            if held == counts:
                continue
            seeding.add(product)
            await outcomes.send(key=product.encode(), value={"seed": True}, partition=partition)
            sent += 1
        swept[0] = True
        return {"keys": len(pass_rates), "recent": len(recent), "seeds": sent}

    def unswept() -> None:
        swept[0] = False
        seeding.clear()

    Rebuild(app, settings, store, pass_rates, outcomes_name, sweep, reset=unswept)

    @app.timer(2.0)
    async def publish_pass_rates() -> None:
        """Write this worker's share of the pass rates and its heartbeat."""
        await beat.maybe()
        if not swept[0]:
            return  # not rebuilt yet: a half-empty table must not overwrite the stored rates
        try:
            await store.save_pass_rates({str(k): dict(v) for k, v in pass_rates.items() if k not in seeding})
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning("pass rates not saved", error=str(exc))
