"""The state of one sample as its results arrive: acceptance rules, corrections and verdict versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from spotcheck.events import LabResult, SamplingTask, Verdict
from spotcheck.specs import load_catalog
from spotcheck.verdict import judge


class Rejected(Exception):
    """A result that can never belong to this sample; the message is the dead letter's reason."""


@dataclass
class SampleState:
    """What one verdict processor knows of a sample: its task, accepted results, verdict version."""

    task: SamplingTask
    by_id: dict[str, LabResult] = field(default_factory=dict)
    current: dict[str, LabResult] = field(default_factory=dict)  # item -> result in force
    amended: set[str] = field(default_factory=set)  # result ids replaced by a correction
    version: int = 0  # last verdict version reached
    dirty: bool = False  # accepted something since the last verdict

    @classmethod
    def restore(cls, task: SamplingTask, results: list[LabResult], version: int) -> SampleState:
        """Rebuild from stored, already accepted results (in arrival order)."""
        state = cls(task=task, version=version)
        for result in results:
            state._accept(result)
        state.dirty = False
        return state

    def apply(self, result: LabResult) -> bool:
        """Take one result: True if accepted, False if it is a harmless resend; Rejected otherwise."""
        task = self.task
        known = self.by_id.get(result.result_id)
        if known is not None:
            if known == result:
                return False
            raise Rejected(f"result_id {result.result_id} was already received with other content")
        if result.lab_id != task.lab_id:
            raise Rejected(f"task {task.task_id} is assigned to lab {task.lab_id}, not {result.lab_id}")
        if result.sample_id != task.sample_id:
            raise Rejected(
                f"sample {result.sample_id} is not the sample of task {task.task_id} ({task.sample_id})"
            )
        if result.item not in task.items:
            raise Rejected(
                f"item {result.item!r} is not planned for task {task.task_id} "
                f"(planned: {', '.join(task.items)})"
            )
        if result.amends is not None:
            target = self.by_id.get(result.amends)
            if target is None:
                raise Rejected(
                    f"correction amends {result.amends}, which is not a result of task {task.task_id}"
                )
            if target.item != result.item:
                raise Rejected(
                    f"correction for item {result.item!r} amends {result.amends}, "
                    f"a result for {target.item!r}"
                )
            if result.amends in self.amended:
                raise Rejected(f"{result.amends} was already amended; amend the result in force")
        elif result.item in self.current:
            held = self.current[result.item].result_id
            raise Rejected(
                f"item {result.item!r} already has result {held}; send a correction with amends and a reason"
            )
        self._accept(result)
        return True

    def _accept(self, result: LabResult) -> None:
        self.by_id[result.result_id] = result
        if result.amends is not None:
            self.amended.add(result.amends)
        self.current[result.item] = result
        self.dirty = True

    @property
    def complete(self) -> bool:
        return all(item in self.current for item in self.task.items)

    def next_verdict(self, zone: ZoneInfo, now: Callable[[], datetime]) -> Verdict | None:
        """The next verdict version if the sample is complete and changed since the last one."""
        if not (self.dirty and self.complete):
            return None
        task = self.task
        spec = load_catalog().get(task.spec)
        values: dict[str, Decimal] = {item: self.current[item].value for item in task.items}
        judged = judge(spec, values, sampling_day(task, zone), plan=task.items)
        items = tuple(
            j
            if j.unit or not self.current[j.item].unit
            else j.model_copy(update={"unit": self.current[j.item].unit})
            for j in judged.items
        )
        self.version += 1
        self.dirty = False
        used = tuple(self.current[item].result_id for item in task.items)
        return Verdict(
            verdict_id=verdict_id(task.task_id, self.version),
            task_id=task.task_id,
            sample_id=task.sample_id,
            version=self.version,
            supersedes=verdict_id(task.task_id, self.version - 1) if self.version > 1 else None,
            outcome=judged.outcome,
            spec=task.spec,
            enterprise_id=task.enterprise_id,
            product=task.product,
            lab_id=task.lab_id,
            items=items,
            result_ids=used,
            last_result_at=max(self.current[item].measured_at for item in task.items),
            decided_at=now(),
        )


def verdict_id(task_id: str, version: int) -> str:
    return f"{task_id}/v{version}"


def sampling_day(task: SamplingTask, zone: ZoneInfo) -> date:
    """The day a sample was taken, in the bureau's zone (the task's creation when not recorded)."""
    moment = task.sampled_at or task.created_at
    return moment.astimezone(zone).date()
