"""The sampling task a case's order becomes: new random inspectors (none of the failed sample's, none
excluded from the enterprise) and an accredited lab (another one for a re-test), chosen reproducibly
from the task id, so building the same order twice gives the same task."""

from __future__ import annotations

import hashlib
from datetime import datetime

from spotcheck.case_model import TaskOrder
from spotcheck.draw_stats import SeedStream
from spotcheck.draws import Snapshot
from spotcheck.errors import InvalidInput
from spotcheck.events import SamplingTask, TaskKind

INSPECTORS_PER_TASK = 2


def _stream(task_id: str, what: str) -> SeedStream:
    return SeedStream(hashlib.sha256(f"case-order/{task_id}".encode()).digest(), what)


def task_for_order(
    order: TaskOrder, snapshot: Snapshot, failed: SamplingTask | None, now: datetime
) -> SamplingTask:
    """The task for `order`; InvalidInput when no lab or not enough inspectors can be found."""
    not_lab = failed.lab_id if failed is not None and order.other_lab else None
    labs = [
        lab.lab_id
        for lab in snapshot.labs
        if lab.enabled
        and lab.lab_id != not_lab
        and all(lab.covers(order.spec, order.product, item) for item in order.items)
    ]
    if not labs:
        other = f" other than {not_lab}" if not_lab else ""
        raise InvalidInput(
            f"no enabled lab{other} is accredited for {order.spec} ({', '.join(order.items)})", field="lab_id"
        )
    lab_id = _stream(order.task_id, "lab").shuffled(sorted(labs))[0]
    inspectors: tuple[str, ...] = ()
    if order.kind is not TaskKind.RETEST:  # a re-test works on the retained sample: nobody samples
        used = set(failed.inspectors) if failed is not None else set()
        free = sorted(
            i.inspector_id
            for i in snapshot.inspectors
            if i.inspector_id not in used and order.enterprise_id not in i.excluded_enterprises
        )
        if len(free) < INSPECTORS_PER_TASK:
            raise InvalidInput(
                f"{len(free)} inspector(s) free of conflicts for {order.enterprise_id}, "
                f"{INSPECTORS_PER_TASK} needed",
                field="inspectors",
            )
        inspectors = tuple(sorted(_stream(order.task_id, "inspectors").shuffled(free)[:INSPECTORS_PER_TASK]))
    return SamplingTask(
        task_id=order.task_id,
        sample_id=order.sample_id,
        enterprise_id=order.enterprise_id,
        product=order.product,
        spec=order.spec,
        items=order.items,
        lab_id=lab_id,
        kind=order.kind,
        inspectors=inspectors,
        created_at=now,
        sampled_at=failed.sampled_at if failed is not None and order.kind is TaskKind.RETEST else None,
        sampling_due=order.sampling_due,
    )
