"""The stream processor's agents, tables and timers (monitors: live pass rates per product, deadlines)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

import faust
import structlog
from mode import Service

from adapters.store import Heartbeat, Store
from spotcheck.events import DeadLetter, Verdict, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.topics import DEAD_LETTERS, VERDICTS
from streams import cases, deadlines
from streams.rebuild import started

log = structlog.get_logger(__name__)

COMPONENT = "streams"


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
    deltas = app.topic(
        f"{settings.topic_namespace}-streams-outcome-deltas",
        internal=True,
        key_serializer="raw",
        value_serializer="json",
    )
    last_outcome = app.Table("last-outcome")  # task_id -> {product, outcome, version}
    pass_rates = app.Table("pass-rates", default=dict)  # product -> {outcome: count}

    async def dead_letter(event: faust.EventT, reason: str) -> None:
        message = event.message
        letter = DeadLetter.of(
            message.topic,
            event.key,
            event.value,
            reason,
            datetime.now(UTC),
            origin=f"{message.partition}@{message.offset}",
        )
        await dead_letters.send(key=event.key, value=letter.to_json())

    deadlines.attach(app, settings, store, dead_letter)
    cases.attach(app, settings, store, dead_letter)

    async def track(verdict: Verdict) -> None:
        before: dict[str, Any] | None = last_outcome.get(verdict.task_id)
        if before is not None and before["version"] >= verdict.version:
            return  # a re-delivery or an older version
        last_outcome[verdict.task_id] = {
            "product": verdict.product,
            "outcome": verdict.outcome.value,
            "version": verdict.version,
        }
        if before is not None:
            await deltas.send(
                key=before["product"].encode(), value={"outcome": before["outcome"], "delta": -1}
            )
        await deltas.send(key=verdict.product.encode(), value={"outcome": verdict.outcome.value, "delta": 1})

    @app.agent(verdicts)
    async def track_outcomes(stream: faust.StreamT[bytes]) -> None:
        """Keep each sample's current outcome; emit the change of count keyed by product."""
        async for event in stream.events():
            try:
                verdict = Verdict.from_json(event.value)
            except ValueError as exc:
                await dead_letter(event, f"invalid verdict: {describe_validation_error(exc)}")
                continue
            try:
                await track(verdict)
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("verdict not tracked", task_id=verdict.task_id)
                await dead_letter(event, f"monitor failed on this verdict: {exc!r}")

    @app.agent(deltas)
    async def count_outcomes(stream: faust.StreamT[dict[str, Any]]) -> None:
        async for key, change in stream.items():
            product = key.decode() if isinstance(key, bytes) else str(key)
            counts = dict(pass_rates[product])
            counts[change["outcome"]] = counts.get(change["outcome"], 0) + int(change["delta"])
            pass_rates[product] = counts

    @app.timer(2.0)
    async def publish_pass_rates() -> None:
        """Write this worker's share of the pass rates and its heartbeat."""
        await beat.maybe()
        try:
            await store.save_pass_rates({str(k): dict(v) for k, v in pass_rates.items()})
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning("pass rates not saved", error=str(exc))
