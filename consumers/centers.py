"""Center push: matching verdicts and raw results are queued per center in PostgreSQL (the
outbox), then POSTed, signed, by one task per center, retried with backoff, dead-lettered when
the retry budget (a time) is spent. Consuming never waits for a center, and no center waits for
another. (Over 400 lines: the consumer that queues and the dispatcher that sends are one worker,
read together.)"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from adapters import outbox
from adapters.centers import CenterStore, Claimed, HeldResult, NewDelivery, Released
from adapters.metrics import DEAD_LETTERS
from adapters.outbox import Outbox
from adapters.store import Store
from consumers.base import Batch, BatchConsumer
from spotcheck.centers import (
    DeliveryAttempt,
    EventKind,
    RetryPolicy,
    Subscription,
    delivery_id,
    envelope,
    request_headers,
    route_result,
    span,
    verdict_waits,
)
from spotcheck.events import DeadLetter, LabResult, Verdict, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from spotcheck.topics import DELIVERIES, LAB_RESULTS, VERDICTS

log = structlog.get_logger(__name__)

GROUP = "center-push"
CLAIM_BATCH = 16  # deliveries of one center sent at once (never two of the same task)
SUBSCRIPTIONS_TTL = 2.0  # seconds a read of the subscriptions is trusted
HELD_SOURCE = "push"  # dead letters of results whose task never came

PUSH_QUEUED = Counter(
    "spotcheck_push_queued_total", "Events matched to centers (re-consumed ones included)", ["center"]
)
PUSH_ATTEMPTS = Counter(
    "spotcheck_push_attempts_total", "Pushes to centers, by center and outcome", ["center", "outcome"]
)
PUSH_SECONDS = Histogram(
    "spotcheck_push_seconds",
    "Time from sending a push to its answer (or the timeout)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """Sends due deliveries: one task per center, all sharing one HTTP session.

    A delivery is claimed for a lease (so two workers never send it at once), POSTed, and its
    attempt recorded in the store and on the deliveries topic in one step."""

    def __init__(
        self,
        settings: Settings,
        centers: CenterStore,
        producer: AIOKafkaProducer,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.centers = centers
        self.producer = producer
        self.now = now
        self._session = session
        self._owns_session = session is None
        self._topics = {t.name: t.full_name(settings) for t in (DELIVERIES, DEAD_LETTERS_TOPIC)}
        self._lease = settings.push_timeout_seconds * 2 + 10
        self.retry = RetryPolicy(
            initial=settings.push_backoff_initial_seconds,
            maximum=settings.push_backoff_max_seconds,
            retry_for=settings.push_retry_for_seconds,
            max_attempts=settings.push_max_attempts,
        )
        self._timeout = aiohttp.ClientTimeout(total=settings.push_timeout_seconds)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "dispatcher not started"
        return self._session

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # a hung center must not starve the others
                timeout=self._timeout,
                headers={"User-Agent": "spotcheck-push/1"},
            )
        self._supervisor = asyncio.create_task(self._supervise(), name="push:supervisor")

    async def stop(self) -> None:
        """Let pushes in flight finish (up to the push timeout), then cancel what is left; a
        cancelled push is sent again once its lease runs out."""
        self._stopping.set()
        for wake in self._wakes.values():
            wake.set()
        tasks = [t for t in (self._supervisor, *self._tasks.values()) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.settings.push_timeout_seconds + 1)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._tasks.clear()
        self._supervisor = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self, center_id: str) -> None:
        """Have a look at a center's due deliveries now (starting its task if needed)."""
        if self._stopping.is_set():
            return
        wake = self._wakes.setdefault(center_id, asyncio.Event())
        task = self._tasks.get(center_id)
        if task is None or task.done():
            self._tasks[center_id] = asyncio.create_task(
                self._center(center_id, wake), name=f"push:{center_id}"
            )
        wake.set()

    async def _supervise(self) -> None:
        """Every poll interval, wake the centers whose deliveries are due (retries, leases that
        ran out, redeliveries and deliveries queued by other workers)."""
        while not self._stopping.is_set():
            try:
                for center_id in await self.centers.due_centers():
                    self.wake(center_id)
            except Exception as exc:  # noqa: BLE001 - the database may come back; keep polling
                log.warning("push: cannot read due deliveries", error=str(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.push_poll_seconds)
            except TimeoutError:
                pass

    async def _center(self, center_id: str, wake: asyncio.Event) -> None:
        while not self._stopping.is_set():
            wake.clear()
            try:
                claim = uuid.uuid4().hex
                claimed = await self.centers.claim(
                    center_id, claim, CLAIM_BATCH, self._lease, self.settings.result_grace_seconds
                )
                if claimed:
                    sent = await asyncio.gather(
                        *(self._send(d, claim) for d in claimed), return_exceptions=True
                    )
                    for failure in (s for s in sent if isinstance(s, BaseException)):
                        log.warning("push: attempt not recorded", center_id=center_id, error=repr(failure))
                    continue
            except Exception as exc:  # noqa: BLE001 - a center's task lives as long as the worker
                log.warning("push: center loop error", center_id=center_id, error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            await wake.wait()

    async def _send(self, d: Claimed, claim: str) -> None:
        body = envelope(d.event, d.delivery_id, d.payload)
        headers = request_headers(d.secret, int(time.time()), body, d.delivery_id, d.event)
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            async with self.session.post(
                d.url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    snippet = (await resp.content.read(200)).decode(errors="replace").strip()
                    error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        except TimeoutError:
            error = f"no answer within {self.settings.push_timeout_seconds:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        seconds = time.perf_counter() - started
        PUSH_SECONDS.observe(seconds)
        await self._record(d, claim, status, error, seconds)

    async def _record(
        self, d: Claimed, claim: str, status: int | None, error: str | None, seconds: float
    ) -> None:
        number = d.attempts + 1
        at = self.now()
        started = d.round_started_at or at
        next_at: datetime | None = None
        if error is None:
            outcome = "delivered"
        else:
            next_at = self.retry.next_attempt(started, at, number)
            outcome = "retrying" if next_at is not None else "failed"
        attempt = DeliveryAttempt(
            attempt_id=uuid.uuid4().hex,
            delivery_id=d.delivery_id,
            center_id=d.center_id,
            event=d.event,
            event_id=d.event_id,
            task_id=d.task_id,
            round=d.round,
            attempt=number,
            outcome=outcome,
            status=status,
            error=error,
            duration_ms=round(seconds * 1000, 3),
            url=d.url,
            attempted_at=at,
            next_attempt_at=next_at,
        )
        letter = None
        if outcome == "failed":
            letter = DeadLetter.of(
                f"push:{d.center_id}",
                d.delivery_id,
                envelope(d.event, d.delivery_id, d.payload),
                f"gave up pushing {d.event} {d.event_id} to {d.url} after {number} attempts"
                f" in {span((at - started).total_seconds())}: {error}",
                at,
                origin=f"round {d.round}",
            )

        def messages(held: bool) -> list[outbox.Message]:
            out: list[outbox.Message] = [(self._topics["deliveries"], d.center_id, attempt.to_json())]
            if letter is not None and held:
                out.append((self._topics["dead-letters"], letter.key, letter.to_json()))
            return out

        held = await self.centers.record_attempt(attempt, claim, messages)
        PUSH_ATTEMPTS.labels(d.center_id, outcome).inc()
        if letter is not None and held:
            DEAD_LETTERS.labels(letter.source).inc()
            log.warning("push: gave up", center_id=d.center_id, delivery_id=d.delivery_id, error=error)
        elif error is not None:
            log.info("push: attempt failed", center_id=d.center_id, attempt=number, error=error)


class CenterPush(BatchConsumer):
    """Consumes verdicts and lab results in group `center-push` and queues one delivery per
    matching (center, event); its Dispatcher sends them. Re-consuming an event queues nothing new.

    A raw result whose task is not stored yet is held in PostgreSQL for the centers whose filters
    need its spec, decided once the task is stored, and dead-lettered after the grace period. A
    verdict queued for a center that takes results waits for the results it lists (the claim
    sees to it), even those consumed after it."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        producer: AIOKafkaProducer,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], datetime] = _now,
        refresh_seconds: float = SUBSCRIPTIONS_TTL,
    ) -> None:
        self.names = {t.name: t.full_name(settings) for t in (VERDICTS, LAB_RESULTS, DEAD_LETTERS_TOPIC)}
        super().__init__(settings, store, GROUP, [self.names["verdicts"], self.names["lab-results"]])
        self.producer = producer
        self.now = now
        self.centers = CenterStore(store)
        self.dispatcher = Dispatcher(settings, self.centers, producer, session, now)
        self._refresh = refresh_seconds
        self._subscriptions: list[Subscription] = []
        self._read_at = -math.inf
        self._swept_at = -math.inf

    async def start(self) -> None:
        await self.dispatcher.start()
        try:
            await super().start()
        except BaseException:
            await self.dispatcher.stop()
            raise

    async def stop(self) -> None:
        await super().stop()
        await self.dispatcher.stop()

    async def subscriptions(self) -> list[Subscription]:
        """The enabled centers, read again when the last read is older than the refresh time."""
        if time.monotonic() - self._read_at >= self._refresh:
            self._subscriptions = await self.centers.subscriptions()
            self._read_at = time.monotonic()
        return self._subscriptions

    def knows(self, center_id: str) -> bool:
        return any(s.center_id == center_id for s in self._subscriptions)

    async def handle(self, batch: Batch) -> None:
        subscriptions = await self.subscriptions()
        want_results = [s for s in subscriptions if s.include_results]
        letters: list[DeadLetter] = []
        events: list[tuple[EventKind, Verdict | LabResult, str]] = []
        for record in batch:
            if record.topic == self.names["verdicts"]:
                try:
                    if record.value is None:
                        raise ValueError("empty message")
                    events.append(
                        ("verdict", Verdict.model_validate_json(record.value), record.value.decode())
                    )
                except (ValidationError, ValueError) as exc:
                    reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
                    letters.append(
                        DeadLetter.of(
                            record.topic,
                            record.key,
                            record.value,
                            f"invalid {Verdict.SCHEMA}: {reason}",
                            self.now(),
                            origin=f"{record.partition}@{record.offset}",
                        )
                    )
            elif want_results and record.value is not None:
                try:
                    result = LabResult.model_validate_json(record.value)
                except (ValidationError, ValueError):
                    continue  # the verdict processor, which owns lab results, dead-letters it
                events.append(("lab-result", result, record.value.decode()))

        # A result's spec is its task's: a result whose task is not stored yet (or whose task has
        # earlier results still held) is held for the centers whose filters need the spec.
        task_ids = {e.task_id for _, e, _ in events}
        specs, held = await self.centers.task_context(task_ids) if want_results and task_ids else ({}, set())
        holding: list[HeldResult] = []
        queued: list[NewDelivery] = []
        for kind, event, payload in events:
            if isinstance(event, Verdict):
                targets = [
                    s for s in subscriptions if s.filters.matches(spec=event.spec, outcome=event.outcome)
                ]
                event_id = event.verdict_id
            else:
                decidable = event.task_id in specs and event.task_id not in held
                route = route_result(want_results, specs.get(event.task_id), decidable)
                if route.undecided:
                    holding.append(HeldResult(event.result_id, event.task_id, payload, self.now()))
                    held.add(event.task_id)
                targets = list(route.now)
                event_id = event.result_id
            queued.extend(
                NewDelivery(
                    delivery_id(s.center_id, kind, event_id),
                    s.center_id,
                    event.task_id,
                    kind,
                    event_id,
                    payload,
                    verdict_waits(s, event.result_ids) if isinstance(event, Verdict) else (),
                )
                for s in targets
            )

        if letters:
            await Outbox(self.store).send([(self.names["dead-letters"], d.key, d.to_json()) for d in letters])
            for letter in letters:
                DEAD_LETTERS.labels(letter.source).inc()
        await self.centers.enqueue(queued, holding)
        self._queued(queued)
        verdict_tasks = {e.task_id for kind, e, _ in events if kind == "verdict"}
        known = {t for t in held if t in specs or t in verdict_tasks}
        if known:  # their held results are decided now, before the next batch
            self._queued(await self.centers.release_held(self._route_held, known))

    async def idle(self) -> None:
        """Reads the subscriptions when due, and every poll interval decides the held results
        whose task is stored now and dead-letters those past the grace period."""
        await self.subscriptions()
        if time.monotonic() - self._swept_at < self.settings.push_poll_seconds:
            return
        self._swept_at = time.monotonic()
        self._queued(await self.centers.release_held(self._route_held))
        cutoff = self.now() - timedelta(seconds=self.settings.result_grace_seconds)
        await self.centers.expire_held(cutoff, self._reject_held)

    def _route_held(self, released: Sequence[Released]) -> list[NewDelivery]:
        """The deliveries of held results whose task is known now (centers that took one
        already, before its task was known, are not sent it twice: same delivery id)."""
        return [
            NewDelivery(
                delivery_id(s.center_id, "lab-result", r.result.result_id),
                s.center_id,
                r.result.task_id,
                "lab-result",
                r.result.result_id,
                r.result.payload,
            )
            for r in released
            for s in route_result(self._subscriptions, r.spec, decidable=True).now
        ]

    def _queued(self, queued: Sequence[NewDelivery]) -> None:
        for center_id in {d.center_id for d in queued}:
            PUSH_QUEUED.labels(center_id).inc(sum(1 for d in queued if d.center_id == center_id))
            self.dispatcher.wake(center_id)

    def _reject_held(self, expired: list[HeldResult]) -> list[outbox.Message]:
        """Results whose task never came: no spec or product filter could decide them."""
        waiting = [s.center_id for s in self._subscriptions if s.include_results and s.filters.needs_spec]
        to = f" to {', '.join(waiting)}" if waiting else ""
        grace = self.settings.result_grace_seconds
        letters = [
            DeadLetter.of(
                HELD_SOURCE,
                h.task_id,
                h.payload,
                f"result {h.result_id} not pushed{to}: no task {h.task_id} was stored within {grace:g}s,"
                " so the centers' spec and product filters could not decide it",
                self.now(),
                origin="held",
            )
            for h in expired
        ]
        DEAD_LETTERS.labels(HELD_SOURCE).inc(len(letters))
        log.warning(
            "push: results whose task never came are dead letters",
            count=len(letters),
            first=letters[0].reason,
        )
        return [(self.names["dead-letters"], d.key, d.to_json()) for d in letters]
