"""The lab-result gateway: every result sent over HTTP or from a file passes here; an accepted one is
stored as received, with its message to the lab-results topic in the outbox, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from adapters import outbox
from adapters.labs import LabStore
from adapters.metrics import DEAD_LETTERS
from adapters.store import Store
from spotcheck.errors import NotFound
from spotcheck.events import DeadLetter, LabResult, describe_validation_error
from spotcheck.labs import Lab, result_refusal
from spotcheck.lims import import_refusal
from spotcheck.settings import Settings
from spotcheck.specs import load_catalog
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from spotcheck.topics import LAB_RESULTS

Status = Literal["accepted", "duplicate", "invalid", "forbidden"]


@dataclass(frozen=True)
class Outcome:
    """What became of one submitted result (`where` is its position or line in the input)."""

    where: int
    result_id: str | None
    status: Status
    reason: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class LabGateway:
    """Checks results against the lab's identity, its tasks and its accreditation; stores the good
    ones as received and queues them for the lab-results topic, and the refused ones for the
    dead-letter topic, in one transaction: an `accepted` answer means stored."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        labs: LabStore,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.labs = labs
        self.now = now
        self.results_topic = LAB_RESULTS.full_name(settings)
        self.letters_topic = DEAD_LETTERS_TOPIC.full_name(settings)

    async def submit(self, lab_id: str, items: Sequence[tuple[int, Any]], source: str) -> list[Outcome]:
        """Check and route each (position, raw result); returns one outcome per item, in order."""
        try:
            lab: Lab | None = await self.labs.get(lab_id)
        except NotFound:
            lab = None
        parsed: list[tuple[int, Any, LabResult | None, Outcome | None]] = []
        for where, raw in items:
            try:
                result = LabResult.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                field = ".".join(str(p) for p in first.get("loc", ())) or None
                reason = describe_validation_error(exc)
                refused = import_refusal(raw)  # a row refused by a file import: its own fault
                if refused is not None:
                    reason, field = refused
                parsed.append(
                    (
                        where,
                        raw,
                        None,
                        Outcome(where, _id_of(raw), "invalid", reason, field),
                    )
                )
                continue
            if result.lab_id != lab_id:
                parsed.append(
                    (
                        where,
                        raw,
                        result,
                        Outcome(
                            where,
                            result.result_id,
                            "forbidden",
                            f"this key belongs to lab {lab_id}; the result names lab {result.lab_id}",
                            "lab_id",
                        ),
                    )
                )
                continue
            parsed.append((where, raw, result, None))

        candidates = [r for _, _, r, o in parsed if r is not None and o is None]
        tasks = await self.labs.tasks(sorted({r.task_id for r in candidates}))
        stored = await self.labs.stored_results(sorted({r.result_id for r in candidates}))
        catalog = load_catalog()
        outcomes: list[Outcome] = []
        fresh: list[LabResult] = []
        letters: list[outbox.Message] = []
        seen: dict[str, LabResult] = {}
        for where, raw, maybe, outcome in parsed:
            if outcome is None and maybe is not None:
                outcome = self._check(where, maybe, lab, tasks, stored, seen, catalog)
                if outcome.status == "accepted":
                    seen[maybe.result_id] = maybe
                    fresh.append(maybe)
            assert outcome is not None
            if outcome.status in ("invalid", "forbidden"):
                letter = DeadLetter.of(
                    source,
                    maybe.task_id if maybe else None,
                    _text(raw),
                    outcome.reason or outcome.status,
                    self.now(),
                    origin=f"item {where}",
                )
                letters.append((self.letters_topic, letter.key, letter.to_json()))
                DEAD_LETTERS.labels(source).inc()
            outcomes.append(outcome)
        async with self.store.transaction() as conn:
            taken = await self._receive(conn, fresh)
            await outbox.add(
                conn,
                [(self.results_topic, r.task_id, r.to_json()) for r in fresh if r.result_id in taken]
                + letters,
            )
        raced = {r.result_id for r in fresh} - taken  # the same result sent twice at once: one wins
        return [
            Outcome(o.where, o.result_id, "duplicate", "already received; nothing changed")
            if o.status == "accepted" and o.result_id in raced
            else o
            for o in outcomes
        ]

    @staticmethod
    async def _receive(conn: Any, results: Sequence[LabResult]) -> set[str]:
        """Store results as received; the ids stored now (one stored before is left as it was)."""
        if not results:
            return set()
        rows = await conn.fetch(
            "INSERT INTO lab_results (result_id, task_id, lab_id, item, value, unit, amends, state, payload)"
            " SELECT r.result_id, r.task_id, r.lab_id, r.item, r.value, r.unit, r.amends, 'received',"
            " r.payload::json FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::text[], $8::text[]) WITH ORDINALITY"
            " AS r(result_id, task_id, lab_id, item, value, unit, amends, payload, n)"
            " ORDER BY r.n ON CONFLICT (result_id) DO NOTHING RETURNING result_id",
            [r.result_id for r in results],
            [r.task_id for r in results],
            [r.lab_id for r in results],
            [r.item for r in results],
            [str(r.value) for r in results],
            [r.unit for r in results],
            [r.amends for r in results],
            [r.to_json().decode() for r in results],
        )
        return {row["result_id"] for row in rows}

    def _check(
        self,
        where: int,
        result: LabResult,
        lab: Lab | None,
        tasks: dict[str, Any],
        stored: dict[str, str],
        seen: dict[str, LabResult],
        catalog: Any,
    ) -> Outcome:
        rid = result.result_id
        task = tasks.get(result.task_id)
        if task is not None and task.lab_id != result.lab_id:  # ownership first: nothing of the task leaks
            return Outcome(
                where,
                rid,
                "forbidden",
                f"task {result.task_id} is not assigned to lab {result.lab_id}",
                "task_id",
            )
        earlier = seen.get(rid)
        if earlier is not None or rid in stored:
            same = (
                earlier == result
                if earlier is not None
                else (LabResult.model_validate_json(stored[rid]) == result)
            )
            if same:
                return Outcome(where, rid, "duplicate", "already received; nothing changed")
            return Outcome(
                where,
                rid,
                "invalid",
                f"result_id {rid} was already received with other "
                "content; send a correction with a new result_id and amends",
                "result_id",
            )
        if task is None:
            return Outcome(where, rid, "invalid", f"unknown task {result.task_id}", "task_id")
        if result.sample_id != task.sample_id:
            return Outcome(
                where,
                rid,
                "invalid",
                f"sample {result.sample_id} is not the sample of task {task.task_id} ({task.sample_id})",
                "sample_id",
            )
        if result.item not in task.items:
            return Outcome(
                where,
                rid,
                "invalid",
                f"item {result.item!r} is not planned for task "
                f"{task.task_id} (planned: {', '.join(task.items)})",
                "item",
            )
        refusal = result_refusal(lab, task, catalog.get(task.spec), result)
        if refusal is not None:
            status: Status = "forbidden" if refusal.forbidden else "invalid"
            return Outcome(where, rid, status, refusal.reason, refusal.field)
        return Outcome(where, rid, "accepted")


def _id_of(raw: Any) -> str | None:
    value = raw.get("result_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _text(raw: Any) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
