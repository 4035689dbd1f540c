"""The lab simulator for demos and benchmarks: tasks over a demo registry and plausible results."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from aiokafka import AIOKafkaProducer

from adapters import kafka, outbox
from adapters.labs import LabStore
from adapters.registry import load_demo_registry
from adapters.store import Store
from spotcheck.events import LabResult, SamplingTask
from spotcheck.labs import Lab
from spotcheck.registry_demo import generate
from spotcheck.settings import Settings
from spotcheck.specs import load_catalog
from spotcheck.tasks import TaskRequest, build_task
from spotcheck.topics import LAB_RESULTS, TASKS

log = structlog.get_logger(__name__)


def demo_registry() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("producers").joinpath("data/demo.json").read_text(encoding="utf-8")
    )
    return data


def demo_labs() -> dict[str, Lab]:
    return {lab["lab_id"]: Lab.model_validate(lab) for lab in demo_registry()["labs"]}


async def register_demo_labs(store: Store) -> None:
    """The demo labs in the registry (idempotent), so that their tasks and results are accepted."""
    labs = LabStore(store)
    for lab in demo_labs().values():
        await labs.save(lab)


def _places(*bounds: Decimal | None) -> int:
    return max((-b.as_tuple().exponent for b in bounds if b is not None), default=0)  # type: ignore[operator]


def plausible_value(low: Decimal | None, high: Decimal | None, fail: bool, rng: random.Random) -> Decimal:
    """A value well inside [low, high], or (when `fail`) beyond a bound by more than one unit of the
    limit's last digit (so that it fails by the rounded-value method too); one digit finer."""
    places = _places(low, high)
    quantum = Decimal(1).scaleb(-(places + 1))
    step = float(Decimal(1).scaleb(-places))  # one unit of the limit's last digit

    def pick(a: float, b: float) -> Decimal:
        return Decimal(str(rng.uniform(a, b))).quantize(quantum)

    if fail:
        bounds = [(b, +1) for b in (high,) if b is not None] + [(b, -1) for b in (low,) if b is not None]
        bound, sign = rng.choice(bounds) if bounds else (Decimal(100), +1)
        margin = max(abs(float(bound)) * 0.1, 2 * step)
        return bound + sign * pick(1.5 * step, 1.5 * step + margin)
    if low is not None and high is not None:
        span = float(high - low)
        return low + pick(0.1 * span, 0.9 * span)
    if high is not None:
        h = float(high)
        return pick(0.2 * h, 0.9 * h) if h > 0 else pick(h - 5 * max(step, 1.0), h - 2 * step)
    if low is not None:
        lo = float(low)
        margin = max(abs(lo) * 0.1, 1.0)
        return pick(lo + 0.1 * margin + 2 * step, lo + 2 * margin + 2 * step)
    return pick(0, 100)


def simulated_results(
    task: SamplingTask, day: date, fail: bool, rng: random.Random, now: datetime
) -> list[LabResult]:
    """One result per planned item; when `fail`, one item (chosen at random) is out of limits."""
    spec = load_catalog().get(task.spec)
    failing = rng.choice(task.items) if fail else None
    results = []
    for code in task.items:
        low, high = spec.limit_for(code, day)
        value = plausible_value(low, high, code == failing, rng)
        results.append(
            LabResult(
                result_id=f"{task.lab_id}-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}",
                lab_id=task.lab_id,
                task_id=task.task_id,
                sample_id=task.sample_id,
                item=code,
                value=value,
                unit=spec.item(code).unit,
                measured_at=now,
            )
        )
    return results


def malformed(result: LabResult, rng: random.Random) -> bytes:
    """What a misconfigured LIMS sends now and then: a value that is no number, a missing field."""
    body = result.to_dict()
    body["result_id"] = f"{result.result_id}-x"
    if rng.random() < 0.5:
        body["value"] = rng.choice(["n/a", "<0.5", "8,3", ""])
    else:
        del body["measured_at"]
    return json.dumps(body).encode()


def correction(result: LabResult, rng: random.Random) -> LabResult:
    """A lab's correction of one of its results: a new id, `amends` and a reason."""
    low = result.value - abs(result.value) / 50
    value = (low + abs(result.value) / 25 * Decimal(str(rng.random()))).quantize(result.value)
    return result.model_copy(
        update={
            "result_id": f"{result.result_id}-c",
            "value": value,
            "amends": result.result_id,
            "reason": rng.choice(["transcription error", "re-measured after calibration check"]),
        }
    )


@dataclass
class Simulator:
    """Creates demo tasks at `settings.demo_rate` per second and streams their lab results."""

    settings: Settings
    store: Store
    producer: AIOKafkaProducer
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._task: asyncio.Task[None] | None = None
        self.created = 0

    async def start(self) -> None:
        """The demo labs and the demo directory of the seed city (both idempotent), then the stream."""
        await register_demo_labs(self.store)
        await load_demo_registry(self.store, self.settings)
        self._labs = demo_labs()
        self._makers: dict[str, list[str]] = {}  # catalog product -> enterprises of the directory
        for enterprise in generate().enterprises:
            for product in enterprise.products:
                self._makers.setdefault(product, []).append(enterprise.enterprise_id)
        self._task = asyncio.create_task(self._run(), name="lab-simulator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        registry = demo_registry()
        zone = ZoneInfo(self.settings.timezone)
        tasks_topic = TASKS.full_name(self.settings)
        results_topic = LAB_RESULTS.full_name(self.settings)
        while True:
            try:
                await self._one(registry, zone, tasks_topic, results_topic)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a demo keeps going
                log.warning("simulator step failed", error=str(exc))
                await asyncio.sleep(2)
            await asyncio.sleep(self._rng.expovariate(self.settings.demo_rate))

    async def _one(
        self, registry: dict[str, Any], zone: ZoneInfo, tasks_topic: str, results_topic: str
    ) -> None:
        rng = self._rng
        offers = registry["offers"]
        offer = rng.choices(offers, weights=[o["weight"] for o in offers])[0]
        makers = self._makers.get(load_catalog().get(offer["spec"]).product)
        enterprise_id = rng.choice(makers) if makers else rng.choice(registry["enterprises"])["enterprise_id"]
        now = datetime.now(UTC)
        request = TaskRequest(
            enterprise_id=enterprise_id,
            product=offer["product"],
            spec=offer["spec"],
            lab_id=offer["lab_id"],
            sampled_at=now,
        )
        lab = self._labs[offer["lab_id"]]
        task = build_task(request, await self.store.next_task_number(), now, zone, lab)
        async with self.store.transaction() as conn:  # a task is created as the API creates one
            await self.store.save_tasks([task], conn)
            await outbox.add(conn, [(tasks_topic, task.task_id, task.to_json())])
        fail = rng.random() < self.settings.demo_fail_share
        results = simulated_results(task, now.astimezone(zone).date(), fail, rng, now)
        messages: list[tuple[str | None, bytes]] = [(r.task_id, r.to_json()) for r in results]
        if rng.random() < self.settings.demo_malformed_share:
            messages.append((task.task_id, malformed(results[0], rng)))
        if rng.random() < self.settings.demo_correction_share:
            messages.append((task.task_id, correction(results[-1], rng).to_json()))
        await kafka.publish(self.producer, results_topic, messages)  # the lab's own Kafka client
        self.created += 1
